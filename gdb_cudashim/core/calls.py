"""Which CUDA / cudart / NVML entry points the tracer follows, and how to read them.

An argument kind tells the gdb layer what to read (x86-64 SysV: rdi rsi rdx rcx r8 r9):
  int / uint / u64 / ptr  - the register itself
  str                     - a NUL-terminated string at the pointer, read at entry
  uuid                    - 16 bytes at the pointer, read at entry
  out_i32 / out_u32 / out_u64 / out_ptr / out_str - read through the pointer at return
  out_struct:NAME         - the struct NAME (devprops.STRUCTS: its size) at the pointer, read at
                            return and decoded by decode_struct
Pure: never imports gdb.
"""
from __future__ import annotations

from .record import record

ARG_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


@record
class Spec:
    name: str
    layer: str  # driver | runtime | nvml | cublas
    args: tuple[tuple[str, str], ...]
    result: str  # CUresult | cudaError_t | nvmlReturn_t | cublasStatus_t | str
    phase: str = "init"  # init | use: the first use after init (memory, cuBLAS, the VMM pool), never the init's failure

    @property
    def first_use(self) -> bool:
        return self.phase == "use"

    def arg_index(self, name: str) -> int:
        for i, (n, _) in enumerate(self.args):
            if n == name:
                return i
        raise KeyError(name)


def _s(name, layer, result, *args):
    return Spec(name, layer, tuple(args), result)


def _use(name, layer, result, *args):
    return Spec(name, layer, tuple(args), result, "use")


_D, _R, _N, _B = "driver", "runtime", "nvml", "cublas"
_CU, _RT, _NV, _BS = "CUresult", "cudaError_t", "nvmlReturn_t", "cublasStatus_t"

SPECS: dict[str, Spec] = {s.name: s for s in (
    _s("cuInit", _D, _CU, ("flags", "uint")),
    _s("cuDriverGetVersion", _D, _CU, ("driverVersion", "out_i32")),
    _s("cuGetProcAddress_v2", _D, _CU, ("symbol", "str"), ("pfn", "out_ptr"), ("cudaVersion", "int"),
       ("flags", "u64"), ("symbolStatus", "out_i32")),
    _s("cuGetProcAddress", _D, _CU, ("symbol", "str"), ("pfn", "out_ptr"), ("cudaVersion", "int"), ("flags", "u64")),
    _s("cuGetExportTable", _D, _CU, ("ppExportTable", "out_ptr"), ("pExportTableId", "uuid")),
    _s("cuDeviceGetCount", _D, _CU, ("count", "out_i32")),
    _s("cuDeviceGet", _D, _CU, ("device", "out_i32"), ("ordinal", "int")),
    _s("cuDeviceGetName", _D, _CU, ("name", "out_str"), ("len", "int"), ("dev", "int")),
    _s("cuDeviceTotalMem_v2", _D, _CU, ("bytes", "out_u64"), ("dev", "int")),
    _s("cuDeviceGetAttribute", _D, _CU, ("pi", "out_i32"), ("attrib", "int"), ("dev", "int")),
    _s("cuDevicePrimaryCtxRetain", _D, _CU, ("pctx", "out_ptr"), ("dev", "int")),
    _s("cuMemGetAllocationGranularity", _D, _CU, ("granularity", "out_u64"), ("prop", "ptr"), ("option", "int")),
    # the road past init (#19): what ollama's probe and ggml's first use ask of the driver
    _s("cuMemGetInfo_v2", _D, _CU, ("free", "out_u64"), ("total", "out_u64")),
    _s("cuDeviceGetPCIBusId", _D, _CU, ("pciBusId", "out_str"), ("len", "int"), ("dev", "int")),
    _s("cuDeviceGetUuid_v2", _D, _CU, ("uuid", "out_struct:CUuuid"), ("dev", "int")),
    _s("cuDeviceGetUuid", _D, _CU, ("uuid", "out_struct:CUuuid"), ("dev", "int")),
    # ggml's VMM pool, at its first allocation
    _use("cuMemAddressReserve", _D, _CU, ("ptr", "out_u64"), ("size", "u64"), ("alignment", "u64"), ("addr", "u64"),
         ("flags", "u64")),
    _use("cuMemCreate", _D, _CU, ("handle", "out_u64"), ("size", "u64"), ("prop", "ptr"), ("flags", "u64")),
    _use("cuMemMap", _D, _CU, ("ptr", "u64"), ("size", "u64"), ("offset", "u64"), ("handle", "u64"), ("flags", "u64")),
    _use("cuMemSetAccess", _D, _CU, ("ptr", "u64"), ("size", "u64"), ("desc", "ptr"), ("count", "u64")),
    _s("cudaGetDeviceCount", _R, _RT, ("count", "out_i32")),
    _s("cudaGetDevice", _R, _RT, ("device", "out_i32")),
    _s("cudaSetDevice", _R, _RT, ("device", "int")),
    _s("cudaRuntimeGetVersion", _R, _RT, ("runtimeVersion", "out_i32")),
    _s("cudaDriverGetVersion", _R, _RT, ("driverVersion", "out_i32")),
    _s("cudaGetDeviceProperties_v2", _R, _RT, ("prop", "out_struct:cudaDeviceProp"), ("device", "int")),
    _s("cudaMemGetInfo", _R, _RT, ("free", "out_u64"), ("total", "out_u64")),
    _s("cudaDeviceGetAttribute", _R, _RT, ("value", "out_i32"), ("attr", "int"), ("device", "int")),
    _s("cudaGetErrorString", _R, "str", ("error", "int")),
    # the first use: a model's buffers, and cuBLAS's handle at the first matrix product
    _use("cudaMalloc", _R, _RT, ("devPtr", "out_ptr"), ("size", "u64")),
    _use("cudaMallocHost", _R, _RT, ("ptr", "out_ptr"), ("size", "u64")),
    _use("cublasCreate_v2", _B, _BS, ("handle", "out_ptr")),
    _s("nvmlInit_v2", _N, _NV),
    _s("nvmlInit", _N, _NV),
    _s("nvmlInitWithFlags", _N, _NV, ("flags", "uint")),
    _s("nvmlDeviceGetCount_v2", _N, _NV, ("deviceCount", "out_u32")),
    _s("nvmlDeviceGetHandleByIndex_v2", _N, _NV, ("index", "uint"), ("device", "out_ptr")),
    _s("nvmlDeviceGetHandleByUUID", _N, _NV, ("uuid", "str"), ("device", "out_ptr")),
    _s("nvmlDeviceGetMemoryInfo", _N, _NV, ("device", "ptr"), ("memory", "out_struct:nvmlMemory")),
    _s("nvmlSystemGetDriverVersion", _N, _NV, ("version", "out_str"), ("length", "uint")),
)}

def struct_size(kind: str) -> int | None:
    """The size to read for an out_struct:NAME argument."""
    from .devprops import STRUCTS

    return STRUCTS.get(kind.partition(":")[2]) if kind.startswith("out_struct:") else None


def decode_struct(kind: str, data: bytes | None) -> dict | None:
    """An out_struct:NAME argument's bytes as a dict of fields (None when unreadable)."""
    from . import devprops

    size = struct_size(kind)
    if size is None or data is None or len(data) != size:
        return None
    return devprops.decode(kind.partition(":")[2], data)


# ggml's CUDA_CHECK / CU_CHECK / CUBLAS_CHECK failure, just before it aborts the process:
# ggml_cuda_error(stmt, func, file, line, msg) in every libggml-cuda (exported). A rare stop that
# names the failed statement from its arguments, wherever the log text goes.
CHECK_FUNCTIONS = ("_Z15ggml_cuda_errorPKcS0_S0_iS0_",)
CHECK_ARGS = ("statement", "function", "file", "line", "message")
VMM_ATTRIBUTE = 102  # CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: ggml takes its VMM pool when 1
# GGML_ABORT / GGML_ASSERT: ggml_abort(file, line, fmt, ...) in libggml-base, just before abort():
# the rare stop that keeps ggml's own words, wherever its stderr goes
ABORT_FUNCTIONS = ("ggml_abort",)

# Entry points whose first call runs ggml's CUDA init: the window in which write
# capture and lookup tracing are armed. The first is exported by every libggml-cuda.
# Driver entry points with a newer ABI under a versioned name (cuda.h's "#define cuX cuX_v2"):
# name -> (the cudaVersion from which cuGetProcAddress must hand back that variant, its name).
# The 3.2 variants take 64-bit sizes (cuMemGetInfo's v1 writes 32-bit ones), the 4.0 ones the
# context-stack semantics, 11.0 the primary-context release, 11.4 the MIG-aware UUID.
VERSIONED_ENTRY_POINTS = {
    "cuDeviceTotalMem": (3020, "cuDeviceTotalMem_v2"), "cuMemGetInfo": (3020, "cuMemGetInfo_v2"),
    "cuMemAlloc": (3020, "cuMemAlloc_v2"), "cuMemFree": (3020, "cuMemFree_v2"),
    "cuMemAllocHost": (3020, "cuMemAllocHost_v2"), "cuMemAllocPitch": (3020, "cuMemAllocPitch_v2"),
    "cuMemGetAddressRange": (3020, "cuMemGetAddressRange_v2"), "cuMemcpyHtoD": (3020, "cuMemcpyHtoD_v2"),
    "cuMemcpyDtoH": (3020, "cuMemcpyDtoH_v2"), "cuMemcpyDtoD": (3020, "cuMemcpyDtoD_v2"),
    "cuMemsetD8": (3020, "cuMemsetD8_v2"), "cuMemsetD32": (3020, "cuMemsetD32_v2"),
    "cuModuleGetGlobal": (3020, "cuModuleGetGlobal_v2"), "cuMemHostGetDevicePointer": (3020, "cuMemHostGetDevicePointer_v2"),
    "cuCtxCreate": (3020, "cuCtxCreate_v2"), "cuCtxDestroy": (4000, "cuCtxDestroy_v2"),
    "cuCtxPopCurrent": (4000, "cuCtxPopCurrent_v2"), "cuCtxPushCurrent": (4000, "cuCtxPushCurrent_v2"),
    "cuStreamDestroy": (4000, "cuStreamDestroy_v2"), "cuEventDestroy": (4000, "cuEventDestroy_v2"),
    "cuDevicePrimaryCtxRelease": (11000, "cuDevicePrimaryCtxRelease_v2"),
    "cuDevicePrimaryCtxReset": (11000, "cuDevicePrimaryCtxReset_v2"),
    "cuDevicePrimaryCtxSetFlags": (11000, "cuDevicePrimaryCtxSetFlags_v2"),
    "cuDeviceGetUuid": (11040, "cuDeviceGetUuid_v2"), "cuGetProcAddress": (12000, "cuGetProcAddress_v2"),
}

WINDOW_FUNCTIONS = ("_Z14ggml_cuda_infov", "ggml_backend_cuda_reg", "cudaGetDeviceCount")

# Lookups the rules and the report's table read: their returns are always watched.
KEY_LOOKUPS = ("cuGetProcAddress_v2", "cuGetProcAddress", "cuGetExportTable", "cuInit", "cuDriverGetVersion")

# Libraries whose loading (or failure to load) matters, by file name.
CUDA_LIBRARY_MARKERS = ("libcuda.so", "libcudart", "libggml-cuda", "libnvidia-ml", "libcublas", "ggml-cuda")


def is_cuda_library(path: str | None) -> bool:
    if not path:
        return False
    base = path.rsplit("/", 1)[-1]
    return any(m in base for m in CUDA_LIBRARY_MARKERS)


def is_cuda_symbol(name: str | None) -> bool:
    if not name:
        return False
    return (name.startswith("cu") and len(name) > 2 and (name[2].isupper() or name.startswith("cuda"))) or name.startswith("nvml")


def role_of(path: str | None) -> str | None:
    """driver | runtime | ggml-cuda | nvml | cublas, from a file name."""
    if not path:
        return None
    base = path.rsplit("/", 1)[-1]
    if base.startswith("libcudart"):
        return "runtime"
    if base.startswith("libcuda.so") or base.startswith("libcuda-"):
        return "driver"
    if "ggml-cuda" in base:
        return "ggml-cuda"
    if base.startswith("libnvidia-ml"):
        return "nvml"
    if base.startswith("libcublas"):
        return "cublas"
    return None
