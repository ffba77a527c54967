/*
 * discover: GPU discovery the way ollama does it, in C, for the road-past-init tests (#19).
 *
 *   discover                 the first pass: dlopen("libcuda.so.1") and ("libnvidia-ml.so.1") and
 *                            call what `ollama gpu-discover` calls (cuInit, cuDriverGetVersion,
 *                            cuDeviceGetCount; per device cuDeviceGet, cuDeviceGetAttribute 75/76,
 *                            cuDeviceGetName, cuDeviceTotalMem_v2, cuDeviceGetPCIBusId,
 *                            cuDeviceGetUuid_v2, then cuDevicePrimaryCtxRetain + cuMemGetInfo_v2
 *                            for the free memory; nvmlInit_v2, nvmlSystemGetDriverVersion), and
 *                            drops what ollama drops, with its words.
 *   DISCOVER_VERIFY=uuid|ordinal
 *                            then the second, verifying pass (ollama 0.13.2+): each device is run
 *                            again in a child, `discover --child`, with CUDA_VISIBLE_DEVICES=<its
 *                            UUID "GPU-..." (0.13-0.24) or its ordinal (0.30+)> and GGML_CUDA_INIT=1;
 *                            a device the child does not see is "filtering device which didn't
 *                            fully initialize".
 * The last line is ollama's: msg="inference compute" ... library=CUDA, or library=cpu.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int (*fn_i)(unsigned);
typedef int (*fn_pi)(int *);
typedef int (*fn_get)(int *, int);
typedef int (*fn_attr)(int *, int, int);
typedef int (*fn_name)(char *, int, int);
typedef int (*fn_mem)(size_t *, int);
typedef int (*fn_uuid)(unsigned char *, int);
typedef int (*fn_retain)(void **, int);
typedef int (*fn_info)(size_t *, size_t *);
typedef int (*fn_void)(void);
typedef int (*fn_ver)(char *, unsigned);

static void *sym(void *h, const char *name)
{
    void *p = h ? dlsym(h, name) : NULL;
    if (!p)
        fprintf(stderr, "discover: %s: not exported\n", name);
    return p;
}

#define CALL(rc, expr, name)                                               \
    do {                                                                   \
        rc = (expr);                                                       \
        if (rc != 0)                                                       \
            fprintf(stderr, "discover: %s failed: %d\n", name, rc);       \
    } while (0)

static int child(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    fn_i init = (fn_i)sym(h, "cuInit");
    fn_pi count = (fn_pi)sym(h, "cuDeviceGetCount");
    int n = 0, rc;
    if (!init || !count)
        return 1;
    CALL(rc, init(0), "cuInit");
    if (rc == 0)
        CALL(rc, count(&n), "cuDeviceGetCount");
    printf("verified %d\n", rc == 0 ? n : 0);
    return 0;
}

static int verify(const char *self, const char *token)
{
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        setenv("CUDA_VISIBLE_DEVICES", token, 1);
        setenv("GGML_CUDA_INIT", "1", 1);
        execl(self, self, "--child", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char buf[64] = {0};
    ssize_t got = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int n = 0;
    return got > 0 && sscanf(buf, "verified %d", &n) == 1 && n > 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--child") == 0)
        return child();
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {
        fprintf(stderr, "discover: %s\n", dlerror());
        printf("msg=\"inference compute\" id=cpu library=cpu\n");
        return 0;
    }
    int rc, version = 0, n = 0;
    fn_i init = (fn_i)sym(h, "cuInit");
    fn_pi drv = (fn_pi)sym(h, "cuDriverGetVersion");
    fn_pi count = (fn_pi)sym(h, "cuDeviceGetCount");
    fn_get get = (fn_get)sym(h, "cuDeviceGet");
    fn_attr attr = (fn_attr)sym(h, "cuDeviceGetAttribute");
    fn_name name = (fn_name)sym(h, "cuDeviceGetName");
    fn_mem total = (fn_mem)sym(h, "cuDeviceTotalMem_v2");
    fn_name bus = (fn_name)sym(h, "cuDeviceGetPCIBusId");
    fn_uuid uuid = (fn_uuid)sym(h, "cuDeviceGetUuid_v2");
    fn_retain retain = (fn_retain)sym(h, "cuDevicePrimaryCtxRetain");
    fn_info info = (fn_info)sym(h, "cuMemGetInfo_v2");
    if (!init || !drv || !count || !get || !attr || !name || !total || !bus || !uuid || !retain || !info)
        return 1;
    CALL(rc, init(0), "cuInit");
    CALL(rc, drv(&version), "cuDriverGetVersion");
    CALL(rc, count(&n), "cuDeviceGetCount");

    char driver[80] = "";
    void *nv = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    fn_void nvinit = (fn_void)sym(nv, "nvmlInit_v2");
    fn_ver nvver = (fn_ver)sym(nv, "nvmlSystemGetDriverVersion");
    if (nvinit && nvver) {
        CALL(rc, nvinit(), "nvmlInit_v2");
        if (rc == 0)
            CALL(rc, nvver(driver, sizeof driver), "nvmlSystemGetDriverVersion");
    }
    int old = driver[0] && atoi(driver) < 550; /* ollama: the text before the first '.' */
    if (old)
        printf("msg=\"NVIDIA driver too old\" driver=%s\n", driver);

    const char *mode = getenv("DISCOVER_VERIFY");
    int kept = 0;
    for (int i = 0; i < n && !old; i++) {
        int dev = 0, major = 0, minor = 0;
        size_t bytes = 0, free_b = 0, total_b = 0;
        unsigned char u[16] = {0};
        char nm[256] = "", pci[32] = "", id[48];
        void *ctx = NULL;
        CALL(rc, get(&dev, i), "cuDeviceGet");
        CALL(rc, attr(&major, 75, dev), "cuDeviceGetAttribute(75)");
        CALL(rc, attr(&minor, 76, dev), "cuDeviceGetAttribute(76)");
        CALL(rc, name(nm, sizeof nm, dev), "cuDeviceGetName");
        CALL(rc, total(&bytes, dev), "cuDeviceTotalMem_v2");
        CALL(rc, bus(pci, sizeof pci, dev), "cuDeviceGetPCIBusId");
        CALL(rc, uuid(u, dev), "cuDeviceGetUuid_v2");
        CALL(rc, retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
        CALL(rc, info(&free_b, &total_b), "cuMemGetInfo_v2");
        snprintf(id, sizeof id, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                 u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
        printf("device %d %s cc=%d.%d total=%zu free=%zu pci=%s name=%s\n", i, id, major, minor, bytes, free_b, pci, nm);
        if (bytes == 0 || total_b == 0) {
            printf("msg=\"skipping pseudo-device with zero memory\" id=%s\n", id);
            continue;
        }
        if (mode) {
            char ordinal[16];
            snprintf(ordinal, sizeof ordinal, "%d", i);
            if (!verify(argv[0], strcmp(mode, "uuid") == 0 ? id : ordinal)) {
                printf("msg=\"filtering device which didn't fully initialize\" id=%s library=CUDA\n", id);
                continue;
            }
        }
        printf("msg=\"inference compute\" id=%s library=CUDA compute=%d.%d driver=%s total=%zu available=%zu\n", id,
               major, minor, driver, bytes, free_b);
        kept++;
    }
    if (!kept)
        printf("msg=\"inference compute\" id=cpu library=cpu\n");
    return 0;
}
