/*
 * dlsym_probe LIBRARY NAME[@VERSION]...: prints, for each name, the address dlsym (or dlvsym)
 * returns, as an offset from the library's load base, so a test can compare it with the
 * addresses in the file.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s LIBRARY NAME[@VERSION]...\n", argv[0]);
        return 2;
    }
    void *handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    struct link_map *map;
    if (!handle || dlinfo(handle, RTLD_DI_LINKMAP, &map) != 0) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    for (int i = 2; i < argc; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s", argv[i]);
        char *at = strchr(name, '@');
        void *address;
        if (at) {
            *at = '\0';
            address = dlvsym(handle, name, at + 1);
        } else {
            address = dlsym(handle, name);
        }
        if (!address) {
            printf("%s missing\n", argv[i]);
            continue;
        }
        printf("%s %#lx\n", argv[i], (unsigned long)((char *)address - (char *)map->l_addr));
    }
    return 0;
}
