/* Eight threads calling getenv in a loop while getenv_fix.c is applied and reverted: each call
 * must give the old or the fixed answer, never anything else. A line on stdin prints which answer
 * the main thread gets now; "quit" (or the end of stdin) stops the threads, prints the counts and
 * exits with status 1 if any call failed. */

#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 8
#define NAME "ULP_GETENV_DEMO"
#define VALUE "a=b"
/* The name with '=' that the old getenv finds inside VALUE ("b") and the fixed one refuses. */
#define NAME_EQ NAME "=a"

static atomic_bool stop;
static atomic_ulong calls, old_answers, new_answers, failed;

/* 0: the old answer, 1: the fixed one, -1: neither. */
static int answer(void)
{
    const char *plain = getenv(NAME);
    if (plain == NULL || strcmp(plain, VALUE) != 0)
        return -1;
    const char *eq = getenv(NAME_EQ);
    if (eq == NULL)
        return 1;
    return strcmp(eq, "b") == 0 ? 0 : -1;
}

static void *caller(void *unused)
{
    (void)unused;
    unsigned long n = 0, old = 0, fixed = 0, bad = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        int a = answer();
        n++;
        old += a == 0;
        fixed += a == 1;
        bad += a < 0;
    }
    atomic_fetch_add(&calls, n);
    atomic_fetch_add(&old_answers, old);
    atomic_fetch_add(&new_answers, fixed);
    atomic_fetch_add(&failed, bad);
    return NULL;
}

int main(void)
{
    if (setenv(NAME, VALUE, 1) != 0) {
        perror("setenv");
        return 2;
    }
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&threads[i], NULL, caller, NULL) != 0) {
            fputs("pthread_create failed\n", stderr);
            return 2;
        }
    printf("ready: pid %d, %d threads calling getenv(\"%s\")\n", (int)getpid(), THREADS, NAME_EQ);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL && strcmp(line, "quit\n") != 0) {
        int a = answer();
        printf("%s\n", a == 0 ? "old: \"b\"" : a == 1 ? "new: NULL" : "failed");
        fflush(stdout);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    printf("calls %lu old %lu new %lu failed %lu\n", atomic_load(&calls), atomic_load(&old_answers),
           atomic_load(&new_answers), atomic_load(&failed));
    return atomic_load(&failed) == 0 ? 0 : 1;
}
