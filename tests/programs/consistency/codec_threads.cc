// The 8-thread driver of row 4: `codec_threads MODE` calls the codec's virtual methods until
// stdin closes: "virtual" one roundtrip call, "virtual-split" (the control) enc and dec as
// two virtual calls. Prints the counts as threads.c does.
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "consistency.h"

static long counts[4];  // calls, mixed, v1, v2
static int stop, split;
static Codec *codec;

static void *run(void *arg)
{
    long mine[4] = {0, 0, 0, 0};
    int x = (int)(long)arg * 1000 + 1;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        int version, r;
        if (split) {
            int y = codec->enc(x);
            for (volatile int i = 0; i < L_DELAY; i++)
                ;
            version = y == 2 * x ? 1 : 2;
            r = codec->dec(y);
        } else {
            r = codec->roundtrip(x, &version);
        }
        mine[0]++;
        mine[1] += r != x;
        mine[1 + version]++;
        x = x % 100000 + 7;
        if (mine[0] % 4 == 0) {  // as threads.c: a sleeping thread is stopped at once
            struct timespec pause = {0, 100000};
            nanosleep(&pause, nullptr);
        }
    }
    for (int i = 0; i < 4; i++)
        __atomic_add_fetch(&counts[i], mine[i], __ATOMIC_RELAXED);
    return nullptr;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    split = strcmp(argv[1], "virtual-split") == 0;
    codec = make_codec();
    printf("ready\n");
    fflush(stdout);
    pthread_t t[8];
    for (long i = 0; i < 8; i++)
        pthread_create(&t[i], nullptr, run, (void *)i);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], nullptr);
    printf("calls %ld mixed %ld v1 %ld v2 %ld errors 0\n", counts[0], counts[1], counts[2],
           counts[3]);
    delete codec;
    return 0;
}
