/*
 * nvmlshim: the bundled debug shim for libnvidia-ml.so.1 (NVML).
 *
 * Same modes and knobs as cudashim (see shim/README.md). In forward mode every
 * call goes to the library named by CUDASHIM_REAL_NVML. NVML is only reached
 * after cudart init succeeded, so this is small on purpose.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knobs.h"

#define SHIM_EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t; /* NVML_SUCCESS = 0 */
typedef struct nvml_device_st *nvmlDevice_t;
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
};

SHIM_EXPORT int g_nvml_initialized = 0;
SHIM_EXPORT int g_nvml_device_count = 1;
SHIM_EXPORT unsigned long long g_nvml_vram_bytes = 0;
SHIM_EXPORT void *g_real_nvml = NULL;

static struct nvml_device_st { int index; } g_devices[16];

static int forward_mode(void)
{
    const char *mode = getenv("CUDASHIM_MODE");
    return mode && strcmp(mode, "forward") == 0;
}

static void *real_nvml_sym(const char *name)
{
    if (!g_real_nvml) {
        const char *path = getenv("CUDASHIM_REAL_NVML");
        if (!path || !*path)
            return NULL;
        g_real_nvml = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!g_real_nvml)
            return NULL;
    }
    return dlsym(g_real_nvml, name);
}


#define NVML_FORWARD(type, name, ...)                                       \
    if (shim_fail(#name))                                                   \
        return (nvmlReturn_t)shim_fail(#name);                              \
    if (forward_mode()) {                                                   \
        type real_fn = (type)real_nvml_sym(#name);                          \
        return real_fn ? real_fn(__VA_ARGS__) : NVML_ERROR_LIBRARY_NOT_FOUND; \
    }

typedef nvmlReturn_t (*init_fn)(void);
typedef nvmlReturn_t (*flags_fn)(unsigned int);
typedef nvmlReturn_t (*count_fn)(unsigned int *);
typedef nvmlReturn_t (*index_fn)(unsigned int, nvmlDevice_t *);
typedef nvmlReturn_t (*uuid_fn)(const char *, nvmlDevice_t *);
typedef nvmlReturn_t (*mem_fn)(nvmlDevice_t, nvmlMemory_t *);
typedef nvmlReturn_t (*name_fn)(nvmlDevice_t, char *, unsigned int);
typedef nvmlReturn_t (*version_fn)(char *, unsigned int);

static nvmlReturn_t fake_init(void)
{
    const char *count = getenv("CUDASHIM_DEVICE_COUNT");
    g_nvml_device_count = count ? atoi(count) : 1;
    if (g_nvml_device_count < 0 || g_nvml_device_count > 16)
        g_nvml_device_count = 1;
    const char *vram = getenv("CUDASHIM_VRAM_MIB");
    g_nvml_vram_bytes = (unsigned long long)(vram ? atoll(vram) : 81920) << 20;
    for (int i = 0; i < 16; i++)
        g_devices[i].index = i;
    g_nvml_initialized = 1;
    return NVML_SUCCESS;
}

SHIM_EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    NVML_FORWARD(init_fn, nvmlInit_v2);
    return fake_init();
}

SHIM_EXPORT nvmlReturn_t nvmlInit(void)
{
    NVML_FORWARD(init_fn, nvmlInit);
    return fake_init();
}

SHIM_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    NVML_FORWARD(flags_fn, nvmlInitWithFlags, flags);
    return fake_init();
}

SHIM_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    NVML_FORWARD(init_fn, nvmlShutdown);
    g_nvml_initialized = 0;
    return NVML_SUCCESS;
}

SHIM_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    NVML_FORWARD(count_fn, nvmlDeviceGetCount_v2, count);
    if (!g_nvml_initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)g_nvml_device_count;
    return NVML_SUCCESS;
}

SHIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    NVML_FORWARD(index_fn, nvmlDeviceGetHandleByIndex_v2, index, device);
    if (!g_nvml_initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= (unsigned int)g_nvml_device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_devices[index];
    return NVML_SUCCESS;
}

SHIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    NVML_FORWARD(uuid_fn, nvmlDeviceGetHandleByUUID, uuid, device);
    if (!g_nvml_initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (g_nvml_device_count < 1)
        return NVML_ERROR_NOT_FOUND;
    *device = &g_devices[0];
    return NVML_SUCCESS;
}

SHIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    NVML_FORWARD(mem_fn, nvmlDeviceGetMemoryInfo, device, memory);
    if (!g_nvml_initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!device || !memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = g_nvml_vram_bytes;
    memory->free = g_nvml_vram_bytes;
    memory->used = 0;
    return NVML_SUCCESS;
}

SHIM_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    NVML_FORWARD(name_fn, nvmlDeviceGetName, device, name, length);
    if (!g_nvml_initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!device || !name || length == 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    const char *n = getenv("CUDASHIM_NAME");
    snprintf(name, length, "%s", n ? n : "NVIDIA H100 80GB HBM3 (cudashim)");
    return NVML_SUCCESS;
}

SHIM_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    NVML_FORWARD(version_fn, nvmlSystemGetDriverVersion, version, length);
    if (!version || length < 8)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    const char *v = getenv("CUDASHIM_NVML_DRIVER_VERSION"); /* a fake NVML answering "12.4" reads as driver 12 */
    snprintf(version, length, "%s", v ? v : "575.57.08");
    return NVML_SUCCESS;
}
