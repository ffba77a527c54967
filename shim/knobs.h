/* Knobs both bundled shims read (cudashim.c, nvmlshim.c). */
#ifndef CUDASHIM_KNOBS_H
#define CUDASHIM_KNOBS_H
#include <stdlib.h>
#include <string.h>

/* CUDASHIM_FAIL="cuMemGetInfo_v2=2,nvmlDeviceGetMemoryInfo=3": the named entry points return that
 * code (a shim that fails past init). 0: FN is not named. */
static inline int shim_fail(const char *fn)
{
    const char *v = getenv("CUDASHIM_FAIL");
    size_t n = strlen(fn);
    for (const char *p = v; p && *p;) {
        if (strncmp(p, fn, n) == 0 && p[n] == '=')
            return (int)strtol(p + n + 1, NULL, 0);
        p = strchr(p, ',');
        if (p)
            p++;
    }
    return 0;
}
#endif
