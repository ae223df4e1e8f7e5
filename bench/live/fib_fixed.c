/* fib's replacement: the same computation, recursing through fib's entry like the original,
 * so that every level goes through the patched prologue. */
long (*const *fib_entry_ref)(int); /* filled by the runtime: the address of fib_entry */

__attribute__((noinline, optimize("no-optimize-sibling-calls"))) long fib_fixed(int n)
{
    long (*fib)(int) = *fib_entry_ref;
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}
