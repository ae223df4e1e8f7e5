#ifndef ABI_H
#define ABI_H

#include <stddef.h>

/* Returned in memory (through a hidden pointer): larger than two eightbytes. */
struct abi_big {
    long a, b, c;
    double d;
};

/* Returned in registers: one integer eightbyte (rax), one SSE eightbyte (xmm0). */
struct abi_pair {
    long n;
    double x;
};

/* 10 integer and 10 floating-point arguments: four of each travel on the stack. */
double abi_mix20(long a0, long a1, long a2, long a3, long a4, long a5, long a6, long a7,
                 long a8, long a9, double d0, double d1, double d2, double d3, double d4,
                 double d5, double d6, double d7, double d8, double d9);
long abi_vsum(int count, ...);      /* variadic integers */
double abi_vmean(int count, ...);   /* variadic doubles: %al carries the vector count */
int abi_format(char *buf, size_t size, const char *format, ...);
struct abi_big abi_make_big(long seed);
struct abi_pair abi_make_pair(long seed);
long double abi_ldiv(long double a, long double b);

#endif
