/*
 * fakert: a fake CUDA runtime, libcudart.so.12, for the "past init" cases.
 *
 * Preloaded (LD_PRELOAD=.../variants/fakert/libcudart.so.12), it has the soname and the
 * version node of NVIDIA's runtime, so libggml-cuda's versioned imports
 * (cudaGetDeviceCount@libcudart.so.12, __cudaRegisterFatBinary@libcudart.so.12, ...) bind
 * here and NVIDIA's cudart is never loaded: no driver, no export tables. It reports one
 * device, described according to FAKERT_LAYOUT:
 *
 *   handmade (default) - the write-ups' mistake: the shim fills a struct of its own
 *                        (name, totalGlobalMem, major, minor, multiProcessorCount, with no
 *                        uuid/luid) and says 0 bytes from cudaMemGetInfo. ggml reads CUDA
 *                        12's cudaDeviceProp: "compute capability 0.0 ... VRAM: 0 MiB".
 *   zero               - cudaGetDeviceProperties_v2 succeeds and leaves everything zero.
 *   good               - NVIDIA's struct cudaDeviceProp (driver_types.h), real-looking values.
 *
 * Like NVIDIA's runtime it dlopens libcuda.so.1 on first use and calls cuInit(0) there
 * (libggml-cuda calls cuDeviceGet directly), and carries on without one.
 * FAKERT_DEVICES=N changes the device count (default 1). cudaDeviceGetAttribute answers
 * what the shim meant (compute capability 8.9, FAKERT_CC=MAJOR.MINOR) in handmade and good modes.
 *
 * The first use, after init (the road past init, issue #19): device memory is host memory
 * (cudaMalloc & co. allocate, the copies and memsets are memcpy/memset), so a program gets as
 * far as its first kernel launch. A fake has nothing to run a kernel on: cudaLaunchKernel answers
 * FAKERT_LAUNCH (default 209, cudaErrorNoKernelImageForDevice; "ok" does nothing and succeeds),
 * and the error sticks for cudaGetLastError as NVIDIA's runtime keeps it. FAKERT_MALLOC=N makes
 * every allocation fail with cudaError N (2: out of memory), as a shim with no allocator does.
 *
 * Built with -g3 -O0 and never stripped, like the driver shim.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <driver_types.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

enum fakert_layout { FAKERT_HANDMADE = 0, FAKERT_ZERO = 1, FAKERT_GOOD = 2 };

/* The shim's own idea of cudaDeviceProp: written from memory, without uuid and luid. */
struct fakert_device_prop {
    char name[256];
    size_t totalGlobalMem;
    int major;
    int minor;
    int multiProcessorCount;
};

EXPORT enum fakert_layout g_layout = FAKERT_HANDMADE;
EXPORT int g_device_count = 1;
EXPORT unsigned long g_call_count = 0;
EXPORT const char *g_device_name = "Fake GPU (fakert)";
EXPORT size_t g_vram_bytes = 24ULL << 30;   /* what the shim means to report */
EXPORT int g_cc_major = 8, g_cc_minor = 9;
EXPORT int g_launch_result = cudaErrorNoKernelImageForDevice; /* what a kernel launch answers */
EXPORT int g_malloc_result = cudaSuccess;  /* what an allocation answers */
EXPORT int g_last_error = cudaSuccess;     /* cudaGetLastError's: a failed launch sticks here */
EXPORT unsigned long g_launches = 0;
EXPORT void *g_driver = NULL;          /* dlopen("libcuda.so.1") */
EXPORT int g_driver_init_result = -1;   /* what its cuInit(0) returned; -1: not called */
static int g_configured = 0;

static void configure(void)
{
    g_call_count++;
    if (g_configured)
        return;
    g_configured = 1;
    const char *layout = getenv("FAKERT_LAYOUT");
    if (layout && strcmp(layout, "zero") == 0)
        g_layout = FAKERT_ZERO;
    else if (layout && strcmp(layout, "good") == 0)
        g_layout = FAKERT_GOOD;
    const char *n = getenv("FAKERT_DEVICES");
    if (n && *n)
        g_device_count = atoi(n);
    const char *cc = getenv("FAKERT_CC"); /* the compute capability the shim means, "MAJOR.MINOR" */
    if (cc && *cc && sscanf(cc, "%d.%d", &g_cc_major, &g_cc_minor) < 1)
        g_cc_major = 8, g_cc_minor = 9;
    const char *launch = getenv("FAKERT_LAUNCH");
    if (launch && *launch)
        g_launch_result = strcmp(launch, "ok") == 0 ? cudaSuccess : atoi(launch);
    const char *malloc_result = getenv("FAKERT_MALLOC");
    if (malloc_result && *malloc_result)
        g_malloc_result = atoi(malloc_result);
    g_driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    int (*cu_init)(unsigned) = g_driver ? (int (*)(unsigned))dlsym(g_driver, "cuInit") : NULL;
    g_driver_init_result = cu_init ? cu_init(0) : -1;
}

/* ------------------------------------------------ fat binary registration -- */

static void *g_fatbin_handle[4];

EXPORT void **__cudaRegisterFatBinary(void *fatCubin)
{
    configure();
    return g_fatbin_handle;
}

EXPORT void __cudaRegisterFatBinaryEnd(void **handle) {}
EXPORT void __cudaUnregisterFatBinary(void **handle) {}

EXPORT void __cudaRegisterFunction(void **handle, const char *hostFun, char *deviceFun, const char *deviceName,
                                   int threadLimit, void *tid, void *bid, void *bDim, void *gDim, int *wSize) {}

EXPORT void __cudaRegisterVar(void **handle, char *hostVar, char *deviceAddress, const char *deviceName, int ext,
                              size_t size, int constant, int global) {}

EXPORT unsigned __cudaPushCallConfiguration(void) { return 0; }
EXPORT int __cudaPopCallConfiguration(void) { return 0; }

/* ------------------------------------------------------------ device queries -- */

EXPORT int cudaGetDeviceCount(int *count)
{
    configure();
    *count = g_device_count;
    return cudaSuccess;
}

EXPORT int cudaGetDevice(int *device)
{
    configure();
    *device = 0;
    return cudaSuccess;
}

EXPORT int cudaSetDevice(int device)
{
    configure();
    return device >= 0 && device < g_device_count ? cudaSuccess : cudaErrorInvalidDevice;
}

EXPORT int cudaGetDeviceProperties_v2(struct cudaDeviceProp *prop, int device)
{
    configure();
    if (device < 0 || device >= g_device_count)
        return cudaErrorInvalidDevice;
    memset(prop, 0, sizeof(*prop));
    if (g_layout == FAKERT_HANDMADE) {
        struct fakert_device_prop *mine = (struct fakert_device_prop *)prop;
        snprintf(mine->name, sizeof(mine->name), "%s", g_device_name);
        mine->totalGlobalMem = g_vram_bytes;
        mine->major = g_cc_major;
        mine->minor = g_cc_minor;
        mine->multiProcessorCount = 128;
    } else if (g_layout == FAKERT_GOOD) {
        snprintf(prop->name, sizeof(prop->name), "%s", g_device_name);
        memcpy(prop->uuid.bytes, "\x6e\x1f\x2a\x44\x11\x3c\x4d\x5e\x9a\x10\x22\x33\x44\x55\x66\x77", 16);
        prop->totalGlobalMem = g_vram_bytes;
        prop->sharedMemPerBlock = 48 << 10;
        prop->regsPerBlock = 65536;
        prop->warpSize = 32;
        prop->maxThreadsPerBlock = 1024;
        prop->major = g_cc_major;
        prop->minor = g_cc_minor;
        prop->multiProcessorCount = 128;
        prop->pciBusID = 5;
        prop->pciDeviceID = 0;
        prop->sharedMemPerBlockOptin = 99 << 10;
    }
    return cudaSuccess;
}

/* The pre-CUDA-12 name: NVIDIA's cudart 12 exports both, and CUDA 12's headers #define this one to
   the _v2 name, so ggml imports cudaGetDeviceProperties_v2 (the fakert-v1 variant exports only this). */
EXPORT int cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    return cudaGetDeviceProperties_v2(prop, device);
}

enum { ATTR_MULTIPROCESSORS = 16, ATTR_CC_MAJOR = 75, ATTR_CC_MINOR = 76 };

EXPORT int cudaDeviceGetAttribute(int *value, int attr, int device)
{
    configure();
    if (device < 0 || device >= g_device_count)
        return cudaErrorInvalidDevice;
    int zero = g_layout == FAKERT_ZERO;
    *value = attr == ATTR_CC_MAJOR ? (zero ? 0 : g_cc_major)
           : attr == ATTR_CC_MINOR ? (zero ? 0 : g_cc_minor)
           : attr == ATTR_MULTIPROCESSORS ? (zero ? 0 : 128) : 0;
    return cudaSuccess;
}

EXPORT int cudaMemGetInfo(size_t *free_bytes, size_t *total)
{
    configure();
    int good = g_layout == FAKERT_GOOD;
    *free_bytes = good ? g_vram_bytes - (512ULL << 20) : 0;
    *total = good ? g_vram_bytes : 0;
    return cudaSuccess;
}

EXPORT int cudaDeviceGetPCIBusId(char *bus, int len, int device)
{
    configure();
    snprintf(bus, (size_t)len, "0000:00:%02x.0", 5 + device);
    return cudaSuccess;
}

EXPORT const char *cudaGetErrorString(int error)
{
    /* NVIDIA's texts for what this fake answers (ggml prints them, the tool reads them back) */
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return "fakert: this fake runtime does not do that";
    }
}

EXPORT int cudaDriverGetVersion(int *version) { *version = 12090; return cudaSuccess; }
EXPORT int cudaRuntimeGetVersion(int *version) { *version = 12090; return cudaSuccess; }

EXPORT int cudaGetLastError(void)
{
    int e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
EXPORT int cudaPeekAtLastError(void) { return g_last_error; }

/* --------------------------------------------------- the first use: memory -- */

/* Device memory is host memory here: 256-byte aligned, zeroed, as cudaMalloc's alignment is. */
static int fake_alloc(void **ptr, size_t size)
{
    configure();
    if (!ptr)
        return cudaErrorInvalidValue;
    *ptr = NULL;
    if (g_malloc_result != cudaSuccess)
        return g_malloc_result;
    if (posix_memalign(ptr, 256, size ? size : 1) != 0)
        return cudaErrorMemoryAllocation;
    memset(*ptr, 0, size);
    return cudaSuccess;
}

EXPORT int cudaMalloc(void **ptr, size_t size) { return fake_alloc(ptr, size); }
EXPORT int cudaMallocHost(void **ptr, size_t size) { return fake_alloc(ptr, size); }
EXPORT int cudaMallocManaged(void **ptr, size_t size, unsigned flags) { return fake_alloc(ptr, size); }
EXPORT int cudaHostAlloc(void **ptr, size_t size, unsigned flags) { return fake_alloc(ptr, size); }
EXPORT int cudaFree(void *ptr) { free(ptr); return cudaSuccess; }
EXPORT int cudaFreeHost(void *ptr) { free(ptr); return cudaSuccess; }

EXPORT int cudaMemcpyAsync(void *dst, const void *src, size_t count, int kind, void *stream)
{
    if (count)
        memmove(dst, src, count);
    return cudaSuccess;
}

EXPORT int cudaMemcpy(void *dst, const void *src, size_t count, int kind)
{
    return cudaMemcpyAsync(dst, src, count, kind, NULL);
}

EXPORT int cudaMemcpyPeerAsync(void *dst, int dst_device, const void *src, int src_device, size_t count,
                               void *stream)
{
    return cudaMemcpyAsync(dst, src, count, 0, stream);
}

EXPORT int cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                             int kind, void *stream)
{
    for (size_t row = 0; row < height; row++)
        memmove((char *)dst + row * dpitch, (const char *)src + row * spitch, width);
    return cudaSuccess;
}

EXPORT int cudaMemsetAsync(void *ptr, int value, size_t count, void *stream)
{
    if (count)
        memset(ptr, value, count);
    return cudaSuccess;
}

EXPORT int cudaMemset(void *ptr, int value, size_t count) { return cudaMemsetAsync(ptr, value, count, NULL); }

/* ------------------------------------------------- the first use: launches -- */

/* Nothing to run a kernel on. The launch's answer also sticks for cudaGetLastError, which is where
 * a <<<...>>> launch's caller finds it (the compiler's stub ignores cudaLaunchKernel's result). */
static int fake_launch(void)
{
    configure();
    g_launches++;
    if (g_launch_result != cudaSuccess)
        g_last_error = g_launch_result;
    return g_launch_result;
}

EXPORT int cudaLaunchKernel(void) { return fake_launch(); }
EXPORT int cudaLaunchKernelExC(void) { return fake_launch(); }  /* ggml 0.27 (llama.cpp's real programs) */
EXPORT int cudaLaunchCooperativeKernel(void) { return fake_launch(); }
EXPORT int cudaGraphLaunch(void) { return fake_launch(); }

/* ------------------------------------- everything else libggml-cuda imports -- */

/* The rest succeed without doing anything: ggml never reaches them during init. */
#define NOTHING(name) EXPORT int name(void) { configure(); return cudaSuccess; }
NOTHING(cudaDeviceCanAccessPeer)
NOTHING(cudaDeviceEnablePeerAccess)
NOTHING(cudaDeviceSynchronize)
NOTHING(cudaEventCreateWithFlags)
NOTHING(cudaEventDestroy)
NOTHING(cudaEventRecord)
NOTHING(cudaEventSynchronize)
NOTHING(cudaFuncGetAttributes)
NOTHING(cudaFuncSetAttribute)
NOTHING(cudaGraphDestroy)
NOTHING(cudaGraphExecDestroy)
NOTHING(cudaGraphExecUpdate)
NOTHING(cudaGraphInstantiate)
NOTHING(cudaHostGetDevicePointer)
NOTHING(cudaHostRegister)
NOTHING(cudaHostUnregister)
NOTHING(cudaMemcpy3DPeerAsync)
NOTHING(cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags)
NOTHING(cudaSetDeviceFlags)
NOTHING(cudaStreamBeginCapture)
NOTHING(cudaStreamCreateWithFlags)
NOTHING(cudaStreamDestroy)
NOTHING(cudaStreamEndCapture)
NOTHING(cudaStreamIsCapturing)
NOTHING(cudaStreamSynchronize)
NOTHING(cudaStreamWaitEvent)
