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

/* Hands out the address of a function of its own (lea, which the rewriter points at that
 * function's trampoline): no leaf, prepared or not. */
static NOINLINE int handed_out(int x)
{
    return x * 5;
}

void *hands_out_static(void)
{
    return (void *)handed_out;
}

/* Hands its own comparator to qsort, which calls back into this library. */
void hands_out_callback(int *v, size_t n)
{
    qsort(v, n, sizeof *v, by_value);
}

/* IFUNCs: leaf_pick's resolver can only return leaves, so the IFUNC is one; calls_pick's can
 * return a function that calls the C library. */
static int pick_a(int x)
{
    return x + 1;
}

static int pick_b(int x)
{
    return x + 2;
}

static int pick_calls(int x)
{
    return x + getpid() * 0;
}

static void *resolve_leaf_pick(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? (void *)pick_a : (void *)pick_b;
}

static void *resolve_calls_pick(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? (void *)pick_a : (void *)pick_calls;
}

int leaf_pick(int x) __attribute__((ifunc("resolve_leaf_pick")));
int calls_pick(int x) __attribute__((ifunc("resolve_calls_pick")));

/* where_pick returns where it returns to: its caller when entered plain, the runtime when
 * tracked. Which variant the resolver picks, a leaf or one that calls the C library, says
 * LEAVES_PICK (read by a resolver that runs at dlopen, when getenv is safe to call). */
static NOINLINE void *where_leaf(void)
{
    return __builtin_return_address(0);
}

static NOINLINE void *where_calls(void)
{
    return (char *)__builtin_return_address(0) + getpid() * 0;
}

static void *resolve_where_pick(void)
{
    const char *pick = getenv("LEAVES_PICK");
    return pick && strcmp(pick, "calls") == 0 ? (void *)where_calls : (void *)where_leaf;
}

void *where_pick(void) __attribute__((ifunc("resolve_where_pick")));

/* Assembly sharing a tail, as glibc's string functions do: leaf_into_middle jumps into the
 * middle of leaf_with_tail (no checker there), a leaf, so both are leaves; into_middle_of_caller
 * jumps into a function that calls the C library, so it is none. */
__asm__(".text\n"
        ".globl leaf_into_middle\n.type leaf_into_middle, @function\n"
        "leaf_into_middle:\n mov %edi, %eax\n jmp .Lshared_tail\n"
        ".size leaf_into_middle, .-leaf_into_middle\n"
        ".globl leaf_with_tail\n.type leaf_with_tail, @function\n"
        "leaf_with_tail:\n lea (%rdi,%rdi), %eax\n.Lshared_tail:\n add $1, %eax\n ret\n"
        ".size leaf_with_tail, .-leaf_with_tail\n"
        ".globl into_middle_of_caller\n.type into_middle_of_caller, @function\n"
        "into_middle_of_caller:\n jmp .Lcalls\n"
        ".size into_middle_of_caller, .-into_middle_of_caller\n"
        ".globl calls_getpid\n.type calls_getpid, @function\n"
        "calls_getpid:\n nop\n.Lcalls:\n jmp getpid@PLT\n"
        ".size calls_getpid, .-calls_getpid\n");
