/* Calling-convention corners: stack-passed arguments, variadics, struct and x87 returns. */
#include <stdarg.h>
#include <stdio.h>

#include "abi.h"

double abi_mix20(long a0, long a1, long a2, long a3, long a4, long a5, long a6, long a7,
                 long a8, long a9, double d0, double d1, double d2, double d3, double d4,
                 double d5, double d6, double d7, double d8, double d9)
{
    long weighted = a0 + 2 * a1 + 3 * a2 + 4 * a3 + 5 * a4 + 6 * a5 + 7 * a6 + 8 * a7 +
                    9 * a8 + 10 * a9;
    double fweighted = d0 + 2 * d1 + 3 * d2 + 4 * d3 + 5 * d4 + 6 * d5 + 7 * d6 + 8 * d7 +
                       9 * d8 + 10 * d9;
    return (double)weighted + fweighted;
}

long abi_vsum(int count, ...)
{
    va_list ap;
    long total = 0;
    va_start(ap, count);
    for (int i = 0; i < count; i++)
        total += va_arg(ap, long);
    va_end(ap);
    return total;
}

double abi_vmean(int count, ...)
{
    va_list ap;
    double total = 0;
    va_start(ap, count);
    for (int i = 0; i < count; i++)
        total += va_arg(ap, double);
    va_end(ap);
    return count ? total / count : 0.0;
}

int abi_format(char *buf, size_t size, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(buf, size, format, ap);
    va_end(ap);
    return n;
}

struct abi_big abi_make_big(long seed)
{
    struct abi_big big = {seed, seed * 2, seed * 3, seed / 4.0};
    return big;
}

struct abi_pair abi_make_pair(long seed)
{
    struct abi_pair pair = {seed + 1, seed * 1.5};
    return pair;
}

long double abi_ldiv(long double a, long double b)
{
    return a / b;
}
