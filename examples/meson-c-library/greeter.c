#include <stdio.h>

#include "greeter.h"

int greeter_format(char *buf, int size, const char *name)
{
    return snprintf(buf, size, "hello, %s", name);
}
