#include <cstdio>
#include <stdexcept>

#include "sample_api.h"
#include "thrower.h"

static int (*check)(int);

static int checked_twice(int x)
{
    return check(x) + check(x);
}

static int always_throws(int)
{
    throw std::out_of_range("from the callback");
}

int main(int argc, char **argv)
{
    SAMPLE_OPEN(argc, argv);
    check = SAMPLE_GET(thrower_check);
    int (*call)(thrower_callback, int) = SAMPLE_GET(thrower_call);
    int (*guarded)(thrower_callback, int) = SAMPLE_GET(thrower_guarded);
    int (*rethrows)(void) = SAMPLE_GET(thrower_rethrows);
    // A non-virtual method is a function taking `this` first, which is how dlsym reaches it.
#ifdef SAMPLE_DLOPEN
    auto bump = reinterpret_cast<int (*)(ThrowerCounter *, int)>(
        sample_symbol("_ZN14ThrowerCounter4bumpEi", nullptr));
#else
    auto bump = [](ThrowerCounter *c, int by) { return c->bump(by); };
#endif

    std::printf("check(21) = %d\n", check(21));
    try {
        check(-1);
        std::printf("no exception\n");
    } catch (const std::invalid_argument &e) {
        std::printf("caught invalid_argument: %s\n", e.what());
    }
    std::printf("call(checked_twice, 5) = %d\n", call(checked_twice, 5));
    try {
        call(checked_twice, -5);
    } catch (const std::exception &e) {
        std::printf("caught through two library frames: %s\n", e.what());
    }
    try {
        guarded(always_throws, 1);
    } catch (const std::out_of_range &e) {
        std::printf("rethrown across the boundary: %s (rethrows %d)\n", e.what(), rethrows());
    }
    try {
        call(always_throws, 1);
    } catch (...) {
        std::printf("catch (...) works\n");
    }
    ThrowerCounter counter;
    int first = bump(&counter, 3);
    int second = bump(&counter, 4);
    std::printf("bump: %d %d\n", first, second);
    try {
        bump(&counter, 0);
    } catch (const std::runtime_error &e) {
        std::printf("method threw: %s, value still %d\n", e.what(), counter.value);
    }
    return 0;
}
