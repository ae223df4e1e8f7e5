/* Calls the functions of libinlining.so on each line it reads: the value parse_header gives
 * directly, through read_file and through parse_all (which have it inlined). */
#include <stdio.h>
#include <string.h>

int parse_header(const char *p);
int read_file(const char *p);
int parse_all(const char *p, int n);

int main(void) {
    char line[64];
    puts("ready");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "quit", 4) == 0)
            return 0;
        printf("%d %d %d\n", parse_header(line), read_file(line) - 1, parse_all(line, 1));
        fflush(stdout);
    }
    return 0;
}
