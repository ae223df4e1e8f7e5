// The command-driven program of tests/test_consistency.py (rows 5, 6 and 7): one command a
// line on stdin, one answer a line on stdout. A roundtrip answers its version (1 or 2) or
// "mixed".
//   jump HOW     under a 16 KiB frame, a tracked call of L whose callback leaves it: HOW is
//                longjmp, siglongjmp, _longjmp (all __longjmp_chk when built fortified),
//                throw, or builtin (__builtin_longjmp, which no runtime can see)
//   same, deep   a roundtrip under the same 16 KiB frame (the abandoned call's depth) or
//                under a 32 KiB one (deeper than it)
//   thread       a roundtrip in a new thread
//   exit         a thread leaves a tracked call by pthread_exit
//   block, unblock, cancel
//                a thread waits inside a tracked call; it returns, or is cancelled there
//   hold, hold inlined, release
//                a thread's produce(5) (or produce_inlined(5)) stops in M between L's
//                enc and dec; its result
//   fork, child, reap
//                a child process (of this thread) that makes a roundtrip per `child`
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <pthread.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "consistency.h"

static jmp_buf env;
static sigjmp_buf senv;
static void *benv[5];
static std::string how;

static void leave()
{
    if (how == "longjmp")
        longjmp(env, 1);
    if (how == "siglongjmp")
        siglongjmp(senv, 1);
    if (how == "_longjmp")
        _longjmp(env, 1);
    if (how == "builtin")
        __builtin_longjmp(benv, 1);
    throw 1;
}

static std::string answer(int r, int x, int version)
{
    return r == x ? std::to_string(version) : "mixed";
}

// One function for the abandoned call and the call at its depth, so both have the same
// return slot.
__attribute__((noinline)) static std::string at16k(bool jump)
{
    volatile char frame[16384];
    frame[0] = 0;
    std::string out = "jumped";
    if (!jump) {
        int version = 0, r = l_roundtrip(5, &version);
        out = answer(r, 5, version);
    } else if (how == "longjmp") {
        if (setjmp(env) == 0)
            l_call_back(leave);
    } else if (how == "_longjmp") {
        if (_setjmp(env) == 0)
            l_call_back(leave);
    } else if (how == "siglongjmp") {
        if (sigsetjmp(senv, 1) == 0)
            l_call_back(leave);
    } else if (how == "builtin") {
        if (__builtin_setjmp(benv) == 0)
            l_call_back(leave);
    } else {
        try {
            l_call_back(leave);
        } catch (int) {
        }
    }
    frame[1] = 0;
    return out;
}

__attribute__((noinline)) static std::string at32k()
{
    volatile char frame[32768];
    frame[0] = 0;
    int version = 0, r = l_roundtrip(5, &version);
    frame[1] = 0;
    return answer(r, 5, version);
}

static void *roundtrip_thread(void *out)
{
    int version = 0, r = l_roundtrip(5, &version);
    *static_cast<std::string *>(out) = answer(r, 5, version);
    return nullptr;
}

static void exit_now()
{
    pthread_exit(nullptr);
}

static void *exit_thread(void *)
{
    l_call_back(exit_now);
    return nullptr;  // never reached
}

static int blocked[2], entered[2];

static void wait_inside()
{
    char c = 'i';
    if (write(entered[1], &c, 1) != 1 || read(blocked[0], &c, 1) != 1)
        _exit(3);
}

static void *block_thread(void *)
{
    l_call_back(wait_inside);
    return nullptr;
}

static int held_result;

static void *hold_thread(void *produce_function)
{
    held_result = reinterpret_cast<int (*)(int)>(produce_function)(5);
    return nullptr;
}

static pid_t child_pid;
static int child_in[2], child_out[2];

static void child_loop()
{
    // The parent's ends: with this copy open, the child would never see the end of its input.
    close(child_in[1]);
    close(child_out[0]);
    char c;
    while (read(child_in[0], &c, 1) == 1) {
        int version = 0, r = l_roundtrip(5, &version);
        char a = r == 5 ? static_cast<char>('0' + version) : 'm';
        if (write(child_out[1], &a, 1) != 1)
            break;
    }
    _exit(0);
}

static std::string command(const std::string &line)
{
    static pthread_t worker;
    std::string word = line.substr(0, line.find(' '));
    if (word == "jump") {
        how = line.substr(5);
        return at16k(true);
    }
    if (word == "same")
        return at16k(false);
    if (word == "deep")
        return at32k();
    if (word == "thread") {
        std::string out;
        pthread_create(&worker, nullptr, roundtrip_thread, &out);
        pthread_join(worker, nullptr);
        return out;
    }
    if (word == "exit") {
        pthread_create(&worker, nullptr, exit_thread, nullptr);
        pthread_join(worker, nullptr);
        return "exited";
    }
    char c = 'r';
    if (word == "block") {
        pthread_create(&worker, nullptr, block_thread, nullptr);
        return read(entered[0], &c, 1) == 1 ? "blocked" : "error";
    }
    if (word == "unblock") {
        if (write(blocked[1], &c, 1) != 1)
            return "error";
        pthread_join(worker, nullptr);
        return "unblocked";
    }
    if (word == "cancel") {
        void *result = nullptr;
        pthread_cancel(worker);
        pthread_join(worker, &result);
        return result == PTHREAD_CANCELED ? "cancelled" : "not cancelled";
    }
    if (word == "hold") {
        auto f = line == "hold inlined" ? produce_inlined : produce;
        pthread_create(&worker, nullptr, hold_thread, reinterpret_cast<void *>(f));
        return read(entered[0], &c, 1) == 1 ? "held" : "error";
    }
    if (word == "release") {
        if (write(blocked[1], &c, 1) != 1)
            return "error";
        pthread_join(worker, nullptr);
        return std::to_string(held_result);
    }
    if (word == "fork") {
        if (pipe(child_in) != 0 || pipe(child_out) != 0)
            return "error";
        child_pid = fork();
        if (child_pid == 0)
            child_loop();
        close(child_in[0]);
        close(child_out[1]);
        return std::to_string(child_pid);
    }
    if (word == "child") {
        if (write(child_in[1], &c, 1) != 1 || read(child_out[0], &c, 1) != 1)
            return "error";
        return c == 'm' ? "mixed" : std::string(1, c);
    }
    if (word == "reap") {
        int status;
        close(child_in[1]);
        close(child_out[0]);
        return waitpid(child_pid, &status, 0) == child_pid && status == 0 ? "reaped" : "error";
    }
    return "unknown";
}

int main()
{
    if (pipe(blocked) != 0 || pipe(entered) != 0)
        return 2;
    m_hold(entered[1], blocked[0]);
    std::printf("ready\n");
    std::fflush(stdout);
    char line[256];
    while (std::fgets(line, sizeof line, stdin)) {
        line[std::strcspn(line, "\n")] = 0;
        if (std::strcmp(line, "quit") == 0)
            break;
        std::printf("%s\n", command(line).c_str());
        std::fflush(stdout);
    }
    return 0;
}
