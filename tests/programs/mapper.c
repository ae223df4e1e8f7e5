/*
 * Maps the file argv[1] (read-only, shared) and answers each line on stdin with one line until
 * `quit`: a process whose mappings include a large file, for tests/test_hostile.py.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return 1;
    if (mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED)
        return 1;
    printf("ready\n");
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin) && strcmp(line, "quit\n") != 0) {
        printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
