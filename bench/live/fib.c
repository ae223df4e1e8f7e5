/* fib, calling itself through its entry at every level (not inlined, not turned into a loop). */
__attribute__((noinline, optimize("no-optimize-sibling-calls"))) long fib(int n)
{
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

/* fib's own entry, so that a replacement recurses exactly as fib does (fib's exported symbol
 * is its tracked trampoline). */
extern long fib_here(int) __attribute__((alias("fib"), visibility("hidden")));
long (*const fib_entry)(int) = fib_here;
