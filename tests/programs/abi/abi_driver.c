/* For every line on stdin, calls each function of the abi sample (argv[1], dlopen'ed) once and
 * prints the results on one line: 10+10 arguments (4+4 on the stack), variadic integers and
 * doubles (%al), a struct returned through a hidden pointer, one returned in rax:xmm0, and an
 * x87 long double. */
#include <dlfcn.h>
#include <stdio.h>
#include "abi.h"

int main(int argc, char **argv)
{
    void *lib = argc == 2 ? dlopen(argv[1], RTLD_NOW) : NULL;
    if (!lib)
        return 2;
    double (*mix20)(long, long, long, long, long, long, long, long, long, long, double, double,
                    double, double, double, double, double, double, double, double) =
        (double (*)(long, long, long, long, long, long, long, long, long, long, double, double,
                    double, double, double, double, double, double, double, double))
            dlsym(lib, "abi_mix20");
    long (*vsum)(int, ...) = (long (*)(int, ...))dlsym(lib, "abi_vsum");
    double (*vmean)(int, ...) = (double (*)(int, ...))dlsym(lib, "abi_vmean");
    struct abi_big (*big)(long) = (struct abi_big(*)(long))dlsym(lib, "abi_make_big");
    struct abi_pair (*pair)(long) = (struct abi_pair(*)(long))dlsym(lib, "abi_make_pair");
    long double (*ldiv)(long double, long double) =
        (long double (*)(long double, long double))dlsym(lib, "abi_ldiv");
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        struct abi_big b = big(8);
        struct abi_pair p = pair(4);
        printf("%.1f %ld %.2f %ld,%ld,%ld,%.2f %ld,%.2f %.6Lf\n",
               mix20(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, .5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5,
                     9.5),
               vsum(5, 1L, 2L, 3L, 4L, 5L), vmean(4, 1.0, 2.0, 3.0, 4.5), b.a, b.b, b.c, b.d, p.n,
               p.x, ldiv(10.0L, 4.0L));
    }
    return 0;
}
