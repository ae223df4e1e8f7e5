#include <stdio.h>

#include "basic.h"
#include "sample_api.h"

static int (*square)(int);

static int plus_ten(int x)
{
    return x + 10;
}

static int reenter(int x)
{
    return square(x) + 1;
}

int main(int argc, char **argv)
{
    SAMPLE_OPEN(argc, argv);
    int (*add)(int, int) = SAMPLE_GET(basic_add);
    int (*sum)(int, int) = SAMPLE_GET(basic_sum);
    int (*scaled)(int) = SAMPLE_GET(basic_scaled);
    int (*apply)(basic_callback, int) = SAMPLE_GET(basic_apply);
    int (*fold)(basic_callback, int) = SAMPLE_GET(basic_fold);
    const char *(*name)(void) = SAMPLE_GET(basic_name);
    int *counter = SAMPLE_GET(basic_counter);
    int *calls = SAMPLE_GET(basic_calls);
    square = SAMPLE_GET(basic_square);

    printf("name %s\n", name());
    printf("add(2, 3) = %d\n", add(2, 3));
    printf("sum(40, 2) = %d\n", sum(40, 2));
    printf("alias shares the address: %s\n", (void *)add == (void *)sum ? "yes" : "no");
    printf("scaled(6) = %d\n", scaled(6));
    printf("square(12) = %d\n", square(12));
    printf("apply(plus_ten, 5) = %d\n", apply(plus_ten, 5));
    printf("fold(reenter, 10) = %d\n", fold(reenter, 10));
    printf("counter = %d, calls in this thread = %d\n", *counter, *calls);
    return 0;
}
