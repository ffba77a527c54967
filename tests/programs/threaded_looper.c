/*
 * threaded_looper: looper with a second, idle thread. The main thread calls into the CUDA
 * driver every LOOPER_TICK_MS (default 100) and prints "tick N"; the other thread only
 * waits, and prints "thread TID" (its own id) first. `gdb-cudashim attach TID` with that
 * idle thread's id once killed the process with SIGTRAP: gdb watched "process TID" while
 * the breakpoints it set were hit by the main thread.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void *idle(void *arg)
{
    printf("thread %d\n", (int)gettid());
    fflush(stdout);
    for (;;)
        pause();
    return arg;
}

int main(void)
{
    const char *ms = getenv("LOOPER_TICK_MS");
    long tick_ms = ms ? atol(ms) : 100;
    struct timespec ts = {tick_ms / 1000, (tick_ms % 1000) * 1000000L};
    pthread_t t;
    pthread_create(&t, NULL, idle, NULL);
    for (unsigned long n = 0;; n++) {
        void *h = dlopen("libcuda.so.1", RTLD_NOW);
        if (h) {
            int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
            if (init)
                init(0);
            dlclose(h);
        }
        printf("tick %lu\n", n);
        fflush(stdout);
        nanosleep(&ts, NULL);
    }
}
