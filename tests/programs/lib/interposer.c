/*
 * interposer.c: a small interposing shim in the shape of HAMi-core's libvgpu.so, vGPU limiters
 * and API-remoting clients. It is LD_PRELOADed under its own soname (libvgpu.so), hooks dlsym,
 * answers cu* lookups aimed at the driver with wrappers of its own, and every wrapper forwards
 * to the libcuda.so.1 the loader finds (dlopen("libcuda.so.1") + the real dlsym).
 *
 * NVML the same way: nvml* lookups aimed at libnvidia-ml.so.1 get wrappers that forward to it.
 *
 * Built with -DHIDE_EXPORT_TABLE its hook answers NULL for cuGetExportTable and cuGetProcAddress_v2,
 * which the driver exports.
 *
 * Built with -DHANG_IN_HOOK its cuInit waits for ever on a lock of its own.
 *
 * Built with -DLOOP it is the broken kind: its dlsym hook asks the driver's cuGetProcAddress_v2
 * about every cu* name, while a forwarding driver resolves through dlsym, which is the hook again.
 * A real one recurses until the stack runs out; this one gives up LOOP deep, so the run ends.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

typedef int CUresult;
typedef uint64_t u64;
typedef CUresult (*fn6)(u64, u64, u64, u64, u64, u64);
typedef CUresult (*gpa_fn)(const char *, void **, int, u64, int *);

#define EXPORT __attribute__((visibility("default")))
#define NOT_FOUND 302 /* CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND */

static void *real_dlsym(void *handle, const char *name)
{
    static void *(*real)(void *, const char *);
    if (!real)
        real = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!real)
        real = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    return real ? real(handle, name) : NULL;
}

/* The driver behind us: whatever "libcuda.so.1" the loader finds. */
static void *driver(void)
{
    static void *h;
    if (!h)
        h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    return h;
}

static void *next(const char *name)
{
    void *h = driver();
    return h ? real_dlsym(h, name) : NULL;
}

#ifdef HANG_IN_HOOK
/* the stuck kind: cuInit takes a lock it already holds, as HAMi-core's "postinit lock" is never
 * released after a crashed run; the thread waits in the kernel for ever */
#include <pthread.h>
static pthread_mutex_t g_postinit_lock = PTHREAD_MUTEX_INITIALIZER;
static void lock_postinit(const char *name)
{
    if (strcmp(name, "cuInit") == 0) {
        pthread_mutex_lock(&g_postinit_lock);
        pthread_mutex_lock(&g_postinit_lock);
    }
}
#else
#define lock_postinit(name) ((void)0)
#endif

/* A wrapper that passes up to six integer/pointer arguments through unchanged. */
#define FORWARD(name)                                                              \
    EXPORT CUresult name(u64 a, u64 b, u64 c, u64 d, u64 e, u64 f)                 \
    {                                                                              \
        static fn6 real;                                                           \
        lock_postinit(#name);                                                      \
        if (!real)                                                                 \
            real = (fn6)next(#name);                                               \
        return real ? real(a, b, c, d, e, f) : NOT_FOUND;                          \
    }

FORWARD(cuInit)
FORWARD(cuDriverGetVersion)
FORWARD(cuGetExportTable)
FORWARD(cuDeviceGetCount)
FORWARD(cuDeviceGet)
FORWARD(cuDeviceGetAttribute)
FORWARD(cuDeviceGetName)
FORWARD(cuDeviceTotalMem_v2)
FORWARD(cuGetErrorString)
FORWARD(cuMemGetAllocationGranularity)
FORWARD(cuMemCreate)
FORWARD(cuMemRelease)
FORWARD(cuMemAddressReserve)
FORWARD(cuMemAddressFree)
FORWARD(cuMemMap)
FORWARD(cuMemUnmap)
FORWARD(cuMemSetAccess)

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, u64 flags, int *status);

/* NVML, as HAMi-core hooks it: whatever "libnvidia-ml.so.1" the loader finds, behind our wrappers. */
static void *nvml(void)
{
    static void *h;
    if (!h)
        h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_GLOBAL);
    return h;
}

#define FORWARD_NVML(name)                                                         \
    EXPORT int name(u64 a, u64 b, u64 c, u64 d, u64 e, u64 f)                      \
    {                                                                              \
        static fn6 real;                                                           \
        void *h = nvml();                                                          \
        if (!real && h)                                                            \
            real = (fn6)real_dlsym(h, #name);                                      \
        return real ? real(a, b, c, d, e, f) : 999; /* NVML_ERROR_UNKNOWN */       \
    }

FORWARD_NVML(nvmlInit_v2)
FORWARD_NVML(nvmlDeviceGetCount_v2)
FORWARD_NVML(nvmlDeviceGetHandleByIndex_v2)
FORWARD_NVML(nvmlDeviceGetMemoryInfo)

static const struct { const char *name; void *fn; } g_own[] = {
    {"cuInit", (void *)cuInit},
    {"cuDriverGetVersion", (void *)cuDriverGetVersion},
    {"cuGetExportTable", (void *)cuGetExportTable},
    {"cuGetProcAddress_v2", (void *)cuGetProcAddress_v2},
    {"cuDeviceGetCount", (void *)cuDeviceGetCount},
    {"cuDeviceGet", (void *)cuDeviceGet},
    {"cuDeviceGetAttribute", (void *)cuDeviceGetAttribute},
    {"cuDeviceGetName", (void *)cuDeviceGetName},
    {"nvmlInit_v2", (void *)nvmlInit_v2},
    {"nvmlDeviceGetCount_v2", (void *)nvmlDeviceGetCount_v2},
    {"nvmlDeviceGetHandleByIndex_v2", (void *)nvmlDeviceGetHandleByIndex_v2},
    {"nvmlDeviceGetMemoryInfo", (void *)nvmlDeviceGetMemoryInfo},
};

static void *own(const char *name, int cudaVersion)
{
    if (strcmp(name, "cuGetProcAddress") == 0 && cudaVersion >= 12000)
        name = "cuGetProcAddress_v2";
    for (size_t i = 0; i < sizeof g_own / sizeof g_own[0]; i++)
        if (strcmp(g_own[i].name, name) == 0)
            return g_own[i].fn;
    return NULL;
}

/* The driver answers, then the entry points we wrap are swapped for our wrappers. */
EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, u64 flags, int *status)
{
    static gpa_fn real;
    if (!real)
        real = (gpa_fn)next("cuGetProcAddress_v2");
    if (!real)
        return NOT_FOUND;
    CUresult rc = real(symbol, pfn, cudaVersion, flags, status);
    if (rc == 0 && symbol && pfn && *pfn && own(symbol, cudaVersion))
        *pfn = own(symbol, cudaVersion);
    return rc;
}

#ifdef LOOP
static __thread int g_depth;
#endif

EXPORT void *dlsym(void *handle, const char *name)
{
    if (name && strncmp(name, "nvml", 4) == 0 && (handle == nvml() || handle == RTLD_DEFAULT)) {
        void *mine = own(name, 0);
        if (mine)
            return mine;
    }
#ifdef HIDE_EXPORT_TABLE
    /* the broken kind: a hook that answers NULL for what it does not wrap, the driver's exports included */
    if (name && (strcmp(name, "cuGetExportTable") == 0 || strcmp(name, "cuGetProcAddress_v2") == 0))
        return NULL;
#endif
    if (name && strncmp(name, "cu", 2) == 0) {
        void *h = driver();
#ifdef LOOP
        /* the mistake: ask the driver about every cu* name, even from inside the driver's own lookups */
        static gpa_fn gpa;
        if (h && !gpa)
            gpa = (gpa_fn)real_dlsym(h, "cuGetProcAddress_v2");
        if (gpa && g_depth < LOOP) {
            void *p = NULL;
            int st = 0;
            g_depth++;
            gpa(name, &p, 12000, 0, &st);
            g_depth--;
        }
#endif
        /* lookups aimed at the driver (cudart's, or anyone's by name) get our wrapper */
        if (handle == h || handle == RTLD_DEFAULT || handle == RTLD_NEXT) {
            void *mine = own(name, 12000);
            if (mine)
                return mine;
        }
    }
    return real_dlsym(handle, name);
}
