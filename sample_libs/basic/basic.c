/* Plain functions, exported and static data, thread-local data, an alias, callbacks. */
#include "basic.h"

int basic_counter;
__thread int basic_calls;
static int factor = 7;

/* Static: reachable only through .symtab, the way a patch reaches internal functions. */
static __attribute__((noinline)) int scale(int x)
{
    return x * factor;
}

int basic_add(int a, int b)
{
    basic_counter++;
    basic_calls++;
    return a + b;
}

int basic_sum(int a, int b) __attribute__((alias("basic_add")));

int basic_scaled(int x)
{
    return scale(x) + 1;
}

int basic_square(int x)
{
    return x * x;
}

int basic_apply(basic_callback callback, int x)
{
    return callback(x) + 1;
}

/* The callbacks may call back into this library: nested entries. */
int basic_fold(basic_callback callback, int n)
{
    int total = 0;
    for (int i = 0; i < n; i++)
        total += callback(i);
    return total;
}

void basic_set_factor(int f)
{
    factor = f;
}

const char *basic_name(void)
{
    return "basic";
}
