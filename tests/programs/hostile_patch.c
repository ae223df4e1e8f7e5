/* A patch object an attacker substitutes for a real one: the same replacement symbol, and a
 * constructor that leaves a mark (the file MARKER) if it ever runs in a target. */
#include <fcntl.h>
#include <unistd.h>

__attribute__((constructor)) static void hostile(void)
{
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0)
        close(fd);
}

int basic_square_fixed(int x)
{
    return -x;
}
