/*
 * forward_check: calls the driver API straight through a libcuda.so.1 (no cudart), for
 * checking that the bundled shim's forward mode reaches the same entry points a real
 * driver would be asked for (cuda.h's _v2 names, not the old 32-bit ones).
 *
 *   forward_check LIBCUDA      prints "name rc value" lines
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stddef.h>

typedef int (*init_fn)(unsigned);
typedef int (*get_fn)(int *, int);
typedef int (*total_fn)(size_t *, int);
typedef int (*retain_fn)(void **, int);
typedef int (*release_fn)(int);
typedef int (*set_fn)(void *);
typedef int (*meminfo_fn)(size_t *, size_t *);

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: forward_check LIBCUDA\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "forward_check: %s\n", dlerror());
        return 3;
    }
    int dev = -1, rc;
    size_t total = 0, free_b = 0, mem_total = 0;
    void *ctx = NULL;
    printf("cuInit %d\n", ((init_fn)dlsym(h, "cuInit"))(0));
    rc = ((get_fn)dlsym(h, "cuDeviceGet"))(&dev, 0);
    printf("cuDeviceGet %d %d\n", rc, dev);
    rc = ((total_fn)dlsym(h, "cuDeviceTotalMem_v2"))(&total, dev);
    printf("cuDeviceTotalMem_v2 %d %zu\n", rc, total);
    printf("cuDevicePrimaryCtxRetain %d\n", ((retain_fn)dlsym(h, "cuDevicePrimaryCtxRetain"))(&ctx, dev));
    printf("cuCtxSetCurrent %d\n", ((set_fn)dlsym(h, "cuCtxSetCurrent"))(ctx));
    rc = ((meminfo_fn)dlsym(h, "cuMemGetInfo_v2"))(&free_b, &mem_total);
    printf("cuMemGetInfo_v2 %d %zu\n", rc, mem_total);
    printf("cuDevicePrimaryCtxRelease_v2 %d\n", ((release_fn)dlsym(h, "cuDevicePrimaryCtxRelease_v2"))(dev));
    return 0;
}
