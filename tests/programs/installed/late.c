/* Loads the library (argv[1]) only when told to (`load`, in the command protocol of
 * tests/live.py), long after the runtime started, then answers what it says through dlsym:
 * report() first, whose tracked call is the library's first. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    (void)argc;
    char line[64];
    int (*report)(void) = NULL, (*version)(void) = NULL;
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (strcmp(line, "quit\n") == 0)
            break;
        if (strcmp(line, "load\n") == 0 && !report) {
            void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
            if (!lib) {
                printf("dlopen: %s\n", dlerror());
                fflush(stdout);
                continue;
            }
            report = (int (*)(void))dlsym(lib, "report");
            version = (int (*)(void))dlsym(lib, "version");
        }
        if (report) {
            int r = report();
            printf("%d %d\n", version(), r);
        } else {
            printf("not loaded\n");
        }
        fflush(stdout);
    }
    return 0;
}
