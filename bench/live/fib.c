/* fib, calling itself at every level through fib_entry, a pointer to its own entry, exactly
 * as its replacement does (bench/live/fib_fixed.c), so that patched and unpatched runs differ
 * only by what the patched prologue costs. (The exported symbol fib is the tracked trampoline;
 * fib_here is the function itself.) */
extern long fib_here(int) __attribute__((visibility("hidden")));
long (*fib_entry)(int);

/* The function's own entry, taken in a way `ulp rewrite` does not redirect to its trampoline
 * (an address one byte off, then corrected: docs/design.md, "Limits"): only the outer call is
 * a tracked entry, and each level costs what the prologue costs, not a tracked entry. */
__attribute__((constructor)) static void take_entry(void)
{
    char *before;
    __asm__("lea fib_here-1(%%rip), %0" : "=r"(before));
    fib_entry = (long (*)(int))(before + 1);
}

__attribute__((noinline, optimize("no-optimize-sibling-calls"))) long fib(int n)
{
    return n < 2 ? n : fib_entry(n - 1) + fib_entry(n - 2);
}

extern long fib_here(int) __attribute__((alias("fib"), visibility("hidden")));
