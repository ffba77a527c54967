/*
 * looper: a long-running process (a server) that keeps calling into the CUDA driver:
 * every LOOPER_TICK_MS (default 100) it dlopen()s libcuda.so.1, looks up cuInit and
 * calls it, and prints "tick N". A breakpoint left in its code by a debugger that died
 * kills it with SIGTRAP at the next tick: attach tests use it to prove it runs on.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(void)
{
    const char *ms = getenv("LOOPER_TICK_MS");
    long tick_ms = ms ? atol(ms) : 100;
    struct timespec ts = {tick_ms / 1000, (tick_ms % 1000) * 1000000L};
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
