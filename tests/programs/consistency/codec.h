/* Row 4: a C++ class of library codec.cc whose virtual methods are entered through the
 * vtable. Only the factory is exported. */
#ifndef CODEC_H
#define CODEC_H

#define EXPORTED __attribute__((visibility("default")))

class Codec {
public:
    virtual ~Codec();
    virtual int roundtrip(int x, int *version);
    virtual int enc(int x);
    virtual int dec(int y);
};

extern "C" EXPORTED Codec *make_codec();

#endif
