/* fib's replacement: the same computation, recursing through the target's fib_entry like the
 * original, so that every level goes through the patched prologue. */
long (**fib_entry_ref)(int); /* filled by the runtime: the address of fib_entry */

__attribute__((noinline, optimize("no-optimize-sibling-calls"))) long fib_fixed(int n)
{
    return n < 2 ? n : (*fib_entry_ref)(n - 1) + (*fib_entry_ref)(n - 2);
}
