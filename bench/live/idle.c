/* Loads argv[1] (RTLD_NOW), says so with one byte on stdout, then waits for a signal: an idle
 * single-threaded process with a prepared library, as most of a fleet is. */
#include <dlfcn.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2 || !dlopen(argv[1], RTLD_NOW))
        return 2;
    if (write(1, "r", 1) != 1)
        return 3;
    for (;;)
        pause();
}
