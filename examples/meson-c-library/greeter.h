#ifndef GREETER_H
#define GREETER_H

int greeter_format(char *buf, int size, const char *name);

#endif
