#ifndef BASIC_H
#define BASIC_H

typedef int (*basic_callback)(int);

extern int basic_counter;        /* exported data */
extern __thread int basic_calls; /* exported thread-local data */

int basic_add(int a, int b);
int basic_sum(int a, int b); /* alias of basic_add: two names, one address */
int basic_scaled(int x);     /* goes through a static function */
int basic_square(int x);
int basic_apply(basic_callback callback, int x);
int basic_fold(basic_callback callback, int n);
const char *basic_name(void);
void basic_set_factor(int f); /* sets the static factor basic_scaled uses */

#endif
