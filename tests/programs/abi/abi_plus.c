/* Replacements for the abi sample: each result plus 1000, the non-variadic ones by calling
 * the original through a function reference (so arguments travel through two dispatches). */
#include <stdarg.h>
#include "abi.h"

double (*mix20_original)(long, long, long, long, long, long, long, long, long, long, double,
                         double, double, double, double, double, double, double, double,
                         double);
struct abi_big (*make_big_original)(long);
struct abi_pair (*make_pair_original)(long);
long double (*ldiv_original)(long double, long double);

double mix20_plus(long a0, long a1, long a2, long a3, long a4, long a5, long a6, long a7,
                  long a8, long a9, double d0, double d1, double d2, double d3, double d4,
                  double d5, double d6, double d7, double d8, double d9)
{
    return mix20_original(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, d0, d1, d2, d3, d4, d5, d6,
                          d7, d8, d9) + 1000;
}

long vsum_plus(int count, ...)
{
    va_list ap;
    long total = 1000;
    va_start(ap, count);
    for (int i = 0; i < count; i++)
        total += va_arg(ap, long);
    va_end(ap);
    return total;
}

double vmean_plus(int count, ...)
{
    va_list ap;
    double total = 0;
    va_start(ap, count);
    for (int i = 0; i < count; i++)
        total += va_arg(ap, double);
    va_end(ap);
    return total / count + 1000;
}

struct abi_big make_big_plus(long seed)
{
    struct abi_big big = make_big_original(seed);
    big.a += 1000, big.b += 1000, big.c += 1000, big.d += 1000;
    return big;
}

struct abi_pair make_pair_plus(long seed)
{
    struct abi_pair pair = make_pair_original(seed);
    pair.n += 1000, pair.x += 1000;
    return pair;
}

long double ldiv_plus(long double a, long double b)
{
    return ldiv_original(a, b) + 1000;
}
