#ifndef VERSIONED_H
#define VERSIONED_H

int versioned_get(int x);   /* VERS_2, the default */
int versioned_get_v1(int x); /* the same name at VERS_1, for old binaries */
int versioned_plain(int x);

#endif
