/* Prints fib(N) (argv[1] dlopen'ed) for every line N read from stdin ("?" for other lines). */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    void *lib = argc == 2 ? dlopen(argv[1], RTLD_NOW) : NULL;
    long (*fib)(int) = lib ? (long (*)(int))dlsym(lib, "fib") : NULL;
    if (!fib)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    char line[64];
    int n;
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%d", &n) == 1)
            printf("%ld\n", fib(n));
        else
            printf("?\n");
    }
    return 0;
}
