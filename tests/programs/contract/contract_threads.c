/* 8 threads call contract_roundtrip until stdin closes and count results that are not the
 * input (a call that mixed the old and new format), and which format contract_encode used. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static int (*roundtrip)(int), (*encode)(int);
static int stop;
static long calls, mixed, v1, v2;

static void *run(void *arg)
{
    long n = 0, bad = 0, old = 0, new = 0;
    for (int x = (int)(long)arg; !__atomic_load_n(&stop, __ATOMIC_RELAXED); x = (x + 7) % 100000) {
        if (roundtrip(x) != x)
            bad++;
        if (encode(1) == 2)
            old++;
        else
            new++;
        n++;
    }
    __atomic_add_fetch(&calls, n, __ATOMIC_RELAXED);
    __atomic_add_fetch(&mixed, bad, __ATOMIC_RELAXED);
    __atomic_add_fetch(&v1, old, __ATOMIC_RELAXED);
    __atomic_add_fetch(&v2, new, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv)
{
    void *lib = argc == 2 ? dlopen(argv[1], RTLD_NOW) : NULL;
    if (!lib)
        return 2;
    roundtrip = (int (*)(int))dlsym(lib, "contract_roundtrip");
    encode = (int (*)(int))dlsym(lib, "contract_encode");
    printf("ready\n");
    fflush(stdout);
    pthread_t t[8];
    for (long i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, run, (void *)i);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    printf("calls %ld mixed %ld v1 %ld v2 %ld\n", calls, mixed, v1, v2);
    return 0;
}
