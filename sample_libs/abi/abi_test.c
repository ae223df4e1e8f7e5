#include <stdio.h>

#include "abi.h"
#include "sample_api.h"

int main(int argc, char **argv)
{
    SAMPLE_OPEN(argc, argv);
    __typeof__(&abi_mix20) mix20 = SAMPLE_GET(abi_mix20);
    long (*vsum)(int, ...) = SAMPLE_GET(abi_vsum);
    double (*vmean)(int, ...) = SAMPLE_GET(abi_vmean);
    int (*format)(char *, size_t, const char *, ...) = SAMPLE_GET(abi_format);
    struct abi_big (*make_big)(long) = SAMPLE_GET(abi_make_big);
    struct abi_pair (*make_pair)(long) = SAMPLE_GET(abi_make_pair);
    long double (*ldiv_)(long double, long double) = SAMPLE_GET(abi_ldiv);
    char buf[128];

    printf("mix20 = %.3f\n", mix20(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5,
                                   6.5, 7.5, 8.5, 9.5));
    printf("vsum = %ld\n", vsum(6, 1L, 2L, 3L, 4L, 5L, 1000000000000L));
    printf("vmean = %.4f\n", vmean(9, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.5));
    int n = format(buf, sizeof buf, "%d|%s|%.2f|%ld", 42, "str", 2.25, -7L);
    printf("format = %s (%d)\n", buf, n);
    struct abi_big big = make_big(8);
    printf("big = %ld %ld %ld %.2f\n", big.a, big.b, big.c, big.d);
    struct abi_pair pair = make_pair(4);
    printf("pair = %ld %.2f\n", pair.n, pair.x);
    printf("ldiv = %.18Lf\n", ldiv_(1.0L, 3.0L));
    return 0;
}
