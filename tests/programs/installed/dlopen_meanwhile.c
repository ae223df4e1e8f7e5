/* Loads the library argv[1] and makes its first tracked call (report()) while another thread
 * keeps loading and unloading argv[2]: the installed patches are applied, and the patch object
 * loaded, while the loader is busy in another thread. Prints report()'s answer. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

static atomic_int stop;

static void *churn(void *other)
{
    while (!atomic_load(&stop)) {
        void *h = dlopen(other, RTLD_NOW | RTLD_LOCAL);
        if (h)
            dlclose(h);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    (void)argc;
    pthread_t thread;
    pthread_create(&thread, NULL, churn, argv[2]);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    int (*report)(void) = lib ? (int (*)(void))dlsym(lib, "report") : NULL;
    if (!report) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    printf("%d\n", report());
    atomic_store(&stop, 1);
    pthread_join(thread, NULL);
    return 0;
}
