"""The first use, after init (issue #19, "the road past init"): the walls a shim meets once ggml has
its devices, at the model's first buffer, cuBLAS's handle, the VMM pool and the first kernel launch.
Users see them as "unable to allocate CUDA0 buffer", "cuBLAS error", "no kernel image is available",
or a runner that aborts after "inference compute" said library=CUDA.

Two kinds of evidence, read together:
- ggml's failed check (timeline.Check: the arguments of ggml_cuda_error, the CUDA_CHECK / CU_CHECK /
  CUBLAS_CHECK that aborts the process): the statement, ggml's function and line, the error text;
- the first-use calls the run recorded (calls.Spec.first_use): cudaMalloc, cublasCreate_v2, the
  VMM calls, with their arguments and results.
Each rule is Timeline -> list[Finding]. Pure: never imports gdb.
"""
from __future__ import annotations

import re

from . import codes
from .calls import VMM_ATTRIBUTE
from .finding import Finding, base as _base
from .rules_device import _capabilities, _cuda_count, ggml_in_run
from .rules_road import _prog
from .timeline import Call, Check, Timeline

NO_KERNEL_IMAGE = 209  # cudaErrorNoKernelImageForDevice
INVALID_DEVICE_FUNCTION = 98  # cudaErrorInvalidDeviceFunction: the same wall, as older runtimes say it
VMM_CALLS = ("cuMemAddressReserve", "cuMemCreate", "cuMemMap", "cuMemSetAccess")
MIB = 1 << 20


def _mib(n) -> str:
    return f"{n / MIB:.1f} MiB" if isinstance(n, int) else "?"


def _use_calls(tl: Timeline, pid: int) -> list[Call]:
    return [c for c in tl.calls if c.pid == pid and c.spec is not None and c.spec.first_use and c.returned]


# ggml's functions that check during its init (ggml_backend_cuda_reg checks cudaGetDeviceProperties
# per device, ggml_cuda_init its driver calls): a check failing in there is the init's own wall,
# which core/rules.py names from the same call and text
INIT_FUNCTIONS = ("ggml_cuda_init", "ggml_backend_cuda_reg", "ggml_cuda_info", "ggml_backend_cuda_get_device_count")


def past_init(tl: Timeline, check: Check) -> bool:
    """CHECK failed after its process's init: not in an init function, and after the snapshot taken
    when the init window closed ('after init'). A process whose init never closed is still in it."""
    if check.function in INIT_FUNCTIONS:
        return False
    after = next((e for e in tl.libraries if e.pid == check.pid and e.when == "after init"), None)
    return after is not None and after.seq < check.seq


def _check_evidence(check: Check) -> str:
    said = repr(check.message) if check.message else "no text (the error-string call gave none)"
    return (f"ggml's check failed in {check.function or '?'} ({check.file.rsplit('/', 1)[-1]}:{check.line}): "
            f"{check.statement.strip()!r} -> {said}; ggml_cuda_error then aborts the process")


def _failed_call(tl: Timeline, check: Check) -> Call | None:
    """The recorded call behind CHECK's statement: the last one of that name in its process, before it, that failed."""
    for c in reversed(tl.calls):
        if c.pid == check.pid and c.function == check.called and c.seq < check.seq and c.failed:
            return c
    return None


def _describe(c: Call) -> str:
    return (f"{c.function}({c.describe_args()}) in {_base(c.library)}, called from {_base(c.caller)}, "
            f"returned {c.result} ({c.result_name})")


def _device_memory(tl: Timeline, pid: int) -> int | None:
    """The free bytes the process was told its device had (cudaMemGetInfo / cuMemGetInfo_v2), last answer."""
    for c in reversed(tl.calls):
        if c.pid == pid and c.function in ("cudaMemGetInfo", "cuMemGetInfo_v2") and c.returned and not c.failed:
            if isinstance(c.args.get("free"), int):
                return c.args["free"]
    return None


# -------------------------------------------------------------- the first launch --
def _kernel_image(tl: Timeline, check: Check, code: int | None) -> Finding:
    """'no kernel image is available' at the first launch: the architecture (the device's capability
    against the code libggml-cuda carries), or a runtime that cannot launch what it was handed."""
    from .devprops import code_for, fatbin_targets, targets_words

    pid = check.pid
    ggml = ggml_in_run(tl)
    targets = fatbin_targets(ggml) if ggml else None
    ev = [_check_evidence(check)]
    caps = [(dev, major, minor, where) for dev, major, minor, where in _capabilities(tl, pid)
            if isinstance(major, int) and isinstance(minor, int)]
    built = None
    if targets:
        built = targets_words(targets)
        ev.append(f"{_base(ggml)} carries GPU code for {built}")
    runnable = []
    for dev, major, minor, where in caps:
        ev.append(f"device {dev}: compute capability {major}.{minor} ({where})")
        if targets:
            what = code_for(targets, major, minor)
            runnable.append(what)
            ev.append(f"  on it the driver would load {what[0]}_{what[1]}" if what else
                      f"  nothing in {_base(ggml)} runs on {major}.{minor}")
    if targets and caps and not all(runnable):
        major, minor = next((m, n) for (_d, m, n, _w), r in zip(caps, runnable) if not r)
        lowest = min(targets["sm"] + targets["ptx"])
        return Finding(
            rule="first-launch-no-kernel-image", pid=pid, explains=code,
            summary=(f"the first kernel launch in {_prog(tl, pid)} failed with 'no kernel image is available': the "
                     f"device reports compute capability {major}.{minor}, and {_base(ggml)} carries no code for it "
                     f"({built}); ggml aborted"),
            evidence=ev,
            fix=(f"report the device's real compute capability (cudaDeviceProp.major/minor and attributes 75/76): "
                 f"this libggml-cuda needs {lowest // 10}.{lowest % 10} or newer; or build the backend for the device "
                 f"(CMAKE_CUDA_ARCHITECTURES={major}{minor})"))
    return Finding(
        rule="first-launch-no-kernel-image", pid=pid, explains=code,
        summary=(f"the first kernel launch in {_prog(tl, pid)} failed with {check.message!r}"
                 + (f", though {_base(ggml)} carries code the device can run ({built})" if targets and caps else "")
                 + ": the runtime did not launch the kernels libggml-cuda registered with it; ggml aborted"),
        evidence=ev + ["ggml launches with <<<...>>>: the compiler's stub calls the runtime's cudaLaunchKernel, and "
                       "ggml reads the result from cudaGetLastError() after it"],
        fix=("a runtime replacement must keep the fat binaries libggml-cuda registers (__cudaRegisterFatBinary, "
             "__cudaRegisterFunction) and launch them through a driver that loads modules (cuModuleLoadData, "
             "cuLaunchKernel); a fake runtime with no GPU behind it cannot pass this wall: forward to NVIDIA's "
             "runtime, or to the remote GPU, from cudaLaunchKernel on"))


# ---------------------------------------------------------------- cuBLAS handle --
def _cublas(tl: Timeline, check: Check | None, call: Call | None) -> Finding:
    pid = check.pid if check else call.pid
    ev = ([_check_evidence(check)] if check else []) + ([_describe(call)] if call else [])
    status = call.result_name if call else (check.message if check else "?")
    return Finding(
        rule="cublas-create-failed", pid=pid,
        summary=(f"cuBLAS could not create its handle in {_prog(tl, pid)} ({status}): ggml's first matrix "
                 f"product needs it" + ("; ggml aborted" if check else "")),
        evidence=ev + ["libcublas makes its handle on the device: it needs the runtime's current device, a context "
                       "and device memory from the driver underneath, and its own kernels for the device's "
                       "architecture"],
        fix=("give libcublas what it creates a handle with: a working context and device memory (cuCtxGetCurrent, "
             "cuMemAlloc through the runtime), or, in a fake or remote stack, a libcublas.so.12 of your own under "
             "NVIDIA's soname and version node whose cublasCreate_v2 returns CUBLAS_STATUS_SUCCESS and a handle"))


# ------------------------------------------------------------------ VMM pool --
def _vmm(tl: Timeline, pid: int, failed: Call | None, check: Check | None) -> Finding:
    granularity = [c for c in tl.calls if c.pid == pid and c.function == "cuMemGetAllocationGranularity"
                   and c.returned and not c.failed]
    vmm = [c for c in tl.calls if c.pid == pid and c.function == "cuDeviceGetAttribute" and c.returned
           and not c.failed and c.args.get("attrib") == VMM_ATTRIBUTE]
    ev = ([_check_evidence(check)] if check else []) + ([_describe(failed)] if failed else [])
    if vmm:
        ev.append(f"cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED ({VMM_ATTRIBUTE}), "
                  f"dev={vmm[-1].args.get('dev')}) answered {vmm[-1].args.get('pi')}: ggml takes the VMM pool")
    zero = [c for c in granularity if c.args.get("granularity") == 0]
    if zero:
        ev.append("cuMemGetAllocationGranularity answered 0 bytes: ggml rounds each reservation to a multiple of it")
    fpe = next((e for e in tl.processes if e.pid == pid and e.what == "exit" and e.signal == "SIGFPE"), None)
    if zero and fpe is not None:
        ev.append(f"then pid {pid} died of SIGFPE (an integer division by zero): the rounding divides by the "
                  "granularity")
    what = failed.function if failed else (check.called if check else "cuMemGetAllocationGranularity")
    return Finding(
        rule="vmm-pool-failed", pid=pid,
        summary=(f"ggml's VMM memory pool failed at {what} in {_prog(tl, pid)}"
                 + (f" ({failed.result_name})" if failed else "") + (", which answered a granularity of 0" if zero
                                                                       and not failed else
                                                                       " after a granularity of 0" if zero else "")
                 + ("; ggml aborted" if check else "; the process died of SIGFPE" if zero and fpe else "")),
        evidence=ev,
        fix=("either implement the VMM calls (cuMemGetAllocationGranularity with the real granularity, e.g. 2 MiB; "
             "cuMemAddressReserve, cuMemCreate, cuMemMap, cuMemSetAccess), or answer "
             f"cuDeviceGetAttribute({VMM_ATTRIBUTE}) = 0 so that ggml allocates with cudaMalloc instead"))


# ---------------------------------------------------------------- the rules --
def rule_failed_check(tl: Timeline) -> list[Finding]:
    """ggml's CUDA_CHECK failed after (or in) init, and the process aborted: name the wall by the
    statement, with the recorded call behind it."""
    out = []
    for check in tl.checks:
        call = _failed_call(tl, check)
        code = codes.cuda_error_from_message(check.message)
        name = check.called
        if code in (NO_KERNEL_IMAGE, INVALID_DEVICE_FUNCTION) or "kernel image" in check.message:
            out.append(_kernel_image(tl, check, code))
        elif name.startswith("cublas"):
            out.append(_cublas(tl, check, call))
        elif name in VMM_CALLS or name == "cuMemGetAllocationGranularity":
            out.append(_vmm(tl, check.pid, call, check))
        elif name in ("cudaMalloc", "cudaMallocHost") and call is not None:
            out.append(_memory(tl, call, check))
        elif past_init(tl, check):  # in the init, the init's rules name it from the same call and text
            ev = [_check_evidence(check)] + ([_describe(call)] if call else [])
            out.append(Finding(
                rule="ggml-check-failed", pid=check.pid, explains=code,
                summary=(f"ggml's check of {check.statement.strip()!r} failed in {_prog(tl, check.pid)} with "
                         f"{check.message!r}; ggml aborted"),
                evidence=ev,
                fix=(f"make {name} succeed in the shim" + (f" (it returned {call.result_name})" if call else "")
                     + ": ggml aborts on any error its CUDA_CHECK sees")))
    return out


def _memory(tl: Timeline, call: Call, check: Check | None = None) -> Finding:
    pid = call.pid
    free = _device_memory(tl, pid)
    size = call.args.get("size")
    ev = ([_check_evidence(check)] if check else []) + [_describe(call)]
    if call.function == "cudaMallocHost" and check is None:
        return Finding(
            rule="pinned-memory-failed", pid=pid,
            summary=(f"cudaMallocHost of {_mib(size)} (page-locked host memory) failed with {call.result_name} in "
                     f"{_prog(tl, pid)}: ggml falls back to ordinary host memory ('failed to allocate ... of pinned "
                     "memory'): slower copies, not fatal by itself"),
            evidence=ev,
            fix="implement cudaMallocHost (a fake runtime can hand back ordinary host memory)")
    real_oom = isinstance(free, int) and isinstance(size, int) and size > free
    if free is not None:
        ev.append(f"the process was told the device had {_mib(free)} free"
                  + (": the request is bigger" if real_oom else ": the request fits"))
    return Finding(
        rule="first-use-memory", pid=pid, explains=call.result if isinstance(call.result, int) else None,
        summary=(f"{call.function} of {_mib(size)} failed with {call.result_name} in {_prog(tl, pid)}, after init "
                 f"reported a device" + ("" if real_oom or free is None else f" with {_mib(free)} free")
                 + ": the model's buffers cannot go to the GPU (llama.cpp: 'unable to allocate CUDA0 buffer', "
                   "'failed to load model')"),
        evidence=ev,
        fix=("a smaller model or context, or free memory on the device" if real_oom else
             f"implement {call.function} in the shim (hand back device memory, as much as cudaMemGetInfo "
             "promised), or report the free memory it can really give"))


def rule_first_use_failed(tl: Timeline) -> list[Finding]:
    """A first-use call (calls.Spec.first_use) failed after the process's init succeeded, with no
    failed check to say more (a cudaMalloc that llama.cpp reports and survives, a cublasCreate_v2)."""
    out = []
    checked = {(c.pid, c.called) for c in tl.checks}
    for pid in sorted({c.pid for c in tl.calls}):
        if not _cuda_count(tl, pid)[1]:  # no device at init: nothing was used
            continue
        seen = set()
        vmm = any(c.pid == pid and c.function == "cuDeviceGetAttribute" and c.returned and not c.failed
                  and c.args.get("attrib") == VMM_ATTRIBUTE and c.args.get("pi") for c in tl.calls)
        zero = any(c.pid == pid and c.function == "cuMemGetAllocationGranularity" and c.returned and not c.failed
                   and c.args.get("granularity") == 0 for c in tl.calls)
        if vmm and zero and not any(c.pid == pid and c.called in VMM_CALLS for c in tl.checks):
            seen.add("vmm")  # ggml takes the VMM pool with a granularity it cannot round to
            out.append(_vmm(tl, pid, next((c for c in _use_calls(tl, pid) if c.function in VMM_CALLS and c.failed),
                                          None), None))
        for c in sorted(_use_calls(tl, pid), key=lambda c: c.function == "cudaMallocHost"):
            if not c.failed or c.function in seen or (pid, c.function) in checked:
                continue
            seen.add(c.function)
            if c.function in ("cudaMalloc", "cudaMallocHost"):
                out.append(_memory(tl, c))
            elif c.function == "cublasCreate_v2":
                out.append(_cublas(tl, None, c))
            elif c.function in VMM_CALLS and "vmm" not in seen:
                seen.add("vmm")
                out.append(_vmm(tl, pid, c, None))
    return out


def rule_arch_abort(tl: Timeline) -> list[Finding]:
    """ggml stopping itself over the device's architecture (GGML_ABORT "ggml was not compiled with any
    CUDA arch <= %d", or a patched ggml's "not compiled with support for this arch" under
    GGML_CUDA_INIT=1): in ggml's own words, with the capability the process was told and the code
    the run's libggml-cuda carries."""
    from .devprops import fatbin_targets, targets_words

    out = []
    for a in tl.aborts:
        if not re.search(r"compiled with.*arch|arch.*not (?:compiled|supported)", a.message, re.I):
            continue
        ggml = ggml_in_run(tl)
        targets = fatbin_targets(ggml) if ggml else None
        caps = [(dev, mj, mn, where) for dev, mj, mn, where in _capabilities(tl, a.pid)
                if isinstance(mj, int) and isinstance(mn, int)]
        ev = [f"ggml_abort at {a.file.rsplit('/', 1)[-1]}:{a.line}: {a.message!r}"]
        ev += [f"device {dev}: compute capability {mj}.{mn} ({where})" for dev, mj, mn, where in caps]
        if targets:
            ev.append(f"{_base(ggml)} carries GPU code for {targets_words(targets)}")
        cc = f"{caps[0][1]}.{caps[0][2]}" if caps else "?"
        out.append(Finding(
            rule="ggml-arch-abort", pid=a.pid,
            summary=(f"ggml aborted {_prog(tl, a.pid)} over the device's architecture ({a.message!r}): the device "
                     f"was reported as compute capability {cc}, which the backend has no code for"),
            evidence=ev,
            fix=("report the device's real compute capability (cudaDeviceProp.major/minor, attributes 75/76), the "
                 "same everywhere; or use a libggml-cuda built for it (CMAKE_CUDA_ARCHITECTURES)")))
    return out


RULES = (rule_failed_check, rule_first_use_failed, rule_arch_abort)
RULE_NAMES = ("first-launch-no-kernel-image", "cublas-create-failed", "vmm-pool-failed", "first-use-memory",
              "ggml-check-failed", "ggml-arch-abort")
