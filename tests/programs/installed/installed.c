/* The library of tests/test_installed.py. version() is a leaf (left untracked by the
 * rewriter: only the start-up application can reach it before its first call); report() is
 * tracked, and its first call is what registers a library loaded later. */
int version(void)
{
    return 1;
}

__attribute__((noipa)) static int twice(int x)
{
    return 2 * x;
}

int report(void)
{
    return twice(version()) + 10; /* v1: 12 */
}
