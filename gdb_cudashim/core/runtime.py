"""Runtime shims (issue #11 item 3): a libcudart that is not NVIDIA's.

What it is (NVIDIA's runtime, a replacement under NVIDIA's soname, a shim under its own), what
libggml-cuda imports from it and when each import is first needed, and how the loader chose
between it and the libcudart bundled beside libggml-cuda. run, cuda-state and audit all ask here.
Pure: never imports gdb.
"""
from __future__ import annotations

import mmap
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache

RUNTIME_SONAME = re.compile(r"libcudart\.so\.(\d+)$")
# NVIDIA's cudart asks the driver for its private tables by UUID (cuGetExportTable), so it carries
# their bytes; CUDART_INTERFACE, 6bd5fb6c-5bf4-e74a-8987-d93912fd9df9 (see DOMAIN.md, ZLUDA's dark_api).
CUDART_INTERFACE_UUID = bytes.fromhex("6bd5fb6c5bf4e74a8987d93912fd9df9")

NVIDIA_RUNTIME = "NVIDIA runtime"
REPLACEMENT = "runtime replacement"
OWN_SONAME = "runtime shim under its own soname"
INTERPOSER = "runtime interposer"

# When libggml-cuda first needs each import: what fails, and when, if the runtime lacks it.
REGISTRATION = ("__cudaRegisterFatBinary", "__cudaRegisterFatBinaryEnd", "__cudaRegisterFunction",
                "__cudaRegisterVar", "__cudaRegisterManagedVar", "__cudaRegisterTexture", "__cudaRegisterSurface",
                "__cudaUnregisterFatBinary", "__cudaInitModule")
LAUNCH = ("__cudaPushCallConfiguration", "__cudaPopCallConfiguration", "cudaLaunchKernel",
          "cudaLaunchCooperativeKernel", "cudaLaunchHostFunc")
INIT_PATH = ("cudaGetDeviceCount", "cudaGetDeviceProperties_v2", "cudaGetDeviceProperties", "cudaDeviceGetAttribute",
             "cudaMemGetInfo", "cudaSetDevice", "cudaGetDevice", "cudaGetErrorString", "cudaGetLastError",
             "cudaRuntimeGetVersion", "cudaDriverGetVersion", "cudaDeviceGetPCIBusId")
WHEN = {
    "registration": "at dlopen, before any CUDA call: libggml-cuda's constructors register its kernels "
                    "(nvcc's __cudaRegisterFatBinary & co.)",
    "launch": "at the first kernel launch (nvcc turns <<<...>>> into __cudaPushCallConfiguration + cudaLaunchKernel)",
    "init": "in ggml_cuda_init, on the device discovery path",
    "later": "after init (allocations, copies, streams, graphs)",
}
# CUDA 12's headers #define the old names to these: a shim exporting only the old name misses them.
RENAMED = {"cudaGetDeviceProperties_v2": "cudaGetDeviceProperties"}


def stage(name: str) -> str:
    if name in REGISTRATION:
        return "registration"
    if name in LAUNCH:
        return "launch"
    if name in INIT_PATH:
        return "init"
    return "later"


def is_runtime_soname(name: str | None) -> bool:
    return bool(name and RUNTIME_SONAME.fullmatch(os.path.basename(name)))


@lru_cache(maxsize=64)
def _carries_interface(path: str, mtime: float, size: int) -> bool:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(CUDART_INTERFACE_UUID) >= 0 and m.find(b"libcuda.so.1\0") >= 0
    except (OSError, ValueError):
        return False


def is_nvidia_runtime(path: str) -> bool:
    """NVIDIA's libcudart: it dlopen()s libcuda.so.1 and asks it for CUDART_INTERFACE, so it
    carries both the name and the table's UUID. A fake or forwarding runtime carries neither pair."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return _carries_interface(os.path.realpath(path), st.st_mtime, st.st_size)


def exports_runtime(exports) -> bool:
    """EXPORTS (names) hold the runtime's entry points."""
    return "cudaGetDeviceCount" in exports or "__cudaRegisterFatBinary" in exports


def kind(path: str, soname: str | None) -> str:
    """What a file in the runtime role is."""
    if is_nvidia_runtime(path):
        return NVIDIA_RUNTIME
    if is_runtime_soname(soname or os.path.basename(path)):
        return REPLACEMENT
    return OWN_SONAME


@dataclass
class Missing:
    symbol: str
    version: str | None
    stage: str  # registration | launch | init | later
    note: str = ""  # e.g. it exports only the pre-CUDA-12 name


@dataclass
class ImportCheck:
    runtime: str
    consumer: str
    imported: int  # what the consumer imports from the runtime's soname
    version: str | None  # the version node the imports ask for (libcudart.so.12)
    missing: list[Missing]
    version_node: bool  # the runtime defines that version node
    unversioned: bool  # it satisfies them with unversioned definitions (accepted by ld.so)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        base = os.path.basename
        if not self.missing:
            how = "" if self.version_node or not self.unversioned else " (unversioned; ld.so accepts them)"
            return f"{base(self.runtime)} exports all {self.imported} symbols {base(self.consumer)} imports" \
                   + (f" @{self.version}" if self.version else "") + how
        by_stage: dict[str, list[str]] = {}
        for m in self.missing:
            by_stage.setdefault(m.stage, []).append(m.symbol)
        parts = [f"{stage_}: {', '.join(names[:6])}" + (f" (+{len(names) - 6})" if len(names) > 6 else "")
                 for stage_, names in sorted(by_stage.items(), key=lambda kv: list(WHEN).index(kv[0]))]
        return (f"{base(self.runtime)} lacks {len(self.missing)} of the {self.imported} symbols {base(self.consumer)} "
                f"imports" + (f" @{self.version}" if self.version else "") + " (" + "; ".join(parts) + ")")


def check_imports(runtime, consumer) -> ImportCheck:
    """RUNTIME's exports against what CONSUMER (libggml-cuda, ElfInfo) imports from libcudart."""
    wanted = [i for i in consumer.imports if is_runtime_soname(i.library) or
              (i.library is None and (i.name.startswith("cuda") or i.name.startswith("__cuda")) and not i.weak)]
    version = next((i.version for i in wanted if i.version), None)
    missing = []
    for imp in wanted:
        if runtime.exports_symbol(imp.name, imp.version):
            continue
        note = ""
        old = RENAMED.get(imp.name)
        if old and runtime.exports_symbol(old):
            note = (f"it exports {old}, but CUDA 12's headers #define {old} to {imp.name}: code built against "
                    f"them imports {imp.name}")
        elif imp.version and imp.name in runtime.exports:
            versions = sorted(v or "unversioned" for v in runtime.exports[imp.name])
            note = f"it exports {imp.name} only as {', '.join(versions)}"
        missing.append(Missing(imp.name, imp.version, stage(imp.name), note))
    return ImportCheck(runtime.path, consumer.path, len(wanted), version, missing,
                       version_node=bool(version and version in runtime.version_definitions),
                       unversioned=any(None in runtime.exports.get(i.name, ()) for i in wanted))


def missing_fix(check: ImportCheck) -> str:
    node = check.version or "libcudart.so.12"
    return (f"export them from {os.path.basename(check.runtime)} under the version node {node} (a version script: "
            f"{node} {{ global: cuda*; __cuda*; }};), with the signatures of NVIDIA's cuda_runtime_api.h; "
            "'gdb-cudashim audit --shim " + check.runtime + "' lists every import")


def soname_interplay(runtime_path: str, soname: str | None, how: str, bundled: str | None) -> str:
    """One sentence: what loading RUNTIME_PATH this way does to the cudart bundled beside libggml-cuda."""
    base = os.path.basename(runtime_path)
    if how in ("LD_PRELOAD", "ld.so.preload"):
        if is_runtime_soname(soname):
            return (f"{base} is preloaded under NVIDIA's soname {soname}: it satisfies libggml-cuda's "
                    f"DT_NEEDED {soname}, so the bundled copy" + (f" ({bundled})" if bundled else "")
                    + " is never loaded")
        return (f"{base} is preloaded under its own soname {soname!r}: the bundled libcudart is still loaded "
                "for libggml-cuda's DT_NEEDED, and each cuda* import binds to whichever defines it first "
                "(the preload, if it exports it under the same version node)")
    return f"{base} is loaded as {how}"
