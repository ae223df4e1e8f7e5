/* Answers one line per command on stdin with the library's functions: `add A B`, `clamped X`,
 * `double_a X`, `double_b X`, `count`, `tally`, `scaled X`, `name X`, `digits X`, `asm X`, `op OP A`,
 * `step X`, `word X`,
 * `cold X`, `via X`, `scale X`, `shift X`, `kind T X`, `kind_from` (the file whose code last ran
 * diffed_kind's cold part); `stats` and `quit`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int diffed_add(int a, int b);
int diffed_clamped(int x);
int diffed_double_a(int x);
int diffed_double_b(int x);
int diffed_count(void);
int diffed_tally(void);
int diffed_scaled(int x);
const char *diffed_name(int x);
int diffed_asm(int x);
int diffed_digits(int n);
int diffed_op(int op, int a);
int diffed_step(int x);
const char *diffed_word(int i);
int diffed_cold(int x);
int diffed_via(int x);
double diffed_scale(double x);
double diffed_shift(double x);
int diffed_kind(int t, int x);
extern void *diffed_kind_caller;

/* The name of the object holding `addr`, without its directory: a library's file name, or for a
 * patch object, which the runtime loads from a memfd as /proc/thread-self/fd/N, the memfd's
 * name (memfd:ulp-patch:ID). */
static const char *object_of(void *addr)
{
    static char link[PATH_MAX];
    Dl_info info;
    if (!addr || !dladdr(addr, &info) || !info.dli_fname)
        return "?";
    const char *name = info.dli_fname;
    ssize_t n = readlink(name, link, sizeof link - 1);
    if (n > 0) {
        link[n] = 0;
        link[strcspn(link, " ")] = 0; /* the kernel's " (deleted)" */
        name = link;
    }
    const char *slash = strrchr(name, '/');
    return slash ? slash + 1 : name;
}

int main(void)
{
    char line[128], command[32];
    int a = 0, b = 0;
    puts("ready");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%31s %d %d", command, &a, &b) < 1)
            continue;
        if (!strcmp(command, "quit"))
            break;
        if (!strcmp(command, "add"))
            printf("%d\n", diffed_add(a, b));
        else if (!strcmp(command, "clamped"))
            printf("%d\n", diffed_clamped(a));
        else if (!strcmp(command, "double_a"))
            printf("%d\n", diffed_double_a(a));
        else if (!strcmp(command, "double_b"))
            printf("%d\n", diffed_double_b(a));
        else if (!strcmp(command, "count"))
            printf("%d\n", diffed_count());
        else if (!strcmp(command, "tally"))
            printf("%d\n", diffed_tally());
        else if (!strcmp(command, "scaled"))
            printf("%d\n", diffed_scaled(a));
        else if (!strcmp(command, "name"))
            printf("%s\n", diffed_name(a));
        else if (!strcmp(command, "digits"))
            printf("%d\n", diffed_digits(a));
        else if (!strcmp(command, "op"))
            printf("%d\n", diffed_op(a, b));
        else if (!strcmp(command, "step"))
            printf("%d\n", diffed_step(a));
        else if (!strcmp(command, "word"))
            printf("%s\n", diffed_word(a));
        else if (!strcmp(command, "cold"))
            printf("%d\n", diffed_cold(a));
        else if (!strcmp(command, "asm"))
            printf("%d\n", diffed_asm(a));
        else if (!strcmp(command, "via"))
            printf("%d\n", diffed_via(a));
        else if (!strcmp(command, "scale"))
            printf("%g\n", diffed_scale(a));
        else if (!strcmp(command, "shift"))
            printf("%g\n", diffed_shift(a));
        else if (!strcmp(command, "kind"))
            printf("%d\n", diffed_kind(a, b));
        else if (!strcmp(command, "kind_from"))
            printf("%s\n", object_of(diffed_kind_caller));
        else
            puts("ok");
        fflush(stdout);
    }
    return 0;
}
