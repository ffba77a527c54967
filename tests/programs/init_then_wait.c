/*
 * init_then_wait: a server whose CUDA init already ran (and failed or not) before anyone
 * attached: dlopen GGML_CUDA_LIB, ask ggml for its device count (ggml_cuda_init runs once),
 * print "devices N", then wait for a signal. Attach tests read what the init left.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
    const char *lib = getenv("GGML_CUDA_LIB");
    void *h = lib ? dlopen(lib, RTLD_NOW) : NULL;
    if (!h) {
        fprintf(stderr, "init_then_wait: %s\n", dlerror());
        return 2;
    }
    int (*count)(void) = (int (*)(void))dlsym(h, "ggml_backend_cuda_get_device_count");
    printf("devices %d\n", count ? count() : -1);
    fflush(stdout);
    for (;;)
        pause();
}
