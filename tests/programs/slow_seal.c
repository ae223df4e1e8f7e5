/* Preloaded after the runtime: fcntl(F_ADD_SEALS), which only the runtime's prepare step calls
 * here (sealing the patch object's memfd, runtime/load.c), takes two seconds. The prepare holds
 * the runtime's own lock meanwhile, and not the loader's or the allocator's, which fork()
 * would wait for: a test can fork the process in the middle of a prepare. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <unistd.h>

static int slow_fcntl(const char *name, int fd, int cmd, void *arg)
{
    int (*real)(int, int, ...) = (int (*)(int, int, ...))dlsym(RTLD_NEXT, name);
    if (cmd == F_ADD_SEALS)
        sleep(2);
    return real(fd, cmd, arg);
}

/* Both names: a build with 64-bit file offsets (Meson's default) calls fcntl64. */
int fcntl(int fd, int cmd, ...)
{
    va_list args;
    va_start(args, cmd);
    void *arg = va_arg(args, void *);
    va_end(args);
    return slow_fcntl("fcntl", fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
    va_list args;
    va_start(args, cmd);
    void *arg = va_arg(args, void *);
    va_end(args);
    return slow_fcntl("fcntl64", fd, cmd, arg);
}
