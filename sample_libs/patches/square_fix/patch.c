/* basic_square, fixed: saturate at INT_MAX instead of overflowing. */
#include <limits.h>

int basic_square_fixed(int x)
{
    long long r = (long long)x * x;
    return r > INT_MAX ? INT_MAX : (int)r;
}
