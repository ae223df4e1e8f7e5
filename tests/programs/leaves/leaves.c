/* One function of each kind for the leaf rule (ulp_build/prepare/leaves.py): the names say
 * whether `ulp rewrite` may leave each untracked. Built with `ulp cflags`, -O2,
 * -fstack-protector-all. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

int leaf_add(int a, int b)
{
    return a + b;
}

/* Loops and branches, all inside itself. */
long leaf_count(const char *s, char c)
{
    long n = 0;
    for (; *s; s++)
        if (*s == c)
            n++;
    return n;
}

/* Its stack protector's failure path calls __stack_chk_fail, which ends the process: still a
 * leaf (the library is built with -fstack-protector-all). */
int leaf_guarded(int i)
{
    volatile char buf[64];
    buf[i & 63] = (char)i;
    return buf[0];
}

/* Calls the C library, another library, which could call back into this one: no leaf. */
long calls_libc(const char *s)
{
    return (long)strlen(s) + getpid() * 0;
}

static NOINLINE int helper(int x)
{
    __asm__("" : "+r"(x)); /* not folded into the caller */
    return x * 3;
}

int calls_helper(int x)
{
    return helper(x) + 1;
}

/* `jmp leaf_add@PLT`: a tail call into an exported function of this library. */
int tail_call(int x)
{
    return leaf_add(x, 2);
}

int through_pointer(int (*f)(int), int x)
{
    return f(x) + 1;
}

static int by_value(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

/* Hands its own comparator to qsort, which calls back into this library. */
void hands_out_callback(int *v, size_t n)
{
    qsort(v, n, sizeof *v, by_value);
}
