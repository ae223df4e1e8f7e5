/* A pre-fork server (the command protocol of tests/live.py): for each `work` line it forks a
 * worker, which answers what the library says (version and report) and exits; the parent waits
 * for it. The parent calls the library itself at start, as servers use their libraries before
 * they fork. */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int version(void);
int report(void);

int main(void)
{
    char line[64];
    int first = report();
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (strcmp(line, "quit\n") == 0)
            break;
        if (strcmp(line, "work\n") != 0) {
            printf("started with %d\n", first);
            fflush(stdout);
            continue;
        }
        pid_t worker = fork();
        if (worker == 0) {
            printf("%d %d\n", version(), report());
            fflush(stdout);
            _exit(0);
        }
        int status;
        if (worker < 0 || waitpid(worker, &status, 0) != worker)
            return 1;
    }
    return 0;
}
