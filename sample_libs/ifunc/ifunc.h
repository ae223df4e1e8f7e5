#ifndef IFUNC_H
#define IFUNC_H

int ifunc_triple(int x);             /* a GNU_IFUNC symbol */
const char *ifunc_choice(void);      /* which implementation the resolver chose */
int ifunc_triple_plus_one(int x);    /* calls the IFUNC from inside the library */

#endif
