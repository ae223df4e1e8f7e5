/* fib's replacement calls the original, whose recursion comes back here at every level. */
long (*fib_original)(int);

long fib_plus(int n)
{
    return fib_original(n) + 1;
}
