#include <stdio.h>

#include "sample_api.h"
#include "versioned.h"

#ifndef SAMPLE_DLOPEN
__asm__(".symver versioned_get_v1, versioned_get@VERS_1");
#endif

int main(int argc, char **argv)
{
    SAMPLE_OPEN(argc, argv);
    int (*get2)(int) = SAMPLE_GET_SYMBOL(versioned_get, "versioned_get", "VERS_2");
    int (*get1)(int) = SAMPLE_GET_SYMBOL(versioned_get_v1, "versioned_get", "VERS_1");
    int (*plain)(int) = SAMPLE_GET(versioned_plain);

    printf("versioned_get@@VERS_2(5) = %d\n", get2(5));
    printf("versioned_get@VERS_1(5) = %d\n", get1(5));
    printf("versions differ: %s\n", (void *)get1 != (void *)get2 ? "yes" : "no");
    printf("versioned_plain(5) = %d\n", plain(5));
    return 0;
}
