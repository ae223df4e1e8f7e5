/* What library L (consistency.c) and library M (middle.c) offer their callers. */
#ifndef CONSISTENCY_H
#define CONSISTENCY_H

#include <pthread.h>

#ifdef __cplusplus
extern "C" {
#endif

#define L_DELAY 50000

struct l_ops {
    int (*roundtrip)(int x, int *version);
    int (*enc)(int x);
    int (*dec)(int y);
};

struct l_job {
    int x;
    int result, version;
};

enum { L_VFORK_EXIT, L_VFORK_EXEC, L_POSIX_SPAWN };

int l_encode(int x);
int l_decode(int y);
int l_roundtrip(int x, int *version);
int l_version(void);
const struct l_ops *l_ops(void);
int l_spawn(pthread_t *thread, struct l_job *job);
int l_install_handler(int sig);
void l_signal_counts(long out[4]);
int produce(int x);
int produce_inlined(int x);
int l_call_back(void (*cb)(void));
int l_child_roundtrip(int x, int *version, int how);
void l_between_calls(void);

/* Library M. */
int m_apply(int y, int (*cb)(int));
void m_hold(int entered_fd, int release_fd);

#ifdef __cplusplus
}
#endif

#endif
