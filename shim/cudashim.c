/*
 * cudashim: the bundled debug shim for libcuda.so.1 (CUDA driver API).
 *
 * Two modes, chosen by CUDASHIM_MODE (see shim/README.md):
 *   fake    (default) - reports a configurable GPU with no driver present.
 *   forward           - dlopens the real driver named by CUDASHIM_REAL_DRIVER and
 *                       passes every call through, cuGetProcAddress_v2 and
 *                       cuGetExportTable included, so NVIDIA's cudart works through it.
 *
 * The state variables keep the names used in the write-ups this tool was built
 * from (g_initialized, g_device_found, g_in_init_phase, g_gpu_info_valid,
 * g_gpu_info) so that `cuda-state` in gdb can show them.
 *
 * Built with -g3 -O0 and never stripped: the point is to be stepped through.
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knobs.h"
#include <unistd.h>

#define SHIM_EXPORT __attribute__((visibility("default")))

/* ---------------------------------------------------------------- state -- */

struct shim_gpu_info {
    int cc_major;                    /* compute capability, e.g. 9 */
    int cc_minor;                    /* e.g. 0 */
    unsigned long long vram_bytes;   /* total memory reported */
    char name[96];                   /* cuDeviceGetName */
    char pci_bus_id[32];             /* cuDeviceGetPCIBusId, e.g. 0000:00:05.0 */
};

enum shim_mode { SHIM_MODE_FAKE = 0, SHIM_MODE_FORWARD = 1 };

/* What makes this file the bundled shim to gdb-cudashim (core/runtime.BUNDLED_SHIM_MARKER): a name
 * only it exports. Never the g_* names below: the seeds' own shims carry those too. */
SHIM_EXPORT const char gdb_cudashim_bundled_shim[] = "gdb-cudashim bundled debug shim";

SHIM_EXPORT int g_initialized = 0;        /* cuInit has run (successfully or not) */
SHIM_EXPORT int g_device_found = 0;       /* at least one device is visible */
SHIM_EXPORT int g_in_init_phase = 0;      /* set while cuInit runs */
SHIM_EXPORT int g_gpu_info_valid = 0;     /* g_gpu_info has been filled in */
SHIM_EXPORT struct shim_gpu_info g_gpu_info;
SHIM_EXPORT enum shim_mode g_mode = SHIM_MODE_FAKE;
SHIM_EXPORT int g_device_count = 0;       /* devices visible after CUDA_VISIBLE_DEVICES */
SHIM_EXPORT int g_driver_version = 0;     /* what cuDriverGetVersion reports */
SHIM_EXPORT int g_init_result = 0;        /* the CUresult cuInit returns (fake mode) */
SHIM_EXPORT unsigned long g_call_count = 0; /* calls into this shim */
SHIM_EXPORT unsigned long g_proc_lookups = 0; /* cuGetProcAddress(_v2) lookups answered */
SHIM_EXPORT void *g_real_driver = NULL;   /* dlopen handle of the real driver (forward mode) */
SHIM_EXPORT char g_real_driver_path[512]; /* its path */

static int g_configured = 0;
static int g_configured_devices = 1;
static const char *g_hang_in = NULL;      /* CUDASHIM_HANG: function name to block in */
static int g_log = 0;                     /* CUDASHIM_LOG=1: one stderr line per call */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *g_spin_in = NULL;      /* CUDASHIM_SPIN: function name to busy-loop in */
static const char *g_deadlock = NULL;     /* CUDASHIM_DEADLOCK=self|ctor|abba: how cuInit deadlocks */
static pthread_mutex_t g_state_lock = PTHREAD_MUTEX_INITIALIZER; /* plain (non-recursive) */
static pthread_mutex_t g_table_lock = PTHREAD_MUTEX_INITIALIZER; /* abba's second lock */

/* -------------------------------------------------------------- helpers -- */

static void shim_log(const char *fmt, ...)
{
    if (!g_log)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0) {
        if ((size_t)n >= sizeof buf)
            n = sizeof buf - 1;
        ssize_t ignored = write(2, buf, (size_t)n);
        (void)ignored;
    }
}

static long env_long(const char *name, long fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return fallback;
    char *end = NULL;
    long x = strtol(v, &end, 0);
    return (end && *end == '\0') ? x : fallback;
}

/* Device DEV's UUID (CUDASHIM_UUID): unset, "cudashim" and the ordinal; "zero", sixteen zero
 * bytes (ollama drops such a device); "per-process", different in each process (ollama's second
 * pass then cannot find the device it saw in the first); "GPU-xxxxxxxx-xxxx-...", that UUID, its
 * last byte plus the ordinal. */
static void shim_uuid(int dev, unsigned char out[16])
{
    const char *how = getenv("CUDASHIM_UUID");
    memset(out, 0, 16);
    if (how && strcmp(how, "zero") == 0)
        return;
    if (how && strcmp(how, "per-process") == 0) {
        unsigned pid = (unsigned)getpid();
        memcpy(out, "cudashim", 8);
        memcpy(out + 8, &pid, sizeof pid);
        out[15] = (unsigned char)dev;
        return;
    }
    if (how && strncmp(how, "GPU-", 4) == 0) {
        int n = 0;
        for (const char *p = how + 4; *p && n < 32; p++) {
            int v = (*p >= '0' && *p <= '9') ? *p - '0' : (*p >= 'a' && *p <= 'f') ? *p - 'a' + 10
                  : (*p >= 'A' && *p <= 'F') ? *p - 'A' + 10 : -1;
            if (v < 0)
                continue; /* the dashes */
            out[n / 2] |= (unsigned char)(n % 2 ? v : v << 4);
            n++;
        }
        out[15] = (unsigned char)(out[15] + dev);
        return;
    }
    memcpy(out, "cudashim", 8);
    out[15] = (unsigned char)dev;
}

/* "GPU-" and the UUID as 8-4-4-4-12 lowercase hex: nvidia-smi's form, and CUDA_VISIBLE_DEVICES's. */
static void shim_uuid_text(int dev, char out[41])
{
    unsigned char u[16];
    shim_uuid(dev, u);
    char *p = out + sprintf(out, "GPU-");
    for (int i = 0; i < 16; i++)
        p += sprintf(p, (i == 4 || i == 6 || i == 8 || i == 10) ? "-%02x" : "%02x", u[i]);
}

/* CUDA_VISIBLE_DEVICES is the driver's job: count the listed devices that exist, given as
 * ordinals or as GPU-<uuid> (a unique prefix is enough), and stop at the first invalid entry,
 * as the driver does. CUDASHIM_VISIBLE reproduces two shim bugs: "ordinals-only" (a GPU-
 * token is invalid: no device) and "ignore" (the variable is not read: every device). */
static int visible_device_count(int present)
{
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    const char *bug = getenv("CUDASHIM_VISIBLE");
    if (!v || (bug && strcmp(bug, "ignore") == 0))
        return present;
    int ordinals_only = bug && strcmp(bug, "ordinals-only") == 0;
    int count = 0;
    const char *p = v;
    while (*p) {
        size_t len = strcspn(p, ", ");
        if (!ordinals_only && len > 4 && strncmp(p, "GPU-", 4) == 0) {
            int match = -1;
            for (int d = 0; d < present; d++) {
                char text[41];
                shim_uuid_text(d, text);
                if (len <= strlen(text) && strncmp(text, p, len) == 0) {
                    if (match >= 0) {
                        match = -2; /* a prefix of two UUIDs: ambiguous, invalid */
                        break;
                    }
                    match = d;
                }
            }
            if (match < 0)
                break;
        } else {
            char *end = NULL;
            long idx = strtol(p, &end, 10);
            if (end == p || (size_t)(end - p) != len || idx < 0 || idx >= present)
                break;
        }
        count++;
        p += len;
        while (*p == ',' || *p == ' ')
            p++;
    }
    return count;
}


/* True when this very file is the one CUDASHIM_REAL_DRIVER names: a copy of the
 * shim standing in for the real driver must answer, not forward to itself. */
static int shim_is_the_real_driver(void)
{
    const char *target = getenv("CUDASHIM_REAL_DRIVER");
    Dl_info info;
    if (!target || !dladdr((void *)&shim_is_the_real_driver, &info) || !info.dli_fname)
        return 0;
    char a[4096], b[4096];
    if (!realpath(target, a) || !realpath(info.dli_fname, b))
        return 0;
    return strcmp(a, b) == 0;
}

/* Read the knobs once. Called from every entry point; cheap after the first time. */
static void shim_configure(void)
{
    if (g_configured)
        return;
    pthread_mutex_lock(&g_lock);
    if (!g_configured) {
        g_log = (int)env_long("CUDASHIM_LOG", 0);
        const char *mode = getenv("CUDASHIM_MODE");
        g_mode = (mode && strcmp(mode, "forward") == 0) ? SHIM_MODE_FORWARD : SHIM_MODE_FAKE;
        if (g_mode == SHIM_MODE_FORWARD && shim_is_the_real_driver())
            g_mode = SHIM_MODE_FAKE; /* never forward to ourselves */
        g_configured_devices = (int)env_long("CUDASHIM_DEVICE_COUNT", 1);
        g_driver_version = (int)env_long("CUDASHIM_DRIVER_VERSION", 12090);
        g_init_result = (int)env_long("CUDASHIM_INIT_RESULT", CUDA_SUCCESS);
        g_hang_in = getenv("CUDASHIM_HANG");
        g_spin_in = getenv("CUDASHIM_SPIN");
        g_deadlock = getenv("CUDASHIM_DEADLOCK");

        const char *cc = getenv("CUDASHIM_CC");
        int major = 9, minor = 0;
        if (cc && sscanf(cc, "%d.%d", &major, &minor) < 1) {
            major = 9;
            minor = 0;
        }
        g_gpu_info.cc_major = major;
        g_gpu_info.cc_minor = minor;
        g_gpu_info.vram_bytes = (unsigned long long)env_long("CUDASHIM_VRAM_MIB", 81920) << 20;
        const char *name = getenv("CUDASHIM_NAME");
        snprintf(g_gpu_info.name, sizeof g_gpu_info.name, "%s",
                 name ? name : "NVIDIA H100 80GB HBM3 (cudashim)");
        const char *bus = getenv("CUDASHIM_PCI_BUS_ID");
        snprintf(g_gpu_info.pci_bus_id, sizeof g_gpu_info.pci_bus_id, "%s",
                 bus ? bus : "0000:00:05.0");
        g_configured = 1;
    }
    pthread_mutex_unlock(&g_lock);
}

/* CUDASHIM_HANG=<function>: block forever in that function, to reproduce a hang. */
static void shim_wait_forever(const char *where)
{
    shim_log("cudashim: %s: hanging as CUDASHIM_HANG asks\n", where);
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    pthread_mutex_lock(&m);
    for (;;)
        pthread_cond_wait(&c, &m);
}

/* CUDASHIM_CRASH=<function>: dereference a bad pointer in that function (a shim's own bug). */
static int shim_crash(const char *where, const struct shim_gpu_info *info)
{
    shim_log("cudashim: %s: crashing as CUDASHIM_CRASH asks\n", where);
    const char *how = getenv("CUDASHIM_CRASH_POINTER");
    if (how && strcmp(how, "wild") == 0) /* a non-canonical address: a general protection fault */
        info = (const struct shim_gpu_info *)0xdead000000000000ULL;
    return info->cc_major; /* info is NULL: SIGSEGV here */
}

/* CUDASHIM_SPIN=<function>: busy-loop forever in that function (no syscall, 100% CPU). */
static void shim_spin_forever(const char *where)
{
    shim_log("cudashim: %s: spinning as CUDASHIM_SPIN asks\n", where);
    volatile unsigned long spins = 0;
    for (;;)
        spins++;
}

/* CUDASHIM_DEADLOCK=ctor: the constructor takes g_state_lock and never gives it back. */
__attribute__((constructor)) static void shim_load(void)
{
    const char *mode = getenv("CUDASHIM_DEADLOCK");
    if (mode && strcmp(mode, "ctor") == 0)
        pthread_mutex_lock(&g_state_lock); /* the bug: no unlock */
}

/* Takes g_state_lock itself: called with it held, the thread waits on itself. */
static void shim_refresh_state(void)
{
    pthread_mutex_lock(&g_state_lock);
    g_device_count = visible_device_count(g_configured_devices);
    pthread_mutex_unlock(&g_state_lock);
}

static void *shim_abba_worker(void *arg)
{
    pthread_mutex_lock(&g_table_lock);
    usleep(200 * 1000);
    pthread_mutex_lock(&g_state_lock); /* main holds it and waits for g_table_lock */
    pthread_mutex_unlock(&g_state_lock);
    pthread_mutex_unlock(&g_table_lock);
    return arg;
}

/* CUDASHIM_DEADLOCK: self (g_state_lock taken twice by one thread), ctor (taken by the
 * constructor, never released), abba (two threads take two locks in opposite order). */
static void shim_deadlock(const char *mode)
{
    shim_log("cudashim: deadlocking (%s) as CUDASHIM_DEADLOCK asks\n", mode);
    if (strcmp(mode, "self") == 0) {
        pthread_mutex_lock(&g_state_lock);
        shim_refresh_state();
        pthread_mutex_unlock(&g_state_lock);
    } else if (strcmp(mode, "ctor") == 0) {
        pthread_mutex_lock(&g_state_lock);
        pthread_mutex_unlock(&g_state_lock);
    } else if (strcmp(mode, "abba") == 0) {
        pthread_t worker;
        pthread_mutex_lock(&g_state_lock);
        if (pthread_create(&worker, NULL, shim_abba_worker, NULL) == 0) {
            usleep(100 * 1000);
            pthread_mutex_lock(&g_table_lock);
            pthread_mutex_unlock(&g_table_lock);
        }
        pthread_mutex_unlock(&g_state_lock);
    }
}

static void shim_enter(const char *fn)
{
    shim_configure();
    __atomic_add_fetch(&g_call_count, 1, __ATOMIC_RELAXED);
    shim_log("cudashim: %s\n", fn);
    if (g_hang_in && strcmp(g_hang_in, fn) == 0)
        shim_wait_forever(fn);
    if (g_spin_in && strcmp(g_spin_in, fn) == 0)
        shim_spin_forever(fn);
    const char *crash = getenv("CUDASHIM_CRASH");
    if (crash && strcmp(crash, fn) == 0)
        shim_crash(fn, NULL);
    if (g_deadlock && strcmp(fn, "cuInit") == 0)
        shim_deadlock(g_deadlock);
}

/* ------------------------------------------------------- forward mode -- */

static void *real_driver(void)
{
    if (g_real_driver)
        return g_real_driver;
    const char *path = getenv("CUDASHIM_REAL_DRIVER");
    if (!path || !*path) {
        shim_log("cudashim: forward mode needs CUDASHIM_REAL_DRIVER\n");
        return NULL;
    }
    snprintf(g_real_driver_path, sizeof g_real_driver_path, "%s", path);
    g_real_driver = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!g_real_driver)
        shim_log("cudashim: cannot load real driver %s: %s\n", path, dlerror());
    return g_real_driver;
}

static void *real_sym(const char *name)
{
    void *h = real_driver();
    return h ? dlsym(h, name) : NULL;
}

/* Call the real driver's NAME with ARGS, or fail with CUDA_ERROR_SHARED_OBJECT_*. */
/* The real symbol's name must be the macro-expanded one: cuda.h maps e.g.
 * cuDeviceTotalMem to cuDeviceTotalMem_v2, and the unexpanded "cuDeviceTotalMem" is
 * the driver's old 32-bit entry point (seen on an H100: 81079 MiB reported as 4095). */
#define SHIM_STR_(x) #x
#define SHIM_STR(x) SHIM_STR_(x)
#define FORWARD(name, ...)                                                   \
    do {                                                                     \
        __typeof__(&name) real_fn = (__typeof__(&name))real_sym(SHIM_STR(name)); \
        if (!real_fn)                                                        \
            return g_real_driver ? CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND \
                                 : CUDA_ERROR_SHARED_OBJECT_INIT_FAILED;     \
        return real_fn(__VA_ARGS__);                                         \
    } while (0)

#define ENTER(name)                             \
    shim_enter(#name);                          \
    if (shim_fail(#name))                       \
        return (CUresult)shim_fail(#name);      \
    if (g_mode == SHIM_MODE_FORWARD)

/* --------------------------------------------------------- driver API -- */

SHIM_EXPORT CUresult cuInit(unsigned int flags)
{
    ENTER(cuInit)
    {
        g_in_init_phase = 1;
        __typeof__(&cuInit) real_init = (__typeof__(&cuInit))real_sym("cuInit");
        CUresult rc = real_init ? real_init(flags) : CUDA_ERROR_SHARED_OBJECT_INIT_FAILED;
        int count = 0;
        __typeof__(&cuDeviceGetCount) real_count =
            (__typeof__(&cuDeviceGetCount))real_sym("cuDeviceGetCount");
        if (rc == CUDA_SUCCESS && real_count && real_count(&count) == CUDA_SUCCESS)
            g_device_count = count;
        g_device_found = g_device_count > 0;
        g_initialized = 1;
        g_in_init_phase = 0;
        return rc;
    }
    g_in_init_phase = 1;
    g_device_count = visible_device_count(g_configured_devices);
    g_device_found = g_device_count > 0;
    g_gpu_info_valid = 1;
    CUresult result = (CUresult)g_init_result;
    if (result == CUDA_SUCCESS && !g_device_found)
        result = CUDA_ERROR_NO_DEVICE;
    g_initialized = 1;
    g_in_init_phase = 0;
    return result;
}

SHIM_EXPORT CUresult cuDriverGetVersion(int *driverVersion)
{
    ENTER(cuDriverGetVersion) FORWARD(cuDriverGetVersion, driverVersion);
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = g_driver_version;
    return CUDA_SUCCESS;
}

static CUresult fake_not_initialized(void)
{
    if (!g_initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (g_init_result != CUDA_SUCCESS)
        return (CUresult)g_init_result;
    return CUDA_SUCCESS;
}

SHIM_EXPORT CUresult cuDeviceGetCount(int *count)
{
    ENTER(cuDeviceGetCount) FORWARD(cuDeviceGetCount, count);
    CUresult rc = fake_not_initialized();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = g_device_count;
    return CUDA_SUCCESS;
}

SHIM_EXPORT CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    ENTER(cuDeviceGet) FORWARD(cuDeviceGet, device, ordinal);
    CUresult rc = fake_not_initialized();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= g_device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

static CUresult fake_check_device(CUdevice dev)
{
    CUresult rc = fake_not_initialized();
    if (rc != CUDA_SUCCESS)
        return rc;
    return (dev < 0 || dev >= g_device_count) ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS;
}

SHIM_EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    ENTER(cuDeviceGetName) FORWARD(cuDeviceGetName, name, len, dev);
    CUresult rc = fake_check_device(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", g_gpu_info.name);
    return CUDA_SUCCESS;
}

/* Both cuDeviceGetUuid ABIs answer the same in fake mode (shim_uuid: CUDASHIM_UUID). */
static CUresult fake_uuid(CUuuid *uuid, CUdevice dev)
{
    CUresult rc = fake_check_device(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    shim_uuid(dev, (unsigned char *)uuid->bytes);
    return CUDA_SUCCESS;
}

SHIM_EXPORT CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    ENTER(cuDeviceGetUuid) FORWARD(cuDeviceGetUuid, uuid, dev);
    return fake_uuid(uuid, dev);
}

SHIM_EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    ENTER(cuDeviceGetUuid_v2) FORWARD(cuDeviceGetUuid_v2, uuid, dev);
    return fake_uuid(uuid, dev);
}

/* cuda.h maps cuDeviceTotalMem to cuDeviceTotalMem_v2. */
SHIM_EXPORT CUresult cuDeviceTotalMem(size_t *bytes, CUdevice dev)
{
    ENTER(cuDeviceTotalMem_v2) FORWARD(cuDeviceTotalMem, bytes, dev);
    CUresult rc = fake_check_device(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    *bytes = (size_t)g_gpu_info.vram_bytes;
    return CUDA_SUCCESS;
}

SHIM_EXPORT CUresult cuDeviceComputeCapability(int *major, int *minor, CUdevice dev)
{
    ENTER(cuDeviceComputeCapability) FORWARD(cuDeviceComputeCapability, major, minor, dev);
    CUresult rc = fake_check_device(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!major || !minor)
        return CUDA_ERROR_INVALID_VALUE;
    *major = g_gpu_info.cc_major;
    *minor = g_gpu_info.cc_minor;
    return CUDA_SUCCESS;
}

/* Plausible values for the attributes cudaGetDeviceProperties and ggml ask for. */
static int fake_attribute(CUdevice_attribute attrib)
{
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: return g_gpu_info.cc_major;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: return g_gpu_info.cc_minor;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: return 132;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: return 64;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: return 65535;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: return 49152;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: return 232448;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: return 233472;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: return 65536;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: return 1980000;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: return 2619000;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: return 5120;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: return 52428800;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED: return 0;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: return 5;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: return 0;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: return 0;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: return (int)env_long("CUDASHIM_VMM", 1);
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: return 1;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: return 1;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: return 1;
    default: return 0;
    }
}

SHIM_EXPORT CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    ENTER(cuDeviceGetAttribute) FORWARD(cuDeviceGetAttribute, pi, attrib, dev);
    CUresult rc = fake_check_device(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    *pi = fake_attribute(attrib);
    return CUDA_SUCCESS;
}

SHIM_EXPORT CUresult cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev)
{
    ENTER(cuDeviceGetPCIBusId) FORWARD(cuDeviceGetPCIBusId, pciBusId, len, dev);
    CUresult rc = fake_check_device(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!pciBusId || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(pciBusId, (size_t)len, "%s", g_gpu_info.pci_bus_id);
    return CUDA_SUCCESS;
}

/* cuda.h maps cuMemGetInfo to cuMemGetInfo_v2. */
SHIM_EXPORT CUresult cuMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    ENTER(cuMemGetInfo_v2) FORWARD(cuMemGetInfo, free_bytes, total_bytes);
    CUresult rc = fake_not_initialized();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (free_bytes)
        *free_bytes = (size_t)g_gpu_info.vram_bytes;
    if (total_bytes)
        *total_bytes = (size_t)g_gpu_info.vram_bytes;
    return CUDA_SUCCESS;
}

static const char *fake_error_name(CUresult error)
{
    switch (error) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_STUB_LIBRARY: return "CUDA_ERROR_STUB_LIBRARY";
    case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    default: return NULL;
    }
}

SHIM_EXPORT CUresult cuGetErrorName(CUresult error, const char **pStr)
{
    ENTER(cuGetErrorName) FORWARD(cuGetErrorName, error, pStr);
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    *pStr = fake_error_name(error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SHIM_EXPORT CUresult cuGetErrorString(CUresult error, const char **pStr)
{
    ENTER(cuGetErrorString) FORWARD(cuGetErrorString, error, pStr);
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    *pStr = fake_error_name(error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* -- contexts: enough for a caller that only asks; no memory is ever real -- */

static int g_fake_context_storage;

SHIM_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    ENTER(cuDevicePrimaryCtxRetain) FORWARD(cuDevicePrimaryCtxRetain, pctx, dev);
    CUresult rc = fake_check_device(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = (CUcontext)&g_fake_context_storage;
    return CUDA_SUCCESS;
}

/* cuda.h maps cuDevicePrimaryCtxRelease to cuDevicePrimaryCtxRelease_v2. */
SHIM_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    ENTER(cuDevicePrimaryCtxRelease_v2) FORWARD(cuDevicePrimaryCtxRelease, dev);
    return fake_check_device(dev);
}

SHIM_EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    ENTER(cuCtxGetCurrent) FORWARD(cuCtxGetCurrent, pctx);
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = NULL;
    return CUDA_SUCCESS;
}

SHIM_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx)
{
    ENTER(cuCtxSetCurrent) FORWARD(cuCtxSetCurrent, ctx);
    return fake_not_initialized();
}

SHIM_EXPORT CUresult cuCtxGetDevice(CUdevice *device)
{
    ENTER(cuCtxGetDevice) FORWARD(cuCtxGetDevice, device);
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    *device = 0;
    return fake_not_initialized();
}

/* -- virtual memory management: libggml-cuda imports these directly ---- */

SHIM_EXPORT CUresult cuMemGetAllocationGranularity(size_t *granularity,
                                                   const CUmemAllocationProp *prop,
                                                   CUmemAllocationGranularity_flags option)
{
    ENTER(cuMemGetAllocationGranularity)
        FORWARD(cuMemGetAllocationGranularity, granularity, prop, option);
    if (!granularity)
        return CUDA_ERROR_INVALID_VALUE;
    *granularity = (size_t)env_long("CUDASHIM_GRANULARITY", 2u << 20); /* 0: the road past init's defect */
    return fake_not_initialized();
}

SHIM_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                 const CUmemAllocationProp *prop, unsigned long long flags)
{
    ENTER(cuMemCreate) FORWARD(cuMemCreate, handle, size, prop, flags);
    return CUDA_ERROR_OUT_OF_MEMORY; /* a fake GPU has no memory to give */
}

SHIM_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    ENTER(cuMemRelease) FORWARD(cuMemRelease, handle);
    return CUDA_ERROR_INVALID_VALUE;
}

SHIM_EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                         CUdeviceptr addr, unsigned long long flags)
{
    ENTER(cuMemAddressReserve) FORWARD(cuMemAddressReserve, ptr, size, alignment, addr, flags);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

SHIM_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    ENTER(cuMemAddressFree) FORWARD(cuMemAddressFree, ptr, size);
    return CUDA_ERROR_INVALID_VALUE;
}

SHIM_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                              CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    ENTER(cuMemMap) FORWARD(cuMemMap, ptr, size, offset, handle, flags);
    return CUDA_ERROR_INVALID_VALUE;
}

SHIM_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    ENTER(cuMemUnmap) FORWARD(cuMemUnmap, ptr, size);
    return CUDA_ERROR_INVALID_VALUE;
}

SHIM_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size,
                                    const CUmemAccessDesc *desc, size_t count)
{
    ENTER(cuMemSetAccess) FORWARD(cuMemSetAccess, ptr, size, desc, count);
    return CUDA_ERROR_INVALID_VALUE;
}

/* ------------------------------------------- private export tables -- */

/*
 * cudart asks for private tables by UUID (cuGetExportTable). In forward mode
 * they come from the real driver untouched. A fake driver cannot provide
 * them (their layout is NVIDIA's), so fake mode answers CUDA_ERROR_NOT_FOUND:
 * cudart then fails with "named symbol not found" - which is exactly what
 * catch-init-error diagnoses.
 */
/* CUDASHIM_EXPORT_TABLE=blank: what a naive fake does instead, "success" and a table of zeros.
 * cudart then calls through a NULL slot of it and dies of SIGSEGV inside libcudart. */
static const void *g_blank_table[64];

SHIM_EXPORT CUresult cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId)
{
    ENTER(cuGetExportTable) FORWARD(cuGetExportTable, ppExportTable, pExportTableId);
    const char *how = getenv("CUDASHIM_EXPORT_TABLE");
    if (how && strcmp(how, "blank") == 0 && ppExportTable) {
        *ppExportTable = g_blank_table;
        return CUDA_SUCCESS;
    }
    if (ppExportTable)
        *ppExportTable = NULL;
    return CUDA_ERROR_NOT_FOUND;
}

/* ------------------------------------------------- symbol lookups -- */

/* Our own entry points by exported name; the forward declaration of the v1 ABI
 * is needed because it is defined further down. tests/test_core.py checks that
 * this table and the library's exports agree. */
CUresult cuGetProcAddress_v1(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
    __asm__("cuGetProcAddress");

static const struct { const char *name; void *fn; } g_own_exports[] = {
    {"cuInit", (void *)cuInit},
    {"cuDriverGetVersion", (void *)cuDriverGetVersion},
    {"cuDeviceGetCount", (void *)cuDeviceGetCount},
    {"cuDeviceGet", (void *)cuDeviceGet},
    {"cuDeviceGetName", (void *)cuDeviceGetName},
    {"cuDeviceGetUuid", (void *)cuDeviceGetUuid},
    {"cuDeviceGetUuid_v2", (void *)cuDeviceGetUuid_v2},
    {"cuDeviceTotalMem_v2", (void *)cuDeviceTotalMem},
    {"cuDeviceComputeCapability", (void *)cuDeviceComputeCapability},
    {"cuDeviceGetAttribute", (void *)cuDeviceGetAttribute},
    {"cuDeviceGetPCIBusId", (void *)cuDeviceGetPCIBusId},
    {"cuMemGetInfo_v2", (void *)cuMemGetInfo},
    {"cuGetErrorName", (void *)cuGetErrorName},
    {"cuGetErrorString", (void *)cuGetErrorString},
    {"cuDevicePrimaryCtxRetain", (void *)cuDevicePrimaryCtxRetain},
    {"cuDevicePrimaryCtxRelease_v2", (void *)cuDevicePrimaryCtxRelease},
    {"cuCtxGetCurrent", (void *)cuCtxGetCurrent},
    {"cuCtxSetCurrent", (void *)cuCtxSetCurrent},
    {"cuCtxGetDevice", (void *)cuCtxGetDevice},
    {"cuMemGetAllocationGranularity", (void *)cuMemGetAllocationGranularity},
    {"cuMemCreate", (void *)cuMemCreate},
    {"cuMemRelease", (void *)cuMemRelease},
    {"cuMemAddressReserve", (void *)cuMemAddressReserve},
    {"cuMemAddressFree", (void *)cuMemAddressFree},
    {"cuMemMap", (void *)cuMemMap},
    {"cuMemUnmap", (void *)cuMemUnmap},
    {"cuMemSetAccess", (void *)cuMemSetAccess},
    {"cuGetExportTable", (void *)cuGetExportTable},
    {"cuGetProcAddress_v2", (void *)cuGetProcAddress},
    {"cuGetProcAddress", (void *)cuGetProcAddress_v1},
};

/* Our own copy of an entry point (no dlsym: a lookup costs the debugger nothing). */
static void *own_symbol(const char *name)
{
    for (size_t i = 0; i < sizeof g_own_exports / sizeof g_own_exports[0]; i++)
        if (strcmp(g_own_exports[i].name, name) == 0)
            return g_own_exports[i].fn;
    return NULL;
}

/*
 * The driver maps (name, ABI version) to an implementation: cudart asks for
 * "cuDeviceTotalMem" with version 3020 and means cuDeviceTotalMem_v2.
 */
static void *fake_proc_address(const char *symbol, int cudaVersion)
{
    static const struct { const char *name; int since; const char *impl; } versioned[] = {
        {"cuDeviceTotalMem", 3020, "cuDeviceTotalMem_v2"},
        {"cuMemGetInfo", 3020, "cuMemGetInfo_v2"},
        {"cuDevicePrimaryCtxRelease", 11000, "cuDevicePrimaryCtxRelease_v2"},
        {"cuDeviceGetUuid", 11040, "cuDeviceGetUuid_v2"},
        {"cuGetProcAddress", 12000, "cuGetProcAddress_v2"},
    };
    for (size_t i = 0; i < sizeof versioned / sizeof versioned[0]; i++)
        if (strcmp(symbol, versioned[i].name) == 0 && cudaVersion >= versioned[i].since)
            return own_symbol(versioned[i].impl);
    return own_symbol(symbol);
}

/* cuda.h maps cuGetProcAddress to cuGetProcAddress_v2 (CUDA 12 ABI). */
SHIM_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                      cuuint64_t flags, CUdriverProcAddressQueryResult *symbolStatus)
{
    ENTER(cuGetProcAddress_v2)
    {
        __typeof__(&cuGetProcAddress) real_gpa =
            (__typeof__(&cuGetProcAddress))real_sym("cuGetProcAddress_v2");
        if (!real_gpa)
            return CUDA_ERROR_SHARED_OBJECT_INIT_FAILED;
        CUresult rc = real_gpa(symbol, pfn, cudaVersion, flags, symbolStatus);
        /* Hand out our own wrapper where we have one, so calls made through the
         * pointer (and later lookups through cuGetProcAddress) still land here. */
        if (rc == CUDA_SUCCESS && symbol && pfn && *pfn) {
            void *own = fake_proc_address(symbol, cudaVersion);
            if (own)
                *pfn = own;
        }
        __atomic_add_fetch(&g_proc_lookups, 1, __ATOMIC_RELAXED);
        return rc;
    }
    __atomic_add_fetch(&g_proc_lookups, 1, __ATOMIC_RELAXED);
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = symbol[0] ? fake_proc_address(symbol, cudaVersion) : NULL;
    /* CUDASHIM_GPA_BAD=<symbol>=libc|unmapped|legacy: hand back the wrong thing for that symbol
     * (a function of the C library, an address nothing is mapped at, or the unversioned legacy
     * entry point whatever cudaVersion asked for), with CUDA_SUCCESS */
    const char *bad = getenv("CUDASHIM_GPA_BAD");
    size_t n = strlen(symbol);
    if (bad && strncmp(bad, symbol, n) == 0 && bad[n] == '=')
        *pfn = strcmp(bad + n + 1, "libc") == 0     ? (void *)&getpid
               : strcmp(bad + n + 1, "legacy") == 0 ? own_symbol(symbol)
                                                    : (void *)(uintptr_t)0x10;
    if (symbolStatus)
        *symbolStatus = *pfn ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return *pfn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

/* The CUDA 11 ABI (no symbolStatus); cudart 12 never calls it. */
SHIM_EXPORT CUresult cuGetProcAddress_v1(const char *symbol, void **pfn, int cudaVersion,
                                         cuuint64_t flags)
{
    ENTER(cuGetProcAddress)
    {
        typedef CUresult (*v1_fn)(const char *, void **, int, cuuint64_t);
        v1_fn real_v1 = (v1_fn)real_sym("cuGetProcAddress");
        if (!real_v1)
            return CUDA_ERROR_SHARED_OBJECT_INIT_FAILED;
        return real_v1(symbol, pfn, cudaVersion, flags);
    }
    __atomic_add_fetch(&g_proc_lookups, 1, __ATOMIC_RELAXED);
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = symbol[0] ? fake_proc_address(symbol, cudaVersion) : NULL;
    return *pfn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}
