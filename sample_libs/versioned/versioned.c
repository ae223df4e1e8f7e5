/* One name, two versions: old binaries keep versioned_get@VERS_1, new ones get VERS_2. */
#include "versioned.h"

int versioned_get_1(int x)
{
    return x + 1;
}

int versioned_get_2(int x)
{
    return x + 2;
}

int versioned_plain(int x)
{
    return x * 10;
}

__asm__(".symver versioned_get_1, versioned_get@VERS_1");
__asm__(".symver versioned_get_2, versioned_get@@VERS_2");
