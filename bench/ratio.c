/*
 * ratio MODE LIB_A LIB_B [ROUNDS]: times the same work against two builds of one library
 * loaded side by side in this process (dlopen by path), interleaved round by round, and prints
 * the median nanoseconds per round of each. Run it under `ulp run` to time A unprepared against
 * B prepared and tracked.
 *   empty: 1,000,000 calls of tracking_empty()
 *   sort:  tracking_sort() of 1,000,000 ints (qsort calling the library's static comparator)
 *   zlib:  deflate 4 MiB in 4 KiB chunks, then inflate it back in 4 KiB chunks
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#define CHUNK 4096
#define INPUT (4 << 20)

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void *need(void *handle, const char *name)
{
    void *p = dlsym(handle, name);
    if (!p) {
        fprintf(stderr, "dlsym %s: %s\n", name, dlerror());
        exit(1);
    }
    return p;
}

struct zlib_api {
    int (*deflateInit_)(z_streamp, int, const char *, int);
    int (*deflate)(z_streamp, int);
    int (*deflateEnd)(z_streamp);
    int (*inflateInit_)(z_streamp, const char *, int);
    int (*inflate)(z_streamp, int);
    int (*inflateEnd)(z_streamp);
};

static unsigned char input[INPUT], packed[INPUT + 65536], unpacked[INPUT];

static double run_zlib(const struct zlib_api *z)
{
    double start = now_ns();
    z_stream s;
    memset(&s, 0, sizeof s);
    z->deflateInit_(&s, 6, ZLIB_VERSION, sizeof s);
    s.next_out = packed;
    s.avail_out = sizeof packed;
    for (size_t at = 0; at < INPUT; at += CHUNK) {
        s.next_in = input + at;
        s.avail_in = CHUNK;
        z->deflate(&s, at + CHUNK == INPUT ? Z_FINISH : Z_NO_FLUSH);
    }
    size_t packed_size = sizeof packed - s.avail_out;
    z->deflateEnd(&s);
    memset(&s, 0, sizeof s);
    z->inflateInit_(&s, ZLIB_VERSION, sizeof s);
    s.next_out = unpacked;
    s.avail_out = sizeof unpacked;
    for (size_t at = 0; at < packed_size; at += CHUNK) {
        s.next_in = packed + at;
        s.avail_in = at + CHUNK <= packed_size ? CHUNK : packed_size - at;
        z->inflate(&s, Z_NO_FLUSH);
    }
    z->inflateEnd(&s);
    double elapsed = now_ns() - start;
    if (memcmp(input, unpacked, INPUT) != 0) {
        fputs("round trip mismatch\n", stderr);
        exit(1);
    }
    return elapsed;
}

static double run_empty(void (*f)(void))
{
    double start = now_ns();
    for (int i = 0; i < 1000000; i++)
        f();
    return now_ns() - start;
}

static int sort_input[1000000], sort_work[1000000];

static double run_sort(void (*sort)(int *, unsigned long))
{
    memcpy(sort_work, sort_input, sizeof sort_work);
    double start = now_ns();
    sort(sort_work, 1000000);
    double elapsed = now_ns() - start;
    for (int i = 1; i < 1000000; i++)
        if (sort_work[i - 1] > sort_work[i]) {
            fputs("not sorted\n", stderr);
            exit(1);
        }
    return elapsed;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s empty|sort|zlib LIB_A LIB_B [ROUNDS]\n", argv[0]);
        return 2;
    }
    int rounds = argc > 4 ? atoi(argv[4]) : 21;
    void *h[2];
    struct zlib_api z[2];
    void (*empty[2])(void);
    void (*sort[2])(int *, unsigned long);
    int zlib_mode = strcmp(argv[1], "zlib") == 0, sort_mode = strcmp(argv[1], "sort") == 0;
    for (int i = 0; i < 2; i++) {
        h[i] = dlopen(argv[2 + i], RTLD_NOW | RTLD_LOCAL);
        if (!h[i]) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
        if (zlib_mode) {
            z[i].deflateInit_ = need(h[i], "deflateInit_");
            z[i].deflate = need(h[i], "deflate");
            z[i].deflateEnd = need(h[i], "deflateEnd");
            z[i].inflateInit_ = need(h[i], "inflateInit_");
            z[i].inflate = need(h[i], "inflate");
            z[i].inflateEnd = need(h[i], "inflateEnd");
        } else if (sort_mode) {
            sort[i] = need(h[i], "tracking_sort");
        } else {
            empty[i] = need(h[i], "tracking_empty");
        }
    }
    /* Compressible but not trivial input. */
    unsigned state = 12345;
    for (size_t i = 0; i < INPUT; i++) {
        state = state * 1103515245 + 12345;
        input[i] = "ulp_build live patching "[(state >> 16) % 24] ^ (i % 251 == 0);
    }
    for (size_t i = 0; i < 1000000; i++) {
        state = state * 1103515245 + 12345;
        sort_input[i] = (int)(state >> 1);
    }
    double *t[2] = {calloc(rounds, sizeof(double)), calloc(rounds, sizeof(double))};
    for (int r = -1; r < rounds; r++) /* round -1 warms both up */
        for (int i = 0; i < 2; i++) {
            double ns = zlib_mode ? run_zlib(&z[i])
                        : sort_mode ? run_sort(sort[i])
                                    : run_empty(empty[i]);
            if (r >= 0)
                t[i][r] = ns;
        }
    for (int i = 0; i < 2; i++)
        qsort(t[i], rounds, sizeof(double), by_value);
    printf("%.0f %.0f\n", t[0][rounds / 2], t[1][rounds / 2]);
    return 0;
}
