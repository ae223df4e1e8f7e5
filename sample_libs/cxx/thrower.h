#ifndef THROWER_H
#define THROWER_H

/* C linkage, so the dlopen build finds them by plain names; they still throw C++ exceptions. */
extern "C" {
typedef int (*thrower_callback)(int);

int thrower_check(int x);                           /* throws std::invalid_argument if x < 0 */
int thrower_call(thrower_callback callback, int x); /* lets the callback's exception through */
int thrower_guarded(thrower_callback callback, int x); /* catches, counts, rethrows */
int thrower_rethrows(void);                         /* how many times thrower_guarded rethrew */
}

class ThrowerCounter {
public:
    int bump(int by); /* an exported method: _ZN14ThrowerCounter4bumpEi */
    int value = 0;
};

#endif
