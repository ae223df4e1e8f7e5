/* basic_square, plus one, by calling the target's exported basic_add by name: the runtime binds
 * the call to the target whatever scope the target was loaded in (an "import"). */
int basic_add(int a, int b);

int basic_square_plus_one(int x)
{
    return basic_add(x * x, 1);
}
