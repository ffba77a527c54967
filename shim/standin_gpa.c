/*
 * standin_gpa: a cuGetProcAddress_v2 for a driver shim that exports none, so that run --what-if can
 * show what exporting it would change (issue #20: "a missing export that a generic stand-in can
 * serve"). The re-run preloads this file (cuda-patch --preload) and hands it to whoever looks the
 * driver's up (cuda-patch dlsym --return sym:cudashim_standin_cuGetProcAddress_v2): it answers each
 * query from the libcuda.so.1 the process already loaded, through that file's own exports, with the
 * variant the cudaVersion asks for (cuda.h's versioned names, shim/versioned.h from core/calls.py)
 * and the per-thread-stream one when the flags ask for it. What the file does not export is
 * CUDA_ERROR_NOT_FOUND with CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND, as NVIDIA's driver answers.
 *
 * Its names start with cudashim_standin_: preloaded, it takes over nothing.
 * Built with -g3 -O0 and never stripped, like the driver shim.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "versioned.h"

#define EXPORT __attribute__((visibility("default")))

enum { SUCCESS = 0, INVALID_VALUE = 1, NOT_FOUND = 500 };
enum { STATUS_SUCCESS = 0, STATUS_SYMBOL_NOT_FOUND = 1 };
enum { PER_THREAD_DEFAULT_STREAM = 2 };

static unsigned long g_queries = 0, g_answered = 0; /* for gdb: p g_queries (static: preloaded, it shares no name) */

EXPORT int cudashim_standin_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                                unsigned long long flags, int *symbolStatus);

EXPORT int cudashim_standin_cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                             unsigned long long flags)
{
    return cudashim_standin_cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, NULL);
}

static void *find(void *driver, const char *name, unsigned long long flags)
{
    char buf[256];
    if (flags & PER_THREAD_DEFAULT_STREAM) {
        for (const char *suffix = "_ptsz"; suffix; suffix = strcmp(suffix, "_ptsz") == 0 ? "_ptds" : NULL) {
            snprintf(buf, sizeof buf, "%s%s", name, suffix);
            void *f = dlsym(driver, buf);
            if (f)
                return f;
        }
    }
    return dlsym(driver, name);
}

EXPORT int cudashim_standin_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                                unsigned long long flags, int *symbolStatus)
{
    g_queries++;
    if (symbolStatus)
        *symbolStatus = STATUS_SYMBOL_NOT_FOUND;
    if (!symbol || !pfn)
        return INVALID_VALUE;
    *pfn = NULL;
    void *f = NULL;
    if (strcmp(symbol, "cuGetProcAddress") == 0) {
        f = cudaVersion >= 12000 ? (void *)cudashim_standin_cuGetProcAddress_v2
                                 : (void *)cudashim_standin_cuGetProcAddress;
    } else {
        void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
        if (!driver)
            return NOT_FOUND;
        const char *name = symbol;
        for (size_t i = 0; i < sizeof cs_versioned / sizeof cs_versioned[0]; i++)
            if (strcmp(symbol, cs_versioned[i].name) == 0 && cudaVersion >= cs_versioned[i].since)
                name = cs_versioned[i].newer;
        f = find(driver, name, flags);
        if (!f && name != symbol)
            f = find(driver, symbol, flags);
        dlclose(driver); /* RTLD_NOLOAD took a reference: give it back */
    }
    if (!f)
        return NOT_FOUND;
    g_answered++;
    *pfn = f;
    if (symbolStatus)
        *symbolStatus = STATUS_SUCCESS;
    return SUCCESS;
}
