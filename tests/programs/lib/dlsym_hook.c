/*
 * dlsym_hook.so: an LD_PRELOAD that interposes dlsym(), as GPU-sharing shims such as
 * HAMi-core do, and answers lookups of cuMemPool* with a function of its own even when
 * the driver has none. Tests use it to check that lookups stopped in an interposed dlsym
 * are watched to their return, never answered from the driver's symbol tables.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>

static int hook_not_supported(void) { return 801; /* CUDA_ERROR_NOT_SUPPORTED */ }

void *dlsym(void *handle, const char *name)
{
    static void *(*real)(void *, const char *);
    if (!real)
        real = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!real)
        real = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    void *found = real(handle, name);
    if (!found && name && strncmp(name, "cuMemPool", 9) == 0)
        return (void *)hook_not_supported;
    return found;
}
