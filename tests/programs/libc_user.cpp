// A program that uses the C library's harder corners, to run on a prepared libc under the
// runtime (tests/test_prepared_libc.py): an exception thrown through qsort and a longjmp out of
// it, children made by vfork, posix_spawn and fork (in a threaded process), coroutines switched
// with swapcontext, the next malloc of an interposer. Each command prints what it saw; `wait`
// prints "ready" and blocks in read(2) on stdin, inside a tracked call, until a line arrives.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <atomic>
#include <csetjmp>
#include <dlfcn.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

extern char **environ;

static int by_value(const void *a, const void *b)
{
    int x = *static_cast<const int *>(a), y = *static_cast<const int *>(b);
    return (x > y) - (x < y);
}

static int comparisons;

static int by_value_or_throw(const void *a, const void *b)
{
    if (++comparisons == 500)
        throw std::runtime_error("thrown by the comparator");
    return by_value(a, b);
}

static void sort(int (*compare)(const void *, const void *))
{
    int values[1000];
    for (int i = 0; i < 1000; i++)
        values[i] = (i * 7919) % 1000;
    qsort(values, 1000, sizeof values[0], compare);
    for (int i = 0; i < 1000; i++)
        if (values[i] != i)
            exit(3);
}

static void qsort_throw()
{
    try {
        sort(by_value_or_throw);
        std::puts("not thrown");
    } catch (const std::runtime_error &e) {
        std::printf("caught after %d comparisons: %s\n", comparisons, e.what());
    }
    sort(by_value);
}

static jmp_buf out_of_qsort;

static int by_value_or_jump(const void *a, const void *b)
{
    if (++comparisons == 500)
        longjmp(out_of_qsort, 1);
    return by_value(a, b);
}

static void qsort_longjmp()
{
    comparisons = 0;
    if (setjmp(out_of_qsort) == 0) {
        sort(by_value_or_jump);
        std::puts("not jumped");
    } else {
        std::printf("jumped out after %d comparisons\n", comparisons);
    }
    sort(by_value);
}

static int status_of(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

static void spawn()
{
    char echo[] = "/bin/echo", word[] = "spawned";
    char *argv[] = {echo, word, nullptr};
    pid_t pid;
    if (posix_spawn(&pid, echo, nullptr, nullptr, argv, environ) != 0)
        exit(4);
    std::printf("posix_spawn: %d\n", status_of(pid));
    std::fflush(stdout);
    pid = vfork();
    if (pid == 0) {
        execve(echo, argv, environ);
        _exit(127);
    }
    std::printf("vfork execve: %d\n", status_of(pid));
    pid = vfork();
    if (pid == 0)
        _exit(getpid() == getppid() ? 1 : 7);  // a tracked call in the child, then _exit
    std::printf("vfork _exit: %d\n", status_of(pid));
}

static std::atomic<bool> stop;

static void *churn(void *)
{
    char text[64];
    while (!stop) {
        void *p = std::malloc(100);
        std::snprintf(text, sizeof text, "%p", p);
        std::free(p);
    }
    return nullptr;
}

static void *nothing(void *arg) { return arg; }

static void fork_threaded()
{
    pthread_t threads[4];
    for (auto &t : threads)
        pthread_create(&t, nullptr, churn, nullptr);
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            // Only this thread exists here: malloc, stdio and a new thread still work.
            char *p = static_cast<char *>(std::malloc(4096));
            std::snprintf(p, 4096, "child %d", i);
            pthread_t t;
            void *back = nullptr;
            if (pthread_create(&t, nullptr, nothing, p) != 0 || pthread_join(t, &back) != 0)
                _exit(5);
            _exit(back == p && std::strlen(p) > 6 ? 0 : 6);
        }
        ok += status_of(pid) == 0;
    }
    stop = true;
    for (auto &t : threads)
        pthread_join(t, nullptr);
    std::printf("forked children ok: %d\n", ok);
}

static ucontext_t main_context, coroutine_context[2];
static long coroutine_total[2];

static void coroutine(int n)
{
    char text[32];
    for (int i = 0; i < 1000; i++) {
        std::snprintf(text, sizeof text, "%d", i);
        coroutine_total[n] += static_cast<long>(std::strlen(text));
        swapcontext(&coroutine_context[n], &main_context);
    }
}

static void coroutines()
{
    static char stacks[2][65536];
    for (int n = 0; n < 2; n++) {
        getcontext(&coroutine_context[n]);
        coroutine_context[n].uc_stack.ss_sp = stacks[n];
        coroutine_context[n].uc_stack.ss_size = sizeof stacks[n];
        coroutine_context[n].uc_link = &main_context;
        makecontext(&coroutine_context[n], reinterpret_cast<void (*)()>(coroutine), 1, n);
    }
    for (int i = 0; i < 1000; i++)
        for (int n = 0; n < 2; n++)
            swapcontext(&main_context, &coroutine_context[n]);
    std::printf("coroutines: %ld %ld\n", coroutine_total[0], coroutine_total[1]);
}

static void next_malloc()
{
    using lookup = void *(*)(const char *);
    auto next = reinterpret_cast<lookup>(dlsym(RTLD_DEFAULT, "interposer_next"));
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    if (!next || !libc)
        exit(8);
    Dl_info info;
    void *found = next("malloc");
    std::printf("next malloc is libc's: %s\n", found == dlsym(libc, "malloc") ? "yes" : "no");
    std::printf("next malloc in: %s\n", dladdr(found, &info) ? info.dli_fname : "?");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *command = argv[i];
        if (!std::strcmp(command, "qsort-throw"))
            qsort_throw();
        else if (!std::strcmp(command, "qsort-longjmp"))
            qsort_longjmp();
        else if (!std::strcmp(command, "sort"))
            sort(by_value);
        else if (!std::strcmp(command, "spawn"))
            spawn();
        else if (!std::strcmp(command, "fork-threaded"))
            fork_threaded();
        else if (!std::strcmp(command, "coroutines"))
            coroutines();
        else if (!std::strcmp(command, "next-malloc"))
            next_malloc();
        else if (!std::strcmp(command, "wait")) {
            std::puts("ready");
            std::fflush(stdout);
            char line[8];
            if (read(0, line, sizeof line) <= 0)
                return 9;
        } else {
            return 2;
        }
        std::fflush(stdout);
    }
    return 0;
}
