/* The fix of libinlining.so's parse_header (a header of two digits; anything else is -1), and
 * of the functions it is inlined into. */

int parse_header_v2(const char *p) {
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9')
        return -1;
    return (p[0] - '0') * 10 + (p[1] - '0');
}

int read_file_v2(const char *p) {
    return parse_header_v2(p) + 1;
}

int parse_all_v2(const char *p, int n) {
    int s = 0;
    for (int i = 0; i < n; i++)
        s += parse_header_v2(p + 2 * i);
    return s;
}

int checksum_v2(const char *p, int n, int seed) {
    return n <= 0 ? seed : p[0] * seed;
}
