// A C++ library whose functions run destructors as an exception passes through them: gcc gives
// each an exception-handling table, which `ulp diff` carries with the changed function.
#include <stdexcept>
#include <string>

namespace {

// Counts the destructors run, so that the program can tell a landing pad ran.
struct Guard {
    int *count;
    ~Guard() { ++*count; }
};

}  // namespace

int cleanup_destroyed;

// Throws for a negative `x`; never inlined, so that the exception starts below `cleanup_work`.
__attribute__((noinline)) void cleanup_check(int x)
{
    if (x < 0)
        throw std::range_error("negative: " + std::to_string(x));
}

int cleanup_work(int x)
{
    Guard guard{&cleanup_destroyed};
    std::string digits = std::to_string(x);
    cleanup_check(x);
    return static_cast<int>(digits.size()) + 0;
}

// Catches what `cleanup_check` throws: a type table in its exception-handling table.
int cleanup_caught(int x)
{
    try {
        cleanup_check(x);
    } catch (const std::range_error &) {
        return -1;
    }
    return x + 0;
}
