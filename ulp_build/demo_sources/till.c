/* The demo's long-running program: prints a total from libshop every half second. */
#include <stdio.h>
#include <time.h>

int shop_total(int price, int quantity);

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        printf("3 items at 200: total %d\n", shop_total(200, 3));
        struct timespec half = {0, 500 * 1000 * 1000};
        nanosleep(&half, NULL);
    }
}
