// A C++ library whose exported functions throw: exceptions must cross the library boundary.
#include "thrower.h"

#include <stdexcept>

static int rethrow_count;

extern "C" int thrower_check(int x)
{
    if (x < 0)
        throw std::invalid_argument("negative input");
    return 2 * x;
}

extern "C" int thrower_call(thrower_callback callback, int x)
{
    return callback(x) + 1;
}

extern "C" int thrower_guarded(thrower_callback callback, int x)
{
    try {
        return callback(x);
    } catch (...) {
        rethrow_count++;
        throw;
    }
}

extern "C" int thrower_rethrows(void)
{
    return rethrow_count;
}

int ThrowerCounter::bump(int by)
{
    if (by == 0)
        throw std::runtime_error("zero bump");
    value += by;
    return value;
}
