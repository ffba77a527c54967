"""Runtime shims (issue #11 item 3): a libcudart that is not NVIDIA's.

What it is (NVIDIA's runtime, a replacement under NVIDIA's soname, a shim under its own), what
libggml-cuda imports from it and when each import is first needed, and how the loader chose
between it and the libcudart bundled beside libggml-cuda. run, cuda-state and audit all ask here.
Pure: never imports gdb.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from . import cudafiles, loader

# When libggml-cuda first needs each import: what fails, and when, if the runtime lacks it.
REGISTRATION = ("__cudaRegisterFatBinary", "__cudaRegisterFatBinaryEnd", "__cudaRegisterFunction",
                "__cudaRegisterVar", "__cudaRegisterManagedVar", "__cudaRegisterTexture", "__cudaRegisterSurface",
                "__cudaUnregisterFatBinary", "__cudaInitModule")
LAUNCH = ("__cudaPushCallConfiguration", "__cudaPopCallConfiguration", "cudaLaunchKernel", "cudaLaunchKernelExC",
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
        base = label
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


def runtime_imports(consumer) -> list:
    """What CONSUMER (ElfInfo) imports from libcudart: versioned from a libcudart.so.N, or unversioned cuda*/__cuda*."""
    return [i for i in consumer.imports if cudafiles.is_runtime_soname(i.library) or
            (i.library is None and (i.name.startswith("cuda") or i.name.startswith("__cuda")) and not i.weak)]


def label(path: str) -> str:
    """A runtime named like NVIDIA's (libcudart.so.12) with its directory, so that a fake and
    NVIDIA's copy are told apart in one line; other files by their base name."""
    base = os.path.basename(path)
    if cudafiles.is_runtime_soname(base) and os.path.dirname(path):
        return os.path.join(os.path.basename(os.path.dirname(path)), base)
    return base


def check_imports(runtime, consumer) -> ImportCheck:
    """RUNTIME's exports against what CONSUMER (libggml-cuda, ElfInfo) imports from libcudart."""
    wanted = runtime_imports(consumer)
    version = next((i.version for i in wanted if i.version), None)
    missing = []
    # A file with no .gnu.version at all: ld.so accepts its unversioned definitions, except in the
    # file the reference names (libcudart.so.12 itself), where check_match asserts.
    lenient = not runtime.has_versym and runtime.soname is not None and not cudafiles.is_runtime_soname(runtime.soname)
    for imp in wanted:
        if runtime.exports_symbol(imp.name, imp.version) or (lenient and None in runtime.exports.get(imp.name, ())):
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
    missing.sort(key=lambda m: list(WHEN).index(m.stage))  # what bites first, first
    return ImportCheck(runtime.path, consumer.path, len(wanted), version, missing,
                       version_node=bool(version and (version in runtime.version_definitions
                                                      or getattr(runtime, "sections_missing", False))),
                       unversioned=any(None in runtime.exports.get(i.name, ()) for i in wanted))


def missing_fix(check: ImportCheck, audit_hint: bool = True) -> str:
    node = check.version or "libcudart.so.12"
    names = [m.symbol for m in check.missing]
    what = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "") if names else "them"
    renamed = [f"{m.symbol} is CUDA 12's name for {RENAMED[m.symbol]}, which it has: export both (same signature)"
               for m in check.missing if m.symbol in RENAMED and m.note]
    return (f"export {what} from {os.path.basename(check.runtime)} under the version node {node} (a version "
            f"script: {node} {{ global: cuda*; __cuda*; }};), with the signatures of NVIDIA's cuda_runtime_api.h"
            + (f"; {'; '.join(renamed)}" if renamed else "")
            + ("; 'gdb-cudashim audit --shim " + check.runtime + "' lists every import" if audit_hint else ""))


def soname_interplay(runtime_path: str, soname: str | None, how: str, bundled: str | None) -> str:
    """One sentence: what loading RUNTIME_PATH this way does to the cudart bundled beside libggml-cuda."""
    base = label(runtime_path)
    if how in (loader.PRELOAD, loader.PRELOAD_FILE):
        if cudafiles.is_runtime_soname(soname):
            return (f"{base} is preloaded under NVIDIA's soname {soname}: it satisfies libggml-cuda's "
                    f"DT_NEEDED {soname}, so the bundled copy" + (f" ({bundled})" if bundled else "")
                    + " is never loaded")
        return (f"{base} is preloaded under its own soname {soname!r}: the bundled libcudart is still loaded "
                "for libggml-cuda's DT_NEEDED, and each cuda* import binds to whichever defines it first "
                "(the preload, if it exports it under the same version node)")
    return f"{base} is loaded as {how}"


# ------------------------------------------------- a process's CUDA files --
def _elf(path: str):
    from .elf import ElfProblem, read_elf_cached

    try:
        return read_elf_cached(path)
    except (ElfProblem, OSError):
        return None


def _ggml_paths(tl, pid: int, files: list[dict]) -> list[str]:
    """libggml-cuda as mapped into PID, else as it was asked for in a load that failed."""
    from .calls import role_of

    out = [f["path"] for f in files if f["role"] == "ggml-cuda"]
    if not out:
        out = [l.path for l in tl.loads if l.pid == pid and l.ok is False and role_of(l.path) == "ggml-cuda"
               and os.path.isabs(l.path)]
    return list(dict.fromkeys(out))


def forwarded_to(tl, pid: int, shim: str) -> str | None:
    """The runtime a runtime shim passes its calls on to (calls landing in another libcudart,
    called from the shim): an interposer in front of that runtime."""
    for c in tl.calls:
        if c.pid == pid and c.caller and c.library and os.path.realpath(c.caller) == os.path.realpath(shim) \
                and c.function.startswith("cuda") and os.path.realpath(c.library) != os.path.realpath(shim):
            return c.library
    return None


def import_checks(tl, pid: int, files: list[dict]) -> list[ImportCheck]:
    """Each non-NVIDIA runtime in PID against the libggml-cuda it serves (pyelftools: only when
    such a runtime is there)."""
    shims = [f["path"] for f in files if f["role"] == "runtime" and not cudafiles.is_nvidia_runtime(f["path"])]
    out = []
    for shim in shims:
        info = _elf(shim)
        for ggml in _ggml_paths(tl, pid, files) if info is not None else []:
            consumer = _elf(ggml)
            if consumer is not None:
                out.append(check_imports(info, consumer))
    return out


def describe(tl) -> list[dict]:
    """The report's "libraries": for each process snapshot, every CUDA file with what it is and
    how it got there, the runtime shims' exports against libggml-cuda's imports, the soname
    interplay with the bundled cudart, and the shims' g_* globals."""
    out = []
    for snap in tl.libraries:
        pid = snap.pid
        preloaded = {os.path.realpath(p): how for p, how in loader.preloaded(tl, pid)}
        loads = [l for l in tl.loads if l.pid == pid]
        paths = [f["path"] for f in snap.files]
        env, cwd = loader.process_env(tl, pid)
        needers = [d for d in map(cudafiles.dynamic, paths) if d is not None]
        files = []
        for f in snap.files:
            kind_ = cudafiles.file_kind(f["path"], f["role"])
            how = loader.brought_in_by(f["path"], preloaded, loads, paths)
            d = {"path": f["path"], "role": f["role"], "kind": kind_, "how": how}
            if not loader.is_preload(how) and tl.process_start(pid) is not None:
                # which step of ld.so's search found it, with the process's own environment (the
                # same answer cuda-state gives); a file named by path is found by no step
                dyn = cudafiles.dynamic(f["path"])
                d["found"] = loader.found_by(f["path"], dyn.soname if dyn else None, needers, env, cwd,
                                             []) or loader.BY_PATH
            if f["role"] == "runtime" and kind_ != cudafiles.NVIDIA_RUNTIME:
                target = forwarded_to(tl, pid, f["path"])
                if target is not None:
                    d["kind"], d["forwards_to"] = cudafiles.INTERPOSER, target
            files.append(d)
        checks = import_checks(tl, pid, snap.files)
        files.sort(key=lambda f: 0 if loader.is_preload(f["how"]) else 1)
        out.append({"pid": pid, "when": snap.when, "files": files,
                    "notes": interplay_notes(files, snap.files, tl, pid, checks),
                    "imports": [c.to_dict() | {"summary": c.summary()} for c in checks], "shims": snap.shims})
    return out


def interplay_notes(files: list[dict], raw: list[dict], tl, pid: int, checks=()) -> list[str]:
    """How the runtimes in one process came to be there, in a sentence each."""
    notes = []
    runtimes = [f for f in files if f["role"] == "runtime"]
    ggml = _ggml_paths(tl, pid, raw)
    for f in runtimes:
        if f["kind"] == cudafiles.NVIDIA_RUNTIME:
            continue
        dyn = cudafiles.dynamic(f["path"])
        soname = dyn.soname if dyn is not None else None
        how = f["how"] if f["how"] == loader.PRELOAD else (loader.PRELOAD_FILE if loader.is_preload(f["how"]) else f["how"])
        bundled = None
        for g in ggml:
            for name in (soname, *(n for n in (cudafiles.dynamic(g).needed if cudafiles.dynamic(g) else []) if cudafiles.is_runtime_soname(n))):
                cand = os.path.join(os.path.dirname(g), name or "")
                if name and os.path.isfile(cand) and os.path.realpath(cand) != os.path.realpath(f["path"]):
                    bundled = bundled or cand
        if f.get("forwards_to"):
            notes.append(f"{os.path.basename(f['path'])} ({how}) passes its calls on to {f['forwards_to']}: "
                         "a runtime interposer")
        else:
            notes.append(soname_interplay(f["path"], soname, how, bundled))
    nvidia = [f for f in runtimes if f["kind"] == cudafiles.NVIDIA_RUNTIME]
    others = [f for f in runtimes if f["kind"] != cudafiles.NVIDIA_RUNTIME and not f.get("forwards_to")]
    if nvidia and others:
        real_nvidia = {os.path.realpath(f["path"]) for f in nvidia}
        unused = not any(c.missing for c in checks) and all(loader.is_preload(f["how"]) for f in others) and not any(
            c.pid == pid and c.library and os.path.realpath(c.library) in real_nvidia and c.caller
            and "ggml-cuda" in c.caller for c in tl.calls)
        notes.append("two runtimes in one process: " + ", ".join(
            f"{f['path']} ({f['kind']}, {f['how']})" for f in others + nvidia)
            + (f"; {os.path.basename(others[0]['path'])} defines every cuda* symbol libggml-cuda imports, so NVIDIA's "
               "is loaded but never called by ggml" if unused and checks else ""))
    return notes
