/* Calls that stay inside the library a while: to test entry tracking, not to compute. */
#include <execinfo.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "tracking.h"

void tracking_empty(void)
{
}

long tracking_call(tracking_callback callback, long x)
{
    return callback(x) + 1;
}

long tracking_spin(long n)
{
    long acc = 0;
    for (long i = 0; i < n; i++)
        acc += i ^ (acc >> 3);
    return acc;
}

/* At -O2 this is `jmp tracking_spin@PLT`: the tracked entry of tracking_spin reuses this
 * call's return slot, which already returns into the runtime. */
long tracking_tail(long n)
{
    return tracking_spin(n + 1);
}

long tracking_block_read(int fd)
{
    char c;
    return read(fd, &c, 1);
}

long tracking_block_sleep(long seconds)
{
    struct timespec t = {seconds, 0};
    return nanosleep(&t, NULL);
}

long tracking_block_pause(void)
{
    return pause();
}

int tracking_backtrace(void)
{
    void *frames[64];
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, 1);
    return n;
}

/* The comparator's address is taken inside the library: prepared, qsort (outside it) calls back
 * in through its trampoline, a tracked entry per comparison. */
static int by_value(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

void tracking_sort(int *values, unsigned long count)
{
    qsort(values, count, sizeof *values, by_value);
}
