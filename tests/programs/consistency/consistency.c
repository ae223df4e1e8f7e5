/* Library L of the consistency tests (tests/test_consistency.py): two static functions bound
 * by an agreement, enc and dec (v1: 2x and y/2; the patch: 3x+1 and (y-1)/3), reached by every
 * way into the library the tests exercise. A call that runs one version of enc and another of
 * dec returns something other than its argument (for x >= 1). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "consistency.h"

/* noipa: every call goes through the function's patched entry, no clone or inlined copy. */
__attribute__((noipa)) static int enc(int x)
{
    return 2 * x;
}

__attribute__((noipa)) static int dec(int y)
{
    return y / 2;
}

/* Time between the two halves, for a commit to land in. */
static void delay(void)
{
    for (volatile int i = 0; i < L_DELAY; i++)
        ;
}

static int version_of(int x, int y)
{
    return y == 2 * x ? 1 : 2;
}

__attribute__((noipa)) static int roundtrip(int x, int *version)
{
    int y = enc(x);
    delay();
    *version = version_of(x, y);
    return dec(y);
}

int l_encode(int x)
{
    return enc(x);
}

int l_decode(int y)
{
    return dec(y);
}

int l_roundtrip(int x, int *version)
{
    return roundtrip(x, version);
}

int l_version(void)
{
    return version_of(1, enc(1));
}

/* Row 1: a table of static functions, entered through their addresses. */
static const struct l_ops ops = {roundtrip, enc, dec};

const struct l_ops *l_ops(void)
{
    return &ops;
}

/* What a control waits between its two calls: long enough that most commits land while some
 * thread is between them, so that a control that sees no mix means a broken test. (A sleep is
 * async-signal-safe: the signal handler's control calls it too.) */
void l_between_calls(void)
{
    struct timespec pause = {0, 300000};
    nanosleep(&pause, NULL);
}

/* Row 2: a thread whose start routine is a static function of the library. */
static void *job_start(void *arg)
{
    struct l_job *job = arg;
    job->result = roundtrip(job->x, &job->version);
    return job;
}

int l_spawn(pthread_t *thread, struct l_job *job)
{
    return pthread_create(thread, NULL, job_start, job);
}

/* Row 3: a signal handler of the library, run on threads that are not inside it. */
static long sig_counts[4]; /* calls, mixed, v1, v2 */
static int sig_x = 1;

static void handler(int sig)
{
    (void)sig;
    int x = __atomic_add_fetch(&sig_x, 1, __ATOMIC_RELAXED) % 100000 + 1, version;
    int r = roundtrip(x, &version);
    __atomic_add_fetch(&sig_counts[0], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&sig_counts[1], r != x, __ATOMIC_RELAXED);
    __atomic_add_fetch(&sig_counts[1 + version], 1, __ATOMIC_RELAXED);
}

int l_install_handler(int sig)
{
    struct sigaction sa = {.sa_handler = handler, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

void l_signal_counts(long out[4])
{
    for (int i = 0; i < 4; i++)
        out[i] = __atomic_load_n(&sig_counts[i], __ATOMIC_RELAXED);
}

/* Row 5: a tail call into the prepared library M, which calls dec back. */
int produce(int x)
{
    return m_apply(enc(x), dec);
}

/* Row 5 again, against the leaf rule (ulp_build/prepare/leaves.py): enc's half is its own code
 * (written out, no call of enc), and dec is reached only through M, by a pointer the library
 * handed out before. A rule that let a leaf call other libraries would leave this function
 * untracked, and M's call of dec, entered tracked by a thread holding no universe of L, would
 * run a newer dec than the half already done. */
static int (*volatile handed_dec)(int) = dec;

int produce_inlined(int x)
{
    return m_apply(2 * x, handed_dec);
}

/* Row 6: a tracked call that hands control to `cb`, which may never return (longjmp, an
 * exception, pthread_exit, cancellation). */
int l_call_back(void (*cb)(void))
{
    int y = enc(1);
    cb();
    return dec(y);
}

/* Row 7: a child made inside a tracked call, between enc and dec. */
static pid_t child(int how)
{
    static char *const argv[] = {"true", NULL};
    pid_t pid = -1;
    if (how == L_POSIX_SPAWN) {
        extern char **environ;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) != 0)
            return -1;
        return pid;
    }
    pid = vfork();
    if (pid == 0) {
        if (how == L_VFORK_EXEC)
            execve("/bin/true", argv, NULL);
        _exit(0);
    }
    return pid;
}

int l_child_roundtrip(int x, int *version, int how)
{
    int y = enc(x);
    pid_t pid = child(how);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || status != 0)
        return -1;
    delay();
    *version = version_of(x, y);
    return dec(y);
}
