/* A program that uses a CUDA runtime directly (no ggml): dlopen(argv[1]) -- NVIDIA's
 * libcudart.so.13 in the tests -- then cudaGetDeviceCount, printing a failure the way ggml
 * does. What a CUDA 13 application meets under a shim built for CUDA 12. RT_PROBE_REPEAT=N asks
 * N more times. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "libcudart.so.13";
    void *rt = dlopen(path, RTLD_NOW);
    if (!rt) {
        fprintf(stderr, "rt_probe: %s\n", dlerror());
        return 3;
    }
    int (*count)(int *) = (int (*)(int *))dlsym(rt, "cudaGetDeviceCount");
    const char *(*text)(int) = (const char *(*)(int))dlsym(rt, "cudaGetErrorString");
    if (!count || !text) {
        fprintf(stderr, "rt_probe: %s has no cudaGetDeviceCount/cudaGetErrorString\n", path);
        return 3;
    }
    int n = 0, err = count(&n);
    /* RT_PROBE_REPEAT=N: ask N more times, as ggml's memory fitting asks its device queries */
    const char *repeat = getenv("RT_PROBE_REPEAT");
    for (long i = repeat ? atol(repeat) : 0; i > 0 && !err; i--)
        err = count(&n);
    if (err)
        fprintf(stderr, "rt_probe: failed to initialize CUDA: %s\n", text(err));
    printf("rt_probe: cuda devices: %d\n", n);
    return 0;
}
