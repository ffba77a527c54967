/*
 * threaded_init: a CUDA init that starts threads, as NVIDIA's driver does inside cuInit.
 * Its cudaGetDeviceCount (a window function) starts two threads that look symbols up and
 * write() while it runs, then fails as ggml reports it. catch-init-error must still see
 * the call return and close the window behind it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20; i++) {
        dlsym(RTLD_DEFAULT, "cuWorkerLookup");
        poll(NULL, 0, 1);
    }
    const char msg[] = "worker: a driver thread writes\n";
    write(2, msg, sizeof msg - 1);
    poll(NULL, 0, 50);
    return NULL;
}

__attribute__((noinline)) int cudaGetDeviceCount(int *count)
{
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&threads[i], NULL, worker, NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    fprintf(stderr, "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected\n");
    *count = 0;
    return 100; /* cudaErrorNoDevice */
}

int main(void)
{
    int n = -1;
    int r = cudaGetDeviceCount(&n);
    for (int i = 0; i < 1000; i++)
        fprintf(stderr, "threaded_init: after init %d\n", i);
    printf("threaded_init: result %d, devices %d\n", r, n);
    return 0;
}
