/*
 * own_cuinit: discovery the way ollama's older server did it (<= 0.12.3): dlopen libcuda.so.1
 * itself, look up cuInit and call it, print "nvcuda init failure: N" and exit 1 when it fails.
 * No cudart, no ggml: nothing prints what ggml would.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

int main(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {
        fprintf(stderr, "unable to load libcuda.so.1: %s\n", dlerror());
        return 1;
    }
    int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    int rc = init ? init(0) : -1;
    if (rc != 0) {
        fprintf(stderr, "nvcuda init failure: %d\n", rc);
        return 1;
    }
    printf("nvcuda init ok\n");
    return 0;
}
