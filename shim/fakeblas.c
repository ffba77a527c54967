/*
 * fakeblas: a fake cuBLAS, libcublas.so.12, for the road past init (issue #19).
 *
 * Preloaded beside the fake runtime (LD_PRELOAD=.../fakert/libcudart.so.12:.../fakeblas/libcublas.so.12),
 * it has NVIDIA's soname and version node, so libggml-cuda's imports (cublasCreate_v2@libcublas.so.12
 * and the rest: exactly the names the two pinned backends import) bind here. ggml makes its cuBLAS
 * handle at the first matrix product cuBLAS does for it (a device below compute capability 7.5 has
 * no MMQ kernels, so gemma's quantized products go there). cublasCreate_v2 answers FAKEBLAS_CREATE
 * (default 1, CUBLAS_STATUS_NOT_INITIALIZED: a fake has no cuBLAS behind it; 0 hands back a handle),
 * cublasGetStatusString NVIDIA's texts, and the products CUBLAS_STATUS_NOT_SUPPORTED.
 *
 * Built with -g3 -O0 and never stripped, like the driver shim.
 */
#include <stdlib.h>

#define EXPORT __attribute__((visibility("default")))

enum {
    STATUS_SUCCESS = 0, STATUS_NOT_INITIALIZED = 1, STATUS_ALLOC_FAILED = 3, STATUS_INVALID_VALUE = 7,
    STATUS_ARCH_MISMATCH = 8, STATUS_EXECUTION_FAILED = 13, STATUS_INTERNAL_ERROR = 14, STATUS_NOT_SUPPORTED = 15,
};

EXPORT int g_create_result = STATUS_NOT_INITIALIZED;
EXPORT unsigned long g_creates = 0;
static int g_configured;
static char g_handle_storage[64];

static void configure(void)
{
    if (g_configured)
        return;
    g_configured = 1;
    const char *v = getenv("FAKEBLAS_CREATE");
    if (v && *v)
        g_create_result = atoi(v);
}

EXPORT int cublasCreate_v2(void **handle)
{
    configure();
    g_creates++;
    if (!handle)
        return STATUS_INVALID_VALUE;
    *handle = g_create_result == STATUS_SUCCESS ? (void *)g_handle_storage : NULL;
    return g_create_result;
}

EXPORT int cublasDestroy_v2(void *handle) { return STATUS_SUCCESS; }

EXPORT const char *cublasGetStatusString(int status)
{
    switch (status) {
    case STATUS_SUCCESS: return "the operation completed successfully";
    case STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown error";
    }
}

/* Nothing to compute with: never reached while cublasCreate_v2 fails. */
#define UNSUPPORTED(name) EXPORT int name(void) { return STATUS_NOT_SUPPORTED; }
UNSUPPORTED(cublasSetStream_v2)
UNSUPPORTED(cublasSetMathMode)
UNSUPPORTED(cublasSetWorkspace_v2)
UNSUPPORTED(cublasGemmEx)
UNSUPPORTED(cublasGemmBatchedEx)
UNSUPPORTED(cublasGemmStridedBatchedEx)
UNSUPPORTED(cublasSgemm_v2)
UNSUPPORTED(cublasSgemmBatched)
UNSUPPORTED(cublasSgemmStridedBatched)
UNSUPPORTED(cublasStrsmBatched)
