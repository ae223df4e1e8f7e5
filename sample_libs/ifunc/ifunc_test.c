#include <stdio.h>

#include "ifunc.h"
#include "sample_api.h"

int main(int argc, char **argv)
{
    SAMPLE_OPEN(argc, argv);
    int (*triple)(int) = SAMPLE_GET(ifunc_triple);
    const char *(*choice)(void) = SAMPLE_GET(ifunc_choice);
    int (*plus_one)(int) = SAMPLE_GET(ifunc_triple_plus_one);

    printf("triple(14) = %d\n", triple(14));
    printf("resolver chose %s\n", choice());
    printf("triple_plus_one(14) = %d\n", plus_one(14));
    return 0;
}
