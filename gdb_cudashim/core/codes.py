"""CUDA, cudart and NVML result codes, export-table UUIDs, and symbolic values.

Pure: never imports gdb.
"""
from __future__ import annotations

import re

from .codes_data import CU_RESULT, CUDA_ERROR

# cudaGetErrorString() of NVIDIA's libcudart 12.9 (checked against the real
# library by tests/test_codes.py). ggml prints these after "failed to initialize CUDA: ".
CUDA_ERROR_STRING = {
    0: "no error",
    1: "invalid argument",
    2: "out of memory",
    3: "initialization error",
    4: "driver shutting down",
    34: "CUDA driver is a stub library",
    35: "CUDA driver version is insufficient for CUDA runtime version",
    36: "API call is not supported in the installed CUDA driver",
    46: "CUDA-capable device(s) is/are busy or unavailable",
    100: "no CUDA-capable device is detected",
    101: "invalid device ordinal",
    201: "invalid device context",
    302: "shared object symbol not found",
    303: "shared object initialization failed",
    304: "OS call failed or operation not supported on this OS",
    400: "invalid resource handle",
    500: "named symbol not found",
    801: "operation not supported",
    802: "system not yet initialized",
    803: "system has unsupported display driver / cuda driver combination",
    804: "forward compatibility was attempted on non supported HW",
    999: "unknown error",
}

NVML_RETURN = {
    0: "NVML_SUCCESS",
    1: "NVML_ERROR_UNINITIALIZED",
    2: "NVML_ERROR_INVALID_ARGUMENT",
    3: "NVML_ERROR_NOT_SUPPORTED",
    4: "NVML_ERROR_NO_PERMISSION",
    5: "NVML_ERROR_ALREADY_INITIALIZED",
    6: "NVML_ERROR_NOT_FOUND",
    7: "NVML_ERROR_INSUFFICIENT_SIZE",
    8: "NVML_ERROR_INSUFFICIENT_POWER",
    9: "NVML_ERROR_DRIVER_NOT_LOADED",
    10: "NVML_ERROR_TIMEOUT",
    11: "NVML_ERROR_IRQ_ISSUE",
    12: "NVML_ERROR_LIBRARY_NOT_FOUND",
    13: "NVML_ERROR_FUNCTION_NOT_FOUND",
    14: "NVML_ERROR_CORRUPTED_INFOROM",
    15: "NVML_ERROR_GPU_IS_LOST",
    16: "NVML_ERROR_RESET_REQUIRED",
    17: "NVML_ERROR_OPERATING_SYSTEM",
    18: "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
    19: "NVML_ERROR_IN_USE",
    20: "NVML_ERROR_MEMORY",
    21: "NVML_ERROR_NO_DATA",
    22: "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED",
    23: "NVML_ERROR_INSUFFICIENT_RESOURCES",
    24: "NVML_ERROR_FREQ_NOT_SUPPORTED",
    25: "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
    26: "NVML_ERROR_DEPRECATED",
    27: "NVML_ERROR_NOT_READY",
    28: "NVML_ERROR_GPU_NOT_FOUND",
    29: "NVML_ERROR_INVALID_STATE",
    999: "NVML_ERROR_UNKNOWN",
}

PROC_ADDRESS_STATUS = {0: "CU_GET_PROC_ADDRESS_SUCCESS", 1: "CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND",
                       2: "CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT"}
PROC_ADDRESS_FLAGS = {0: "CU_GET_PROC_ADDRESS_DEFAULT", 1: "CU_GET_PROC_ADDRESS_LEGACY_STREAM",
                      2: "CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM"}

# Private export tables cudart asks the driver for (names as ZLUDA's dark_api uses
# them), keyed by the first 4 bytes of the UUID as cuda-stack traces print them.
EXPORT_TABLES = {
    "6bd5fb6c": "CUDART_INTERFACE",
    "a094798c": "TOOLS_RUNTIME_CALLBACK_HOOKS",
    "42d85a81": "TOOLS_TLS",
    "c693336e": "CONTEXT_LOCAL_STORAGE_INTERFACE_V0301",
    "0ca50b8c": "CTX_CREATE_BYPASS",
    "195bcbf4": "HEAP_ACCESS",
    "b10541e1": "DEVICE_EXTENDED_RT",
    "d4082055": "INTEGRITY_CHECK",
    "263e8860": "CONTEXT_CHECKS",
    "f8cff951": "f8cff951 table (probed first; failure tolerated)",
}
CUDART_INTERFACE = "6bd5fb6c-5bf4-e74a-8987-d93912fd9df9"


def uuid_str(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def export_table_name(uuid: str) -> str:
    return EXPORT_TABLES.get(uuid.lower()[:8], "unknown table")


def cu_name(code: int | None) -> str:
    if code is None:
        return "?"
    return CU_RESULT.get(code, f"CUresult {code}")


def cuda_name(code: int | None) -> str:
    if code is None:
        return "?"
    return CUDA_ERROR.get(code, f"cudaError {code}")


def nvml_name(code: int | None) -> str:
    if code is None:
        return "?"
    return NVML_RETURN.get(code, f"nvmlReturn {code}")


# cublasStatus_t (cublas_api.h)
CUBLAS_STATUS = {0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED",
                 7: "CUBLAS_STATUS_INVALID_VALUE", 8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
                 13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
                 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}


def cublas_name(code: int | None) -> str:
    if code is None:
        return "?"
    return CUBLAS_STATUS.get(code, f"cublasStatus {code}")


def result_name(kind: str, code: int | None) -> str:
    return {"CUresult": cu_name, "cudaError_t": cuda_name, "nvmlReturn_t": nvml_name,
            "cublasStatus_t": cublas_name}.get(kind, lambda c: str(c))(code)


def ggml_init_error(text: str) -> int | None:
    """The cudaError_t behind ggml's "failed to initialize CUDA: <cudaGetErrorString>" line, or None
    when TEXT is not that line (or names no error this table knows)."""
    m = re.search(r"failed to initialize CUDA: (.*)", text)
    return cuda_error_from_message(m.group(1)) if m else None


def cuda_error_from_message(message: str) -> int | None:
    """The cudaError_t whose cudaGetErrorString() is MESSAGE (exact, then prefix)."""
    msg = message.strip()
    for code, text in CUDA_ERROR_STRING.items():
        if msg == text:
            return code
    for code, text in CUDA_ERROR_STRING.items():
        if msg.startswith(text):
            return code
    return None


class UnknownValue(ValueError):
    pass


_BY_NAME: dict[str, int] = {}
for _table in (CU_RESULT, CUDA_ERROR, NVML_RETURN, CUBLAS_STATUS):
    for _code, _name in _table.items():
        _BY_NAME.setdefault(_name.lower(), _code)


def parse_value(text: str) -> int:
    """A number (decimal, 0x...) or a symbolic code: CUDA_ERROR_NO_DEVICE, cudaErrorNoDevice,
    NVML_ERROR_NOT_FOUND, SUCCESS."""
    t = text.strip()
    if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", t):
        return int(t, 16)
    if re.fullmatch(r"[-+]?[0-9]+", t):
        return int(t, 10)  # "0123" is 123 (int(t, 0) refuses a leading zero)
    low = t.lower()
    if low in ("success", "cuda_success", "cudasuccess", "nvml_success"):
        return 0
    if low in _BY_NAME:
        return _BY_NAME[low]
    for prefix in ("cuda_error_", "cudaerror", "nvml_error_"):
        if (prefix + low) in _BY_NAME:
            return _BY_NAME[prefix + low]
    raise UnknownValue(f"'{text}' is neither a number nor a known CUresult, cudaError_t or nvmlReturn_t name")
