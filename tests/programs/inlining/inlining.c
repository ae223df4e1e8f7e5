/* A library whose functions the compiler copies elsewhere (tests/test_inlining.py).
 * Built with -fno-semantic-interposition (as in issue #16), gcc may inline an exported function
 * into its callers: parse_header into read_file and parse_all. checksum's fast path is
 * inlined into its callers and the rest split off as checksum.part.0 (partial inlining). */

int parse_header(const char *p) {
    return (p[0] - '0') * 10 + (p[1] - '0');
}

int read_file(const char *p) {
    return parse_header(p) + 1;
}

int parse_all(const char *p, int n) {
    int s = 0;
    for (int i = 0; i < n; i++)
        s += parse_header(p + 2 * i);
    return s;
}

#define MIX(k)                                                                                     \
    for (int i = 0; i < n; i++) {                                                                  \
        s = s * (k + 3) + p[i] * seed;                                                             \
        if (s & (k + 1))                                                                           \
            s = s / seed + k;                                                                      \
        else                                                                                       \
            s ^= seed << (i & (k % 7 + 1));                                                        \
    }

int checksum(const char *p, int n, int seed) {
    if (n <= 0)
        return seed;
    int s = seed;
    MIX(0) MIX(1) MIX(2) MIX(3) MIX(4) MIX(5) MIX(6) MIX(7)
    return s;
}

int checksum_small(const char *p, int n) {
    return checksum(p, n, 3);
}

int checksum_large(const char *p, int n) {
    return checksum(p, n, 5) + 1;
}
