/* fib, calling itself at every level through fib_entry, a pointer to its own entry, exactly
 * as its replacement does (bench/live/fib_fixed.c), so that patched and unpatched runs differ
 * only by what the patched prologue costs. (The exported symbol fib is the tracked trampoline;
 * fib_here is the function itself.) */
extern long fib_here(int) __attribute__((visibility("hidden")));
long (*fib_entry)(int) = fib_here;

__attribute__((noinline, optimize("no-optimize-sibling-calls"))) long fib(int n)
{
    return n < 2 ? n : fib_entry(n - 1) + fib_entry(n - 2);
}

extern long fib_here(int) __attribute__((alias("fib"), visibility("hidden")));
