/*
 * A long-running process for the live patching tests: it loads a basic-like library with
 * dlopen (argv[1], or later with `load PATH`) and answers one line per command on stdin, so a
 * test can patch it between two questions. Besides, a thread sleeps in nanosleep() and another
 * blocks in read() for the whole run, counting EINTRs, and SIGUSR1 is counted.
 *
 *   load PATH      dlopen the library           square N / add A B / scaled X / calls
 *   hold           a thread enters basic_apply, whose callback waits inside the library
 *   release        the callback calls basic_square(3) from inside, the thread prints it
 *   stats          eintr and signal counts      quit
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int (*square)(int), (*add)(int, int), (*scaled)(int);
static int (*apply)(int (*)(int), int);
static int *calls;
static sem_t entered, released;
static pthread_t holder;
static volatile int stop;
static int eintr, pipefd[2];
static volatile sig_atomic_t usr1;

static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}

static void *need(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "patchee: %s\n", dlerror());
        exit(2);
    }
    return p;
}

static void load(const char *path)
{
    void *lib = dlopen(path, RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "patchee: %s\n", dlerror());
        exit(2);
    }
    square = need(lib, "basic_square");
    add = need(lib, "basic_add");
    scaled = need(lib, "basic_scaled");
    apply = need(lib, "basic_apply");
    calls = need(lib, "basic_calls");
}

static int waiting(int x)
{
    sem_post(&entered);
    while (sem_wait(&released) != 0)
        ;
    return square(x);
}

static void *hold(void *arg)
{
    (void)arg;
    int r = apply(waiting, 3);
    printf("held %d\n", r - 1);
    fflush(stdout);
    return NULL;
}

static void *sleeper(void *arg)
{
    (void)arg;
    while (!stop) {
        struct timespec t = {0, 50 * 1000 * 1000};
        if (nanosleep(&t, NULL) != 0 && errno == EINTR)
            __atomic_add_fetch(&eintr, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void *reader(void *arg)
{
    (void)arg;
    char c;
    while (read(pipefd[0], &c, 1) != 1)
        if (errno == EINTR)
            __atomic_add_fetch(&eintr, 1, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    sem_init(&entered, 0, 0);
    sem_init(&released, 0, 0);
    if (pipe(pipefd) != 0)
        return 2;
    pthread_t s, r;
    pthread_create(&s, NULL, sleeper, NULL);
    pthread_create(&r, NULL, reader, NULL);
    if (argc > 1)
        load(argv[1]);
    char line[4200], word[32], path[4096];
    int a, b;
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "load %4095s", path) == 1) {
            load(path);
            printf("loaded\n");
        } else if (sscanf(line, "square %d", &a) == 1) {
            printf("%d\n", square(a));
        } else if (sscanf(line, "add %d %d", &a, &b) == 2) {
            printf("%d\n", add(a, b));
        } else if (sscanf(line, "scaled %d", &a) == 1) {
            printf("%d\n", scaled(a));
        } else if (sscanf(line, "%31s", word) == 1 && !strcmp(word, "calls")) {
            printf("%d\n", *calls);
        } else if (!strcmp(word, "hold")) {
            pthread_create(&holder, NULL, hold, NULL);
            while (sem_wait(&entered) != 0)
                ;
            printf("holding\n");
        } else if (!strcmp(word, "release")) {
            sem_post(&released);
            pthread_join(holder, NULL);
        } else if (!strcmp(word, "stats")) {
            printf("eintr %d usr1 %d\n", eintr, (int)usr1);
        } else if (!strcmp(word, "quit")) {
            break;
        } else {
            printf("? %s", line);
        }
    }
    stop = 1;
    if (write(pipefd[1], "x", 1) != 1)
        return 2;
    pthread_join(s, NULL);
    pthread_join(r, NULL);
    return 0;
}
