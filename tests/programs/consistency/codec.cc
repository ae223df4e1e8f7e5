/* The class of row 4: enc and dec agree on a format (v1: 2x and y/2), roundtrip uses both
 * with time in between; the patch (codec_v2.cc) replaces the two members. */
#include "codec.h"

#include "consistency.h"

Codec::~Codec() = default;

__attribute__((noipa)) int Codec::enc(int x)
{
    return 2 * x;
}

__attribute__((noipa)) int Codec::dec(int y)
{
    return y / 2;
}

__attribute__((noipa)) int Codec::roundtrip(int x, int *version)
{
    int y = enc(x);
    for (volatile int i = 0; i < L_DELAY; i++)
        ;
    *version = y == 2 * x ? 1 : 2;
    return dec(y);
}

Codec *make_codec()
{
    return new Codec;
}
