/* The library the `ulp diff` tests build twice: as it is here, and with one fix applied to this
 * text (tests/test_diff.py names each fix by the line it changes). */
#include <stdio.h>
#include <string.h>

struct config {
    int scale;
    int offset;
};

struct config diffed_config = {3, 0}; /* a global struct: its layout must not change */
int diffed_limit = 100;               /* a global with an initial value */
static int calls;                     /* state the patch must share, not copy */

static __attribute__((noinline)) int clamp(int x)
{
    return x > diffed_limit ? diffed_limit : x;
}

static inline __attribute__((always_inline)) int twice(int x)
{
    return 2 * x;
}

int diffed_add(int a, int b)
{
    return a + b;
}

int diffed_clamped(int x)
{
    return clamp(x * diffed_config.scale + diffed_config.offset);
}

int diffed_double_a(int x)
{
    return twice(x) + 1;
}

int diffed_double_b(int x)
{
    return twice(x) + 2;
}

int diffed_tally(void)
{
    static int tally; /* gcc names it tally.N, N counting the statics of this file */
    return ++tally;
}

int diffed_count(void)
{
    return ++calls;
}

int diffed_scaled(int x)
{
    return x * 7;
}

const char *diffed_name(int x)
{
    return x ? "yes" : "no";
}

/* Calls the C library and needs a stack frame: its unwind information moves with it. */
int diffed_digits(int n)
{
    char text[32];
    snprintf(text, sizeof text, "%d", n);
    return (int)strlen(text) * 3 + n;
}

/* A switch gcc compiles to a jump table in .rodata: a copy of the table comes with the code,
 * its entries distances to places in the function. */
int diffed_op(int op, int a)
{
    switch (op) {
    case 0: return a + 1;
    case 1: return a * 3;
    case 2: return a - 7;
    case 3: return a << 2;
    case 4: return a / 5;
    case 5: return a ^ 0x55;
    case 6: return -a;
    default: return 0;
    }
}

/* Stores its own address: a `lea` into its own section, which the assembler resolves and keeps
 * no relocation for, and which `ulp rewrite` points at the function's trampoline. */
int (*diffed_last_step)(int);

static __attribute__((noinline)) int step(int x)
{
    diffed_last_step = step;
    return x + 1;
}

int diffed_step(int x)
{
    return step(x);
}

/* A table of pointers to strings (.data.rel.ro): its strings are part of its value. */
static const char *const words[] = {"zero", "one", "two"};

const char *diffed_word(int i)
{
    return words[i % 3];
}

/* A table of label addresses: it points inside its function, not at its entry. */
int diffed_goto(int op, int x)
{
    static void *const labels[] = {&&plus, &&times};
    goto *labels[op & 1];
plus:
    return x + 1;
times:
    return x * 5;
}

/* Its code and the part gcc splits off (diffed_cold.cold), which jumps back into it. */
int diffed_sink;

static __attribute__((noinline, cold)) int rare(int x)
{
    diffed_sink += x;
    return x - 1;
}

int diffed_cold(int x)
{
    int r = x * 3;
    for (int i = 0; i < 4; i++) {
        if (__builtin_expect(x == i, 0)) {
            r += rare(x) + rare(r) + rare(r * 5);
            diffed_sink++;
        }
        r += i;
    }
    return r + 7;
}

/* A switch whose jump table (in .rodata, copied with the code) holds places in the function's
 * cold part (diffed_kind.cold: the default case, which calls a cold function): that part never
 * jumps back. odd_kind keeps where it was called from, so a program can tell which copy of the
 * cold part ran, the library's or a patch's. */
void *diffed_kind_caller;

static __attribute__((noinline, cold)) int odd_kind(int t)
{
    diffed_kind_caller = __builtin_return_address(0);
    return -t;
}

int diffed_kind(int t, int x)
{
    switch (t) {
    case 0: return x + 1;
    case 1: return x * 3;
    case 2: return x - 7;
    case 3: return x << 2;
    case 5: return x / 5;
    case 6: return x ^ 0x55;
    case 8: return -x;
    default: return odd_kind(t) * 100 + x;
    }
}

/* A function the loader picks (an IFUNC), and thread-local data. */
static int one(void)
{
    return 1;
}

static int (*pick(void))(void)
{
    return one;
}

int diffed_which(void) __attribute__((ifunc("pick")));

int diffed_which_plus(int x)
{
    return diffed_which() + x;
}

__thread int diffed_per_thread = 5;

/* A constant table, read directly and through a pointer the library keeps. */
static const int primes[] = {2, 3, 5, 7};
const int *diffed_primes = primes;

int diffed_prime(int i)
{
    return primes[i & 3];
}

/* Assembly: no padding, so never patchable. */
__asm__(".text\n"
        ".globl diffed_asm\n"
        ".type diffed_asm, @function\n"
        "diffed_asm:\n"
        "    movl %edi, %eax\n"
        "    ret\n"
        ".size diffed_asm, .-diffed_asm\n");

/* Assembly of the library's own, called through a pointer: neither exported nor padded, so the
   library takes its plain address (the rewriter redirects no address of such a function). */
__asm__(".text\n"
        ".type negate, @function\n"
        "negate:\n"
        "    xorl %eax, %eax\n"
        "    subl %edi, %eax\n"
        "    ret\n"
        ".size negate, .-negate\n");
__attribute__((visibility("hidden"))) int negate(int x);

int diffed_via(int x)
{
    int (*volatile through)(int) = negate;
    return through(x) + 1;
}

/* Constants gcc puts in mergeable sections (.rodata.cst8, .rodata.cst16) and refers to by
   local labels (.LC0): a fix adding one to diffed_shift moves the 16-byte one, and the
   padding before it, but changes no other function. */
double diffed_scale(double x)
{
    return x * 1.5;
}

typedef int diffed_v4 __attribute__((vector_size(16)));
void diffed_fill(diffed_v4 *out)
{
    *out = (diffed_v4){1, 2, 3, 4};
}

double diffed_shift(double x)
{
    return x + 0.0;
}
