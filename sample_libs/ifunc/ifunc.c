/* A GNU indirect function: the dynamic loader calls the resolver to pick an implementation. */
#include "ifunc.h"

static const char *choice = "unresolved";

static int triple_sse2(int x)
{
    return 3 * x;
}

static int triple_generic(int x)
{
    return x + x + x;
}

static int (*resolve_triple(void))(int)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse2")) {
        choice = "sse2";
        return triple_sse2;
    }
    choice = "generic";
    return triple_generic;
}

int ifunc_triple(int x) __attribute__((ifunc("resolve_triple")));

const char *ifunc_choice(void)
{
    return choice;
}

int ifunc_triple_plus_one(int x)
{
    return ifunc_triple(x) + 1;
}
