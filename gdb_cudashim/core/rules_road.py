"""The road past init (issue #19): the walls a shim meets after cuInit succeeds, as ollama's
discovery and ggml's first use meet them. Each rule is Timeline -> list[Finding], with the calls
it read as evidence. Facts: DOMAIN.md, "Ollama" (ollama 0.13+ runs a second, verifying pass per
device with CUDA_VISIBLE_DEVICES=<UUID "GPU-..."> (0.13-0.24) or <ordinal> (0.30+) and
GGML_CUDA_INIT=1; it drops a driver whose NVML version major is under 550 (cuda_v12) / 570
(cuda_v13), and a device with 0 bytes). Pure: never imports gdb.
"""
from __future__ import annotations

import re

from . import cudafiles
from .finding import Finding, base as _base
from .rules_device import ggml_in_run, probe_attributes
from .timeline import Call, Timeline

NVIDIA_DRIVER_FORM = re.compile(r"\d{3}\.\d+(\.\d+)?")  # nvidia-smi's "575.57.08"
OLLAMA_MIN_DRIVER = 550  # ollama's cuda_v12 libraries; cuda_v13 wants 570
COUNT_CALLS = ("cuDeviceGetCount", "cudaGetDeviceCount")
UUID_CALLS = ("cuDeviceGetUuid_v2", "cuDeviceGetUuid")
MEMORY_CALLS = ("cuDevicePrimaryCtxRetain", "cuMemGetInfo_v2", "cudaMemGetInfo", "nvmlDeviceGetMemoryInfo")
NVML_ERROR_NOT_SUPPORTED = 3


def _ok(c: Call) -> bool:
    return c.returned and not c.failed


def _prog(tl: Timeline, pid: int) -> str:
    start = tl.process_start(pid)
    return f"pid {pid} ({_base(start.detail) if start else '?'})"


def _call(c: Call) -> str:
    return f"{c.function}() in {_base(c.library)}, called from {_base(c.caller)}"


# ------------------------------------------------------------ NVML's driver version --
def rule_nvml_driver_version(tl: Timeline) -> list[Finding]:
    """nvmlSystemGetDriverVersion answered something ollama cannot take for a new enough driver:
    not NVIDIA's form ("12.4" is read as driver 12), or a branch older than 550."""
    out, seen = [], set()
    for c in tl.calls:
        if c.function != "nvmlSystemGetDriverVersion" or not _ok(c) or not isinstance(c.args.get("version"), str):
            continue
        version = c.args["version"]
        if version in seen:
            continue
        seen.add(version)
        major_text = version.split(".", 1)[0]
        major = int(major_text) if major_text.isdigit() else None
        cuda = next((x.args.get("driverVersion") for x in tl.calls if x.pid == c.pid and _ok(x)
                     and x.function in ("cuDriverGetVersion", "cudaDriverGetVersion")), None)
        ev = [f"{_call(c)} in {_prog(tl, c.pid)} answered {version!r}"]
        if isinstance(cuda, int):
            ev.append(f"the same process's cuDriverGetVersion answered {cuda} (CUDA {cuda // 1000}.{cuda % 1000 // 10}): "
                      "that is the CUDA version the driver supports, not the driver's own version")
        if not NVIDIA_DRIVER_FORM.fullmatch(version):
            summary = (f"NVML says the driver is {version!r}, not a driver version in NVIDIA's form (e.g. 575.57.08): "
                       f"ollama reads the text before the first '.' as the driver's major"
                       + (f" ({major})" if major is not None else "")
                       + f" and drops the GPU as 'NVIDIA driver too old' (it needs {OLLAMA_MIN_DRIVER} or newer)")
        elif major is not None and major < OLLAMA_MIN_DRIVER:
            summary = (f"NVML says the driver is {version}: branch {major}, older than ollama's CUDA libraries accept "
                       f"({OLLAMA_MIN_DRIVER} for cuda_v12, 570 for cuda_v13): 'NVIDIA driver too old'")
        else:
            continue
        out.append(Finding(
            rule="nvml-driver-version", pid=c.pid, summary=summary, evidence=ev,
            fix=("answer nvmlSystemGetDriverVersion with the driver branch in NVIDIA's form, as nvidia-smi prints it "
                 "(\"575.57.08\"; 570 or newer for CUDA 12.8+), never the CUDA version; forward it from the real NVML "
                 "when there is one")))
    return out


# --------------------------------------------------------------- memory queries --
def rule_memory_query_failed(tl: Timeline) -> list[Finding]:
    """A memory query that fails past init: ggml then shows the device as "(0 MiB, 0 MiB free)" and
    ollama drops it as a pseudo-device with zero memory; NVML's NOT_SUPPORTED makes ggml fall back."""
    out = []
    for pid in sorted({c.pid for c in tl.calls}):
        failed = [c for c in tl.calls if c.pid == pid and c.function in MEMORY_CALLS and c.returned and c.failed]
        if not failed:
            continue
        first = failed[0]
        ev = [f"{_call(c)} returned {c.result_name}" for c in failed[:6]]
        retain = next((c for c in failed if c.function == "cuDevicePrimaryCtxRetain"), None)
        query = next((c for c in failed if c.function != "cuDevicePrimaryCtxRetain"), None)
        if retain is not None and query is not None and retain.seq < query.seq:
            ev.append("cudart retains the device's primary context before it asks for memory: that failure comes first")
        nvml_only = all(c.function == "nvmlDeviceGetMemoryInfo" for c in failed)
        if nvml_only and all(c.result == NVML_ERROR_NOT_SUPPORTED for c in failed):
            summary = (f"nvmlDeviceGetMemoryInfo answers NVML_ERROR_NOT_SUPPORTED in {_prog(tl, pid)}: what reads "
                       "memory through NVML (ollama, ggml's fallback) gets no figure for the device")
            fix = "answer nvmlDeviceGetMemoryInfo with the device's total/free/used bytes (the same total as CUDA reports)"
        else:
            summary = (f"{first.function} fails with {first.result_name} in {_prog(tl, pid)}: ggml shows the device "
                       "as '(0 MiB, 0 MiB free)' and ollama drops it ('skipping pseudo-device with zero memory')")
            fix = ("make cuDevicePrimaryCtxRetain succeed (hand back a context) and answer cuMemGetInfo_v2 / "
                   "cudaMemGetInfo with the device's free and total bytes, the total the same as cuDeviceTotalMem_v2's")
        out.append(Finding(rule="memory-query-failed", pid=pid, summary=summary, evidence=ev, fix=fix))
    return out


# ---------------------------------------------------- CUDA_VISIBLE_DEVICES and UUIDs --
def _uuids(tl: Timeline) -> dict[int, dict[int, str]]:
    """pid -> {device ordinal -> "GPU-..."} from the shim's cuDeviceGetUuid answers."""
    out: dict[int, dict[int, str]] = {}
    for c in tl.calls:
        if c.function in UUID_CALLS and _ok(c) and isinstance(c.args.get("uuid"), dict):
            out.setdefault(c.pid, {})[c.args.get("dev")] = c.args["uuid"]["uuid"]
    return out


def _count(tl: Timeline, pid: int) -> tuple[int | None, Call | None]:
    """How many devices PID's driver said it has: CUDA_VISIBLE_DEVICES is the driver's job, so its
    answer (cuDeviceGetCount, or cuInit's CUDA_ERROR_NO_DEVICE when the count is never asked) comes
    before a runtime's (cudaGetDeviceCount; cudaErrorNoDevice is 0 devices)."""
    mine = [c for c in tl.calls if c.pid == pid and c.returned]
    for fn, none in (("cuDeviceGetCount", 100), ("cuInit", 100), ("cudaGetDeviceCount", 100)):
        calls = [c for c in mine if c.function == fn]
        if not calls:
            continue
        last = calls[-1]
        if not last.failed and isinstance(last.args.get("count"), int):
            return last.args["count"], last
        if last.result == none:
            return 0, last
    return None, None


def _tokens(value: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", value) if t]


def _unstable(tl: Timeline, uuids: dict[int, dict[int, str]]) -> list[str]:
    """Evidence that one device's UUID differed between processes that saw every device (no
    CUDA_VISIBLE_DEVICES): the same ordinal answered with two UUIDs."""
    by_dev: dict[object, dict[str, int]] = {}
    for pid, devs in uuids.items():
        start = tl.process_start(pid)
        if start is not None and "CUDA_VISIBLE_DEVICES" in (start.env or {}):
            continue
        for d, u in devs.items():
            by_dev.setdefault(d, {}).setdefault(u, pid)
    return [f"device {d}: " + ", ".join(f"{u} in {_prog(tl, pid)}" for u, pid in seen.items())
            for d, seen in by_dev.items() if len(seen) > 1]


def rule_visible_devices(tl: Timeline) -> list[Finding]:
    """Processes told which device to use by CUDA_VISIBLE_DEVICES (ollama's verifying pass) that the
    shim answered with no device, or with every device: each token against what the shim answered
    in that process and in the others of the run (the first pass). The children of one parent that
    met the same wall are one finding."""
    out = []
    uuids = _uuids(tl)
    unstable = _unstable(tl, uuids)
    groups: dict[tuple, list] = {}  # (parent, what) -> [(start, value, evidence line)]
    for start in [p for p in tl.processes if p.what == "start"]:
        value = (start.env or {}).get("CUDA_VISIBLE_DEVICES")
        if value is None:
            continue
        count, call = _count(tl, start.pid)
        tokens = _tokens(value)
        if count is None or not tokens:
            continue
        answered = (f"{_call(call)} answered {count} device(s)" if not call.failed
                    else f"{_call(call)} returned {call.result_name}")
        line = f"{_prog(tl, start.pid)} started with CUDA_VISIBLE_DEVICES={value!r}: {answered}"
        if count == 0:
            gpu = next((t for t in tokens if t.startswith("GPU-")), None)
            known = gpu is not None and any(u.startswith(gpu) for pid, devs in uuids.items() if pid != start.pid
                                            for u in devs.values())
            what = "uuid-unstable" if gpu and unstable else "uuid-rejected" if known else \
                   "uuid-unknown" if gpu else "ordinal-rejected"
        elif count > len(tokens):
            what = "ignored"
        else:
            continue
        groups.setdefault((start.parent, what), []).append((start, value, line))
    for (parent, what), members in groups.items():
        ev = [line for _s, _v, line in members]
        for pid, devs in sorted(uuids.items()):
            if all(pid != m.pid for m, _v, _l in members):
                ev.append(f"in {_prog(tl, pid)} the shim's cuDeviceGetUuid answered "
                          + ", ".join(f"device {d}: {u}" for d, u in sorted(devs.items(), key=lambda x: str(x[0]))))
        ev += [f"the same device, two UUIDs: {u}" for u in unstable]
        first_value = members[0][1]
        children = (f"{len(members)} children of {_prog(tl, parent)}" if parent and len(members) > 1
                    else _prog(tl, members[0][0].pid))
        dropped = "ollama's verifying pass then drops the device ('filtering device which didn't fully initialize')"
        if what == "uuid-unstable":
            summary = (f"the shim's device UUID differs between processes, so CUDA_VISIBLE_DEVICES=<the UUID it "
                       f"answered before> finds no device in {children}: {dropped}")
            fix = ("give each device one fixed UUID, the same in every process (derive it from the real device or "
                   "from the shim's configuration, never from the pid, a counter or the time)")
        elif what == "uuid-rejected":
            summary = (f"the shim reports no device in {children} when CUDA_VISIBLE_DEVICES names one by the UUID it "
                       f"answered in another process ({first_value}): it does not accept GPU- tokens, or its UUID "
                       f"changed since (only one process answered UUIDs here, so the two cannot be told apart): {dropped}")
            fix = ("read CUDA_VISIBLE_DEVICES as the driver does: ordinals, GPU-<uuid> (a unique prefix is enough) "
                   "and MIG- tokens, comma-separated, stopping at the first invalid entry; and keep each device's UUID "
                   "the same in every process")
        elif what == "uuid-unknown":
            summary = (f"the shim reports no device in {children} for CUDA_VISIBLE_DEVICES={first_value!r}, a UUID "
                       f"it never answered in this run (ollama 0.13-0.24 sets the UUID its probe read): {dropped}")
            fix = "answer cuDeviceGetUuid with each device's UUID and accept CUDA_VISIBLE_DEVICES=GPU-<that uuid>"
        elif what == "ordinal-rejected":
            summary = (f"the shim reports no device in {children} for CUDA_VISIBLE_DEVICES={first_value!r} (ollama "
                       f"0.30+ sets the ordinal its first pass found): {dropped}")
            fix = "count the devices CUDA_VISIBLE_DEVICES lists (ordinals from 0) and number them from 0"
        else:
            summary = (f"the shim ignores CUDA_VISIBLE_DEVICES in {children} ({first_value!r} lists "
                       f"{len(_tokens(first_value))} device(s), the shim reported more): ollama's verifying pass and "
                       "ggml then see and use devices they were told not to")
            fix = "honour CUDA_VISIBLE_DEVICES: it is the driver's job, and so the shim's"
        out.append(Finding(rule="visible-devices", pid=members[0][0].pid, summary=summary, evidence=ev, fix=fix))
    for pid, devs in sorted(uuids.items()):
        zero = [d for d, u in devs.items() if u == "GPU-00000000-0000-0000-0000-000000000000"]
        if zero:
            out.append(Finding(
                rule="device-uuid-zero", pid=pid,
                summary=(f"the shim answers an all-zero UUID for device {zero[0]} in {_prog(tl, pid)}: ollama tells "
                         "devices apart and re-selects them by UUID, so it cannot verify or keep this one"),
                evidence=[f"cuDeviceGetUuid(dev={d}) answered {devs[d]}" for d in zero],
                fix="answer cuDeviceGetUuid with a non-zero UUID per device, the same in every process"))
    return out


# ---------------------------------------------- what cuGetProcAddress hands back --
def rule_proc_address_target(tl: Timeline) -> list[Finding]:
    """cuGetProcAddress(_v2) answered success with a pointer that is not a driver entry point: into
    unmapped memory, NULL, or into a file that is no driver (libc, the runtime itself)."""
    out, seen, claimed = [], set(), set()
    for c in tl.calls:
        if c.function not in ("cuGetProcAddress_v2", "cuGetProcAddress") or not _ok(c):
            continue
        pfn = c.args.get("pfn")
        where = c.lands_in
        if where is None and pfn != 0:
            continue  # not recorded where it lies (a debugger-stop run): no verdict
        fix = ("hand back the address of the shim's own implementation of that entry point (or the real driver's), "
               "or CUDA_ERROR_NOT_FOUND with *pfn = NULL and symbolStatus CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND")
        if pfn == 0:
            what = "a NULL pointer"
        elif where == "unmapped memory":
            what = f"{pfn:#x}, which lies in no mapped file"
        elif cudafiles.role(where) == cudafiles.DRIVER:
            legacy = _legacy_variant(c)
            if legacy is None:
                continue
            what = legacy
            fix = (f"hand back the variant the cudaVersion asks for: the versioned name cuda.h maps "
                   f"{c.args.get('symbol')} to, from the version it appeared in on")
        else:
            what = f"{pfn:#x}, inside {where} ({cudafiles.classify(where)}), not a driver"
        key = (c.pid, c.args.get("symbol"))
        if key in seen:
            continue
        seen.add(key)
        ev = [f"{_call(c)}: symbol={c.args.get('symbol')!r} cudaVersion={c.args.get('cudaVersion')} "
              f"flags={c.args.get('flags')} -> {c.result_name}, *pfn=" + (f"{pfn:#x}" if isinstance(pfn, int) else repr(pfn))]
        # the process then faulted at that very address (a jump to it): this pointer is why it died
        # a jump to the pointer faults with the pc there (and, but for NULL, si_addr too); a NULL data
        # read also has si_addr 0, so NULL needs the pc; one finding claims one crash
        crash = next((x for x in tl.crashes if x.pid == c.pid and x.sender is None and isinstance(pfn, int)
                      and ((x.backtrace and x.backtrace[0].pc == pfn) or (pfn and x.address == pfn))
                      and id(x) not in claimed), None)
        if crash is not None:
            claimed.add(id(crash))
        if crash is not None:
            ev.append(f"then thread {crash.tid} died of {crash.signal} at {pfn:#x}: a call through that pointer")
        out.append(Finding(
            rule="proc-address-target", pid=c.pid,
            summary=(f"cuGetProcAddress answered CUDA_SUCCESS for {c.args.get('symbol')!r} with {what}: cudart calls "
                     "that pointer as the entry point" + (f", and the process died of {crash.signal} there"
                                                         if crash is not None else "")),
            evidence=ev, fix=fix, explains=CRASHED if crash is not None else None))
    return out


CRASHED = -1  # a finding's explains: the fault that ended the process (core/rules.py ranks it before the crash)


def _legacy_variant(c: Call) -> str | None:
    """cuGetProcAddress handed back the unversioned entry point where the cudaVersion asked for
    needs its newer ABI (cuDeviceGetUuid for 12090: cuDeviceGetUuid_v2), told from the driver
    file's own symbols at the offset the pointer lies at."""
    from .calls import VERSIONED_ENTRY_POINTS
    from .dynsym import DynsymError, read_cached

    symbol, version, offset = c.args.get("symbol"), c.args.get("cudaVersion"), c.lands_offset
    if symbol not in VERSIONED_ENTRY_POINTS or not isinstance(version, int) or offset is None:
        return None
    since, newer = VERSIONED_ENTRY_POINTS[symbol]
    if version < since:
        return None
    try:
        values = read_cached(c.lands_in).function_values([symbol, newer])
    except (OSError, DynsymError):
        return None
    if offset not in values.get(symbol, ()) or not values.get(newer) or offset in values[newer]:
        return None
    return (f"{c.args['pfn']:#x}, which is {symbol} in {_base(c.lands_in)}: the legacy ABI, where cudaVersion "
            f"{version} needs {newer} (its ABI since {since // 1000}.{since % 1000 // 10}), which the file exports too")


# ------------------------------------- the probe's compute capability (attributes 75/76) --
def rule_probe_compute_capability(tl: Timeline) -> list[Finding]:
    """The compute capability a probe reads from the driver (cuDeviceGetAttribute 75/76, ollama's
    gpu-discover) that ggml cannot use: 0.0, or below every architecture the run's libggml-cuda
    carries. ggml's own path (cudaDeviceProp) is device-compute-capability's."""
    from .devprops import fatbin_targets, runs_on, targets_words

    ggml, targets, read = None, None, False  # the backend's fat binary is read once a device needs it (~50 ms)
    out = []
    for pid in sorted({c.pid for c in tl.calls}):
        if any(c.pid == pid and c.function == "cudaGetDeviceProperties_v2" for c in tl.calls):
            continue  # ggml's init in this process: its struct is read by the other rule
        for dev, asked_major, asked_minor in probe_attributes(tl, pid):
            major, minor = asked_major.args.get("pi"), asked_minor.args.get("pi")
            if not isinstance(major, int) or not isinstance(minor, int):
                continue
            if not read:
                ggml = ggml_in_run(tl)
                targets, read = (fatbin_targets(ggml) if ggml else None), True
            low = targets is not None and major > 0 and not runs_on(targets, major, minor)
            archs = sorted(set(targets["sm"]) | set(targets["ptx"])) if targets else []
            # ollama 0.30+ keeps a device only if its capability is one of the ARCHS llama-server
            # prints (the backend's own list), where ggml alone would JIT-compile the PTX for it
            exact_miss = bool(archs) and major > 0 and not low and major * 10 + minor not in archs
            if major > 0 and not low and not exact_miss:
                continue
            built = targets_words(targets) if targets else None
            ev = [f"{_call(asked_major)}: ComputeCapabilityMajor (75) = {major}, ComputeCapabilityMinor (76) = {minor}"]
            if built:
                ev.append(f"{_base(ggml)}, loaded in this run, carries GPU code for {built} only")
            if exact_miss:
                listed = ",".join(str(a * 10) for a in archs)
                ev.append(f"llama-server prints 'CUDA : ARCHS = {listed}' for it; ollama 0.30+ matches the device's "
                          f"capability ({major}{minor}0) against that list exactly")
                out.append(Finding(
                    rule="device-compute-capability", pid=pid,
                    summary=(f"the driver answers compute capability {major}.{minor} for device {dev} in "
                             f"{_prog(tl, pid)}, which is not one of the architectures {_base(ggml)} was built for "
                             f"({built}): ollama 0.30+ skips the device ('compute capability not in compiled "
                             f"architectures') though ggml alone would JIT-compile its PTX for it"),
                    evidence=ev,
                    fix=(f"report the device's real compute capability (a fake device: one of {listed}, e.g. "
                         f"{archs[-1] // 10}.{archs[-1] % 10}); or give ollama a libggml-cuda built for this one "
                         f"(CMAKE_CUDA_ARCHITECTURES={major}{minor})")))
                continue
            out.append(Finding(
                rule="device-compute-capability", pid=pid,
                summary=(f"the driver answers compute capability {major}.{minor} for device {dev} in {_prog(tl, pid)}"
                         + (f", below what {_base(ggml)} was built for ({built})" if low else "")
                         + ": ollama skips the device ('compute capability not in compiled architectures'), and "
                           "ggml's kernels could not run there ('no kernel image is available')"),
                evidence=ev,
                fix=("answer cuDeviceGetAttribute(75/76) with the device's real compute capability, the same as "
                     "cudaDeviceProp.major/minor" + (f"; this libggml-cuda needs {min(targets['sm'] + targets['ptx']) // 10}."
                                                     f"{min(targets['sm'] + targets['ptx']) % 10} or newer" if targets else ""))))
    return out


RULES = (rule_nvml_driver_version, rule_memory_query_failed, rule_visible_devices, rule_proc_address_target,
         rule_probe_compute_capability)
