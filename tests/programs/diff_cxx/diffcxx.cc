// A C++ library for `ulp diff`: functions that run destructors as an exception passes through
// them (gcc gives each an exception-handling table, which the patch carries with the changed
// function), and strings built from literals, which gcc reaches from their end.
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

// gcc builds each string from its literal's end (`.LC0+8`), in a constructor it outlines when
// several functions share it, and reaches the literal's start from there.
std::string cleanup_tagged(const char *m)
{
    return std::string("tagged: ") + m;
}

std::string cleanup_prefixed(const char *m)
{
    return std::string("a longer prefix, for another literal: ") + m;
}

std::string cleanup_suffixed(const char *m)
{
    return std::string(m) + " (suffixed)";
}

// The linker merges this literal into the tail of "tagged: ".
const char *cleanup_separator()
{
    return ": ";
}

// Its complete and base object constructors (C1, C2) are one function with two names.
struct Counted {
    int n;
    explicit Counted(int x);
};

Counted::Counted(int x) : n(x + 0) {}

int cleanup_counted(int x)
{
    return Counted(x).n;
}

int cleanup_digits(int x)
{
    return static_cast<int>(std::to_string(x).size());
}

// gcc turns this switch into a table, CSWTCH.N, N counting the declarations of the file.
int cleanup_kind(int x)
{
    switch (x) {
    case 0: return 11;
    case 1: return 22;
    case 2: return 37;
    case 3: return 41;
    case 4: return 53;
    case 5: return 67;
    default: return 0;
    }
}
