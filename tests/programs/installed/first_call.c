/* Calls the library first thing in main: an installed patch must already be in effect. */
#include <stdio.h>

int version(void);
int report(void);

int main(void)
{
    printf("%d %d\n", version(), report());
    return 0;
}
