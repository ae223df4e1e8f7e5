/* basic_add, wrapping the original: the original's result, times 100. */
int (*basic_add_original)(int, int); /* filled by the runtime: the original basic_add */

int basic_add_wrapped(int a, int b)
{
    return basic_add_original(a, b) * 100;
}
