/*
 * A process that must not notice being stopped, called into and let go: the main thread keeps
 * a value in its red zone and in %xmm8 across a long spin, one thread sleeps in nanosleep(),
 * one blocks in read(). On end of stdin it prints what it saw: EINTRs, corrupted values, and
 * how many SIGUSR1 it handled.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1;
static int eintr_sleep, eintr_read, corrupt;
static int pipefd[2];

static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}

/* Called from outside by the tests. */
long victim_add(long a, long b)
{
    return a + b;
}

long victim_hang(void)
{
    for (;;)
        pause();
}

/* SIGUSR1 is for the main thread: a handler run in the sleeper would end its nanosleep()
 * with EINTR by itself, whatever a tracer does. */
static void leave_usr1_to_main(void)
{
    sigset_t usr1_only;
    sigemptyset(&usr1_only);
    sigaddset(&usr1_only, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1_only, NULL);
}

static void *sleeper(void *arg)
{
    (void)arg;
    leave_usr1_to_main();
    for (;;) {
        struct timespec t = {0, 20 * 1000 * 1000};
        if (nanosleep(&t, NULL) != 0 && errno == EINTR)
            eintr_sleep++;
    }
    return NULL;
}

static void *reader(void *arg)
{
    (void)arg;
    leave_usr1_to_main();
    for (;;) {
        char c;
        ssize_t n = read(pipefd[0], &c, 1);
        if (n < 0 && errno == EINTR)
            eintr_read++;
        if (n == 1)
            return NULL;
    }
}

/* A leaf: the red zone below %rsp is ours to use, and nothing may change it or %xmm8. */
static __attribute__((noinline)) int values_survive_a_spin(void)
{
    int bad;
    __asm__ volatile("movabs $0x1122334455667788, %%rax\n\t"
                     "movq %%rax, -64(%%rsp)\n\t"
                     "movq %%rax, %%xmm8\n\t"
                     "movl $3000000, %%ecx\n"
                     "1:\n\t"
                     "decl %%ecx\n\t"
                     "jnz 1b\n\t"
                     "xorl %0, %0\n\t"
                     "movq %%xmm8, %%rdx\n\t"
                     "cmpq %%rax, %%rdx\n\t"
                     "jne 2f\n\t"
                     "cmpq %%rax, -64(%%rsp)\n\t"
                     "je 3f\n"
                     "2:\n\t"
                     "movl $1, %0\n"
                     "3:"
                     : "=r"(bad)
                     :
                     : "rax", "rcx", "rdx", "xmm8", "memory", "cc");
    return bad;
}

static void *checks(void *arg)
{
    (void)arg;
    printf("ready\n");
    fflush(stdout);
    struct pollfd in = {.fd = 0, .events = POLLIN};
    for (;;) {
        int ready = poll(&in, 1, 0);
        if (ready > 0)
            break;
        /* A SIGUSR1 handled while the thread is in poll() ends it with EINTR, as the kernel
         * must (no restart after a handler): that is no sign of a tracer. */
        if (ready < 0 && errno != EINTR)
            exit(1);
        corrupt += values_survive_a_spin();
    }
    if (write(pipefd[1], "q", 1) != 1)
        exit(1);
    printf("eintr_sleep=%d eintr_read=%d corrupt=%d usr1=%d\n", eintr_sleep, eintr_read,
           corrupt, (int)usr1);
    exit(0);
}

int main(void)
{
    signal(SIGUSR1, on_usr1);
    if (pipe(pipefd) != 0)
        return 1;
    pthread_t s, r;
    pthread_create(&s, NULL, sleeper, NULL);
    pthread_create(&r, NULL, reader, NULL);
    checks(NULL);
    return 0;
}
