"""What each CUDA file is: the one home of that question for run, cuda-state, audit, diff and the rules.

A file has a role (what it stands in for: the driver, the runtime, NVML, or it is libggml-cuda)
and a kind (whose it is and how it plays that role). Roles and kinds are the constants below;
the strings are what the report shows, and no code compares a display string of its own.

- role: by the file's name (core/calls.role_of), else by what its dynamic symbol table exports
  (cuInit: a driver; cudaGetDeviceCount or __cudaRegisterFatBinary: a runtime; nvmlInit_v2:
  NVML), for any file, preloaded or not: an interposer under its own soname takes the calls of
  the role it exports, however it got into the process.
- kind: NVIDIA's own files (by their versioned file names; the runtime by the CUDART_INTERFACE
  table it carries and its shape), stubs, libggml-cuda, the bundled shim (by a marker symbol only
  it exports), an interposer (its own soname and a dlsym hook), a runtime replacement (NVIDIA's
  soname) or a runtime shim under its own soname, else a driver/NVML shim.
Cheap: the dynamic section alone (core/dynsym), never pyelftools. Pure: never imports gdb.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache

from .calls import role_of

# ------------------------------------------------------------------ roles --
DRIVER = "driver"
RUNTIME = "runtime"
NVML = "nvml"
GGML_CUDA = "ggml-cuda"
CUDA_ROLES = (DRIVER, RUNTIME, NVML, GGML_CUDA)
SHIM_ROLES = (DRIVER, RUNTIME, NVML)  # what a shim can stand in for
ROLE_SONAMES = {DRIVER: "libcuda.so.1", RUNTIME: "libcudart.so.12", NVML: "libnvidia-ml.so.1"}

# ------------------------------------------------------------------ kinds --
NVIDIA_DRIVER = "NVIDIA driver"
NVIDIA_NVML = "NVIDIA NVML"
NVIDIA_RUNTIME = "NVIDIA runtime"
GGML_BACKEND = "ggml CUDA backend"
STUB = "CUDA stub library"
BUNDLED_SHIM = "bundled cudashim"
DRIVER_SHIM = "driver shim"
NVML_SHIM = "NVML shim"
DRIVER_INTERPOSER = "interposer"  # a driver-role file under its own soname that hooks dlsym (HAMi-core's libvgpu.so)
REPLACEMENT = "runtime replacement"
OWN_SONAME = "runtime shim under its own soname"
INTERPOSER = "runtime interposer"  # a runtime shim seen passing its calls on (run only: it needs the calls)
OTHER = "other"
# NVIDIA's own files, a stub, or libggml-cuda: never a shim, and their globals are never read
# (stripped, and libggml-cuda's symbol table is huge)
NOT_SHIM_KINDS = (NVIDIA_DRIVER, NVIDIA_NVML, NVIDIA_RUNTIME, GGML_BACKEND, STUB)
NOT_SHIMS = (*NOT_SHIM_KINDS, OTHER)

RUNTIME_SONAME = re.compile(r"libcudart\.so\.(\d+)$")
NVIDIA_DRIVER_FILE = re.compile(r"lib(cuda|nvidia-ml)\.so\.\d{3}\.\d+(\.\d+)?$")
# NVIDIA's cudart asks the driver for its private tables by UUID (cuGetExportTable), so it carries
# their bytes; CUDART_INTERFACE, 6bd5fb6c-5bf4-e74a-8987-d93912fd9df9 (see DOMAIN.md, ZLUDA's dark_api).
CUDART_INTERFACE_UUID = bytes.fromhex("6bd5fb6c5bf4e74a8987d93912fd9df9")
NVIDIA_EXPORTS = 300  # cudart 12.9 exports 436 names, 13.5 459; a stand-in exports what it implements
RUNTIME_MARKERS = ("cudaGetDeviceCount", "__cudaRegisterFatBinary")  # a file exporting either is a runtime
# what a file named otherwise exports, for the role it then plays (the first found wins)
ROLE_MARKERS = (("cuInit", DRIVER), *((m, RUNTIME) for m in RUNTIME_MARKERS), ("nvmlInit_v2", NVML))
# a name only shim/cudashim.c exports: a user's shim with the seeds' g_in_init_phase / g_gpu_info
# globals is the user's own shim, not ours
BUNDLED_SHIM_MARKER = "gdb_cudashim_bundled_shim"


def dynamic(path: str):
    """PATH's dynamic symbols and tags (core/dynsym, cached), or None where they cannot be read."""
    from .dynsym import DynsymError, read_cached

    try:
        return read_cached(path)
    except (DynsymError, OSError, ValueError):
        return None


# ------------------------------------------------------------------ roles --
def role(path: str) -> str | None:
    """DRIVER | RUNTIME | NVML | GGML_CUDA for a file in a process (or on disk), else None."""
    by_name = role_of(path)
    if by_name in CUDA_ROLES:
        return by_name
    if by_name is not None:  # libcublas and the like: named, and not one of these
        return None
    dyn = dynamic(path)
    if dyn is not None:
        for name, what in ROLE_MARKERS:
            if dyn.dlsym_finds(name):
                return what
    return None


def shim_role(info) -> str | None:
    """What a file given as a shim (audit --shim) stands in for, from its ElfInfo; None: it exports
    no CUDA entry point at all (not a shim). Broader than role(): a partial shim that exports only
    some cu*/cuda*/nvml* names still says what it is meant to be."""
    if info.soname in ROLE_SONAMES.values():
        return {v: k for k, v in ROLE_SONAMES.items()}[info.soname]
    if is_runtime_soname(info.soname):  # libcudart.so.13 as well as .12
        return RUNTIME
    for name, what in ROLE_MARKERS:
        if name in info.exports:
            return what
    for what, prefix in ((DRIVER, "cu"), (RUNTIME, "cuda"), (NVML, "nvml")):
        if any(n.startswith(prefix) and n[len(prefix):][:1].isupper() for n in info.exports):
            return what
    return None


def consumer_kind(info) -> str | None:
    """ "ggml-cuda" or "cudart" for a file audited as a consumer of the shims, else None."""
    base = os.path.basename(info.path)
    if "ggml-cuda" in base or "libggml-cuda" in (info.soname or ""):
        return GGML_CUDA
    if (info.soname or "").startswith("libcudart") or base.startswith("libcudart"):
        return "cudart"
    return None


# ------------------------------------------------------------------ kinds --
def is_runtime_soname(name: str | None) -> bool:
    return bool(name and RUNTIME_SONAME.fullmatch(os.path.basename(name)))


@lru_cache(maxsize=64)
def _carries_interface(path: str, mtime: float, size: int) -> bool:
    from .files import map_regular

    try:
        with map_regular(path) as m:
            return m.find(CUDART_INTERFACE_UUID) >= 0 and m.find(b"libcuda.so.1\0") >= 0
    except (OSError, ValueError):
        return False


def is_nvidia_runtime(path: str) -> bool:
    """NVIDIA's libcudart: it dlopen()s libcuda.so.1 and asks it for CUDART_INTERFACE, so it
    carries both the name and the table's UUID; and it is the shared runtime, with NVIDIA's soname
    and its hundreds of exports. A fake or forwarding runtime carries neither pair; a shim built by
    nvcc carries both (the static cudart is linked in) but not the shape."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not _carries_interface(os.path.realpath(path), st.st_mtime, st.st_size):
        return False
    dyn = dynamic(path)
    return dyn is not None and is_runtime_soname(dyn.soname) and len(dyn.definitions) >= NVIDIA_EXPORTS


def exports_runtime(exports) -> bool:
    """EXPORTS (names) hold the runtime's entry points."""
    return any(name in exports for name in RUNTIME_MARKERS)


def is_runtime_file(path: str) -> bool:
    """PATH is something ld.so could load as a runtime: a regular 64-bit ELF whose dynamic symbols
    hold the runtime's entry points (not an empty file, a truncated copy or a 32-bit build)."""
    dyn = dynamic(path)
    return dyn is not None and any(dyn.dlsym_finds(n) for n in RUNTIME_MARKERS)


def runtime_kind(path: str, soname: str | None) -> str:
    """What a file in the runtime role is."""
    if is_nvidia_runtime(path):
        return NVIDIA_RUNTIME
    if is_runtime_soname(soname or os.path.basename(path)):
        return REPLACEMENT
    return OWN_SONAME


def is_stub(path: str) -> bool:
    return "/stubs/" in os.path.realpath(path) or "/stubs/" in path


def file_kind(path: str, role_: str) -> str:
    """What a file in ROLE_ is."""
    real = os.path.realpath(path)
    dyn = dynamic(path)
    soname = dyn.soname if dyn is not None else None
    if role_ == RUNTIME:
        return runtime_kind(path, soname)
    if role_ == GGML_CUDA:
        return GGML_BACKEND
    if is_stub(path):
        return STUB
    if NVIDIA_DRIVER_FILE.search(os.path.basename(real)):
        return NVIDIA_DRIVER if role_ == DRIVER else NVIDIA_NVML
    if dyn is not None and dyn.dlsym_finds(BUNDLED_SHIM_MARKER):
        return BUNDLED_SHIM
    if role_ == DRIVER and soname != "libcuda.so.1" and dyn is not None and dyn.dlsym_finds("dlsym"):
        return DRIVER_INTERPOSER
    return DRIVER_SHIM if role_ == DRIVER else NVML_SHIM


def made_by_nvidia(path: str, role_: str) -> bool:
    """NVIDIA's own files, a stub, or libggml-cuda: never a shim. One answer, from file_kind."""
    return file_kind(path, role_) in NOT_SHIM_KINDS


def classify(path: str) -> str:
    """What a file is, in a CUDA role or not (OTHER)."""
    r = role(path)
    return file_kind(path, r) if r is not None else OTHER


def identify(path: str):
    """(role, kind, ElfInfo or None) of a file that plays a CUDA role, else None."""
    from .elf import ElfProblem, read_elf_cached

    r = role(path)
    if r is None:
        return None
    try:
        info = read_elf_cached(path)
    except (ElfProblem, OSError):
        info = None
    return r, file_kind(path, r), info


def is_shim(entry: dict) -> bool:
    """A file in a CUDA role that is not NVIDIA's (a runtime replacement or shim, a driver or NVML
    shim): its g_* globals are worth reading. ENTRY: {"role", "kind"}."""
    return entry["role"] in SHIM_ROLES and entry["kind"] not in NOT_SHIMS


def cudart_version(path: str) -> str | None:
    """The CUDA version NVIDIA's file name carries (libcudart.so.12.9.79 -> 12.9.79)."""
    real = os.path.basename(os.path.realpath(path))
    m = re.search(r"\.so\.(\d+(?:\.\d+)*)$", real)
    return m.group(1) if m else None
