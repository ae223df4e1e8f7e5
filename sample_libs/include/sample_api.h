/*
 * One test program, two ways to reach the library it tests.
 *
 * Built plainly, the program links against the library and SAMPLE_GET(name) is just &name.
 * Built with -DSAMPLE_DLOPEN, it dlopen()s the library named by argv[1] and every SAMPLE_GET
 * is a dlsym() (or dlvsym()). The tests compare the outputs of both builds, with the
 * unprepared and the prepared library: they must be identical.
 */
#ifndef SAMPLE_API_H
#define SAMPLE_API_H

#ifdef SAMPLE_DLOPEN
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void *sample_handle;

static void sample_open(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s LIBRARY\n", argv[0]);
        exit(2);
    }
    sample_handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!sample_handle) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        exit(1);
    }
}

static void *sample_symbol(const char *name, const char *version)
{
    void *address = version ? dlvsym(sample_handle, name, version) : dlsym(sample_handle, name);
    if (!address) {
        fprintf(stderr, "dlsym %s: %s\n", name, dlerror());
        exit(1);
    }
    return address;
}

#define SAMPLE_OPEN(argc, argv) sample_open(argc, argv)
#define SAMPLE_FIRST_ARG 2 /* argv[1] is the library */
#define SAMPLE_GET(name) ((__typeof__(&name))sample_symbol(#name, NULL))
#define SAMPLE_GET_SYMBOL(decl, symbol, version) ((__typeof__(&decl))sample_symbol(symbol, version))
#else
#define SAMPLE_OPEN(argc, argv) ((void)(argc), (void)(argv))
#define SAMPLE_FIRST_ARG 1
#define SAMPLE_GET(name) (&name)
#define SAMPLE_GET_SYMBOL(decl, symbol, version) (&decl)
#endif

#endif
