#include <string.h>

#include "greeter.h"

int main(void)
{
    char buf[32];
    greeter_format(buf, sizeof buf, "meson");
    return strcmp(buf, "hello, meson") != 0;
}
