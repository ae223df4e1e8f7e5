/* A recursive function that calls itself through its entry at every level: kept from being
 * inlined into itself or turned into a loop, as gcc -O2 otherwise does. */
__attribute__((noinline, optimize("no-optimize-sibling-calls"))) long fib(int n)
{
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}
