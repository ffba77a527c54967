"""Rules over what a shim says a device is: cudaDeviceProp (its CUDA 12 layout), the compute
capability against the architectures the run's libggml-cuda carries, the device's memory and
name from every place ggml and ollama read them, and NVML against CUDA. Each rule is
Timeline -> list[Finding]. Pure: never imports gdb.
"""
from __future__ import annotations

from .calls import role_of
from .finding import Finding, base as _base
from .timeline import Call, Timeline

PROP_FIX = ("fill the caller's struct cudaDeviceProp as CUDA 12's driver_types.h declares it (include NVIDIA's header, "
            "do not declare a struct of your own): 1032 bytes, name at 0, totalGlobalMem at 288, major at 360, "
            "minor at 364, multiProcessorCount at 388")


def _ok_calls(tl: Timeline, pid: int, function: str) -> list[Call]:
    return [c for c in tl.calls if c.pid == pid and c.function == function and c.returned and not c.failed]


def _props(tl: Timeline, pid: int) -> list[Call]:
    """The successful cudaGetDeviceProperties_v2 calls of PID whose struct was read, the last per device."""
    last = {}
    for c in _ok_calls(tl, pid, "cudaGetDeviceProperties_v2"):
        if isinstance(c.args.get("prop"), dict):
            last[c.args.get("device")] = c
    return list(last.values())


def _prop_call(c: Call) -> str:
    return f"cudaGetDeviceProperties_v2(device={c.args.get('device')}) in {_base(c.library)}, called from {_base(c.caller)}"


def _mib(n: int) -> str:
    return f"{n} bytes" + (f" ({n / (1 << 20):.0f} MiB)" if n else "")


def _ggml_device_lines(tl: Timeline, pid: int) -> list[str]:
    return [f"ggml printed: {w.text.strip()!r}" for w in tl.writes
            if w.pid == pid and ("compute capability" in w.text or "CUDA devices" in w.text)][:2]


def _cuda_count(tl: Timeline, pid: int) -> tuple[Call | None, int | None]:
    for fn, arg in (("cudaGetDeviceCount", "count"), ("cuDeviceGetCount", "count")):
        for c in _ok_calls(tl, pid, fn):
            if isinstance(c.args.get(arg), int):
                return c, c.args[arg]
    return None, None


def _pids(tl: Timeline) -> list[int]:
    return sorted({c.pid for c in tl.calls})


def _layout_evidence(prop: dict, about: str) -> list[str]:
    """Where a struct filled in another layout put its values: ABOUT is 'compute capability' or 'bytes'."""
    from . import devprops

    fields = devprops.written_fields(prop)
    out = [f"the struct's non-zero bytes lie in {', '.join(fields) or 'no field'} (as CUDA 12 lays it out)"]
    if prop.get("major") or prop.get("totalGlobalMem"):
        return out  # a struct in CUDA 12's layout with one field wrong: no layout to guess
    return out + [f"looks like another layout: {m}" for m in devprops.misplaced(prop) if about in m or "early" in m]


def rule_device_without_properties(tl: Timeline) -> list[Finding]:
    """A device count above 0, and cudaGetDeviceProperties_v2 failing or filling nothing in."""
    from .devprops import SIZE, is_blank

    out = []
    for pid in _pids(tl):
        counted, count = _cuda_count(tl, pid)
        if not count or count <= 0:
            continue
        failed = [c for c in tl.calls if c.pid == pid and c.function == "cudaGetDeviceProperties_v2" and c.failed]
        blank = [c for c in _props(tl, pid) if is_blank(c.args["prop"])]
        for c in failed[:1] + blank[:1]:
            how = (f"returned {c.result} ({c.result_name})" if c.failed else
                   f"returned cudaSuccess and left all {SIZE} bytes of cudaDeviceProp zero")
            out.append(Finding(
                rule="device-without-properties",
                summary=f"{counted.function} says {count} device(s), but {c.function}(device={c.args.get('device')}) in "
                f"{_base(c.library)} {'failed' if c.failed else 'described nothing'}: no name, compute capability "
                "0.0, 0 bytes of memory",
                evidence=[f"{counted.function}() in {_base(counted.library)} set *count = {count}", f"{_prop_call(c)} {how}"]
                + _ggml_device_lines(tl, pid)
                + [("ggml aborts its init with 'CUDA error' when this call fails" if c.failed else
                    "ggml registers the device as it is: an empty name, compute capability 0.0, VRAM: 0 MiB; ollama "
                    "filters it ('didn't fully initialize') and reports library=cpu, total_vram=\"0 B\"")],
                fix="implement cudaGetDeviceProperties_v2 for every device the count admits: " + PROP_FIX, pid=pid,
                # its failure is the cudaError ggml's CUDA_CHECK aborted on: this finding, not the abort, first
                explains=c.result if c.failed and isinstance(c.result, int) else None))
    return out


def rule_device_compute_capability(tl: Timeline) -> list[Finding]:
    """Compute capability 0.0, or below every architecture this libggml-cuda carries code for."""
    from .devprops import fatbin_targets, is_blank, runs_on, targets_words

    out = []
    for pid in _pids(tl):
        for c in _props(tl, pid):
            prop = c.args["prop"]
            if is_blank(prop):
                continue  # device-without-properties says it
            major, minor = prop.get("major"), prop.get("minor")
            ggml = c.caller if role_of(c.caller) == "ggml-cuda" else next(
                (l.resolved or l.path for l in tl.loads if l.pid == pid and role_of(l.path) == "ggml-cuda"), None)
            targets = fatbin_targets(ggml) if ggml else None
            built = targets_words(targets) if targets else None
            if major and not (targets and not runs_on(targets, major, minor)):
                continue
            ev = [f"{_prop_call(c)} set prop.major = {major}, prop.minor = {minor} (offsets 360/364)"]
            for a in _ok_calls(tl, pid, "cudaDeviceGetAttribute") + _ok_calls(tl, pid, "cuDeviceGetAttribute"):
                attr = a.args.get("attr", a.args.get("attrib"))
                value = a.args.get("value", a.args.get("pi"))
                if attr in (75, 76):
                    ev.append(f"{a.function}({'ComputeCapabilityMajor' if attr == 75 else 'ComputeCapabilityMinor'}) "
                              f"in {_base(a.library)} = {value}" + (": the two answers disagree" if value != (major if attr == 75 else minor) else ""))
            if built:
                ev.append(f"{_base(ggml)} carries GPU code for {built} only (its .nv_fatbin)")
            if not major:
                ev += _layout_evidence(prop, "compute capability")
            ev += _ggml_device_lines(tl, pid)
            ev.append("ggml takes the device as compute capability %d.%d: none of its kernels can run there ('no kernel "
                      "image is available for execution on the device' at the first launch); ollama filters it ('didn't "
                      "fully initialize') and reports compute=%d.%d, library=cpu" % (major, minor, major, minor))
            need = f" (this libggml-cuda needs {min(targets['sm'] + targets['ptx']) // 10}.{min(targets['sm'] + targets['ptx']) % 10} or newer)" if targets else ""
            out.append(Finding(
                rule="device-compute-capability",
                summary=f"cudaGetDeviceProperties_v2 in {_base(c.library)} reports compute capability {major}.{minor} for device "
                f"{c.args.get('device')}" + (f", below what {_base(ggml)} was built for ({built})" if built else ""),
                evidence=ev,
                fix=(PROP_FIX + ", and report the real device's compute capability" + need) if not major else
                f"report the device's real compute capability{need}, or use a libggml-cuda built for this one "
                f"(CMAKE_CUDA_ARCHITECTURES={major}{minor})", pid=pid))
    return out


def rule_device_memory(tl: Timeline) -> list[Finding]:
    """0 bytes of device memory, from any of the places ggml and ollama read it."""
    from .devprops import is_blank

    out = []
    for pid in _pids(tl):
        seen = []  # (what, bytes, call)
        for c in _props(tl, pid):
            if not is_blank(c.args["prop"]):
                seen.append((f"{_prop_call(c)}: prop.totalGlobalMem (offset 288)", c.args["prop"].get("totalGlobalMem"), c))
        for fn, arg in (("cudaMemGetInfo", "total"), ("cuDeviceTotalMem_v2", "bytes")):
            for c in _ok_calls(tl, pid, fn):
                seen.append((f"{fn}() in {_base(c.library)}: *{arg}", c.args.get(arg), c))
        for c in _ok_calls(tl, pid, "nvmlDeviceGetMemoryInfo"):
            mem = c.args.get("memory")
            if isinstance(mem, dict):
                seen.append((f"nvmlDeviceGetMemoryInfo() in {_base(c.library)}: memory.total", mem.get("total"), c))
        zero = [s for s in seen if s[1] == 0]
        if not zero:
            continue
        ev = [f"{what} = {_mib(n)}" for what, n, _ in seen if isinstance(n, int)]
        prop = next((c.args["prop"] for what, n, c in zero if c.function == "cudaGetDeviceProperties_v2"), None)
        if prop is not None:
            ev += _layout_evidence(prop, "bytes (")
        ev += _ggml_device_lines(tl, pid)
        ev.append("ggml reports the device with 'VRAM: 0 MiB' and gives it no share of the tensor split; ollama reports "
                  "total_vram=\"0 B\" and schedules nothing on it")
        out.append(Finding(
            rule="device-no-memory",
            summary=f"the device has 0 bytes of memory according to {', '.join(dict.fromkeys(z[2].function for z in zero))}",
            evidence=ev,
            fix="report the device's memory, the same total everywhere: cudaDeviceProp.totalGlobalMem (offset 288), "
            "cudaMemGetInfo(free, total), cuDeviceTotalMem_v2 and nvmlDeviceGetMemoryInfo"
            + ("; " + PROP_FIX if prop is not None else ""), pid=pid))
    return out


def rule_device_name(tl: Timeline) -> list[Finding]:
    from .devprops import is_blank

    out = []
    for pid in _pids(tl):
        empty = [(f"{_prop_call(c)}: prop.name (char[256] at offset 0)", c) for c in _props(tl, pid)
                 if not is_blank(c.args["prop"]) and not c.args["prop"].get("name")]
        empty += [(f"cuDeviceGetName(dev={c.args.get('dev')}) in {_base(c.library)}: *name", c)
                  for c in _ok_calls(tl, pid, "cuDeviceGetName") if c.args.get("name") == ""]
        if empty:
            out.append(Finding(
                rule="device-empty-name", summary=f"the device's name is empty ({empty[0][1].function} in {_base(empty[0][1].library)})",
                evidence=[f"{what} = ''" for what, _ in empty] + _ggml_device_lines(tl, pid)
                + ["ggml prints 'Device 0: , compute capability ...' and ollama shows a device with no name"],
                fix="write the device's name, NUL-terminated, into prop.name / cuDeviceGetName's buffer (e.g. the real "
                "device's 'NVIDIA ...' name)", pid=pid))
    return out


def rule_nvml_cuda_disagree(tl: Timeline) -> list[Finding]:
    """NVML and CUDA describing a different number of devices, or a different amount of memory."""
    from .devprops import is_blank

    out = []
    for pid in _pids(tl):
        ev, what = [], []
        counted, count = _cuda_count(tl, pid)
        nvml_count = next((c for c in _ok_calls(tl, pid, "nvmlDeviceGetCount_v2")
                           if isinstance(c.args.get("deviceCount"), int)), None)
        if counted and nvml_count and nvml_count.args["deviceCount"] != count:
            ev.append(f"{counted.function}() in {_base(counted.library)} = {count} devices, nvmlDeviceGetCount_v2() in "
                      f"{_base(nvml_count.library)} = {nvml_count.args['deviceCount']}")
            what.append("count")
        cuda_mem = [(f"{_prop_call(c)}: totalGlobalMem", c.args["prop"].get("totalGlobalMem")) for c in _props(tl, pid)
                    if not is_blank(c.args["prop"])]
        cuda_mem += [(f"cuDeviceTotalMem_v2() in {_base(c.library)}", c.args.get("bytes"))
                     for c in _ok_calls(tl, pid, "cuDeviceTotalMem_v2")]
        nvml_mem = [(f"nvmlDeviceGetMemoryInfo() in {_base(c.library)}: memory.total", c.args["memory"].get("total"))
                    for c in _ok_calls(tl, pid, "nvmlDeviceGetMemoryInfo") if isinstance(c.args.get("memory"), dict)]
        if cuda_mem and nvml_mem:
            (cw, cn), (nw, nn) = cuda_mem[0], nvml_mem[0]
            if cn and nn and abs(cn - nn) > max(cn, nn) // 10:
                ev.append(f"{cw} = {_mib(cn)}, {nw} = {_mib(nn)}")
                what.append("memory")
        if ev:
            out.append(Finding(
                rule="nvml-cuda-disagree", summary="NVML and CUDA disagree about the device " + " and ".join(what),
                evidence=ev + ["ollama looks each CUDA device up in NVML (by its UUID) and reports NVML's memory as its VRAM: "
                      "devices NVML does not know, or memory it reports differently, make ollama's plan wrong or drop "
                      "the device"],
                fix="make libnvidia-ml.so.1 and libcuda.so.1 describe the same devices: the same count (after "
                "CUDA_VISIBLE_DEVICES), the same UUIDs, the same total memory", pid=pid))
    return out




def ggml_in_run(tl: Timeline) -> str | None:
    """The libggml-cuda some process of the run loaded: the architectures it carries code for."""
    from . import cudafiles

    for load in tl.loads:
        path = load.resolved or load.path
        if load.ok and cudafiles.role(path) == cudafiles.GGML_CUDA:
            return path
    return None


def _capabilities(tl: Timeline, pid: int) -> list[tuple[object, int, int, str]]:
    """(device, major, minor, where it was read) for each device PID was told about: ggml's
    cudaDeviceProp, else a probe's cuDeviceGetAttribute 75/76."""
    from .devprops import is_blank

    out = [(c.args.get("device"), c.args["prop"].get("major"), c.args["prop"].get("minor"), _prop_call(c))
           for c in _props(tl, pid) if not is_blank(c.args["prop"])]
    if out:
        return out
    return [(dev, major.args.get("pi"), minor.args.get("pi"), f"cuDeviceGetAttribute(75/76, dev={dev}) in "
             f"{_base(major.library)}") for dev, major, minor in probe_attributes(tl, pid)]


def probe_attributes(tl: Timeline, pid: int) -> list[tuple[object, Call, Call]]:
    """(device, its ComputeCapabilityMajor call, its ComputeCapabilityMinor call) for each device
    PID asked the driver both about with cuDeviceGetAttribute 75/76 (ollama's probe), the last
    answer of each; devices in order."""
    attrs: dict[object, dict[int, Call]] = {}
    for c in _ok_calls(tl, pid, "cuDeviceGetAttribute"):
        if c.args.get("attrib") in (75, 76):
            attrs.setdefault(c.args.get("dev"), {})[c.args["attrib"]] = c
    return [(dev, got[75], got[76]) for dev, got in sorted(attrs.items(), key=lambda x: str(x[0]))
            if 75 in got and 76 in got]


def rule_compressed_fatbin(tl: Timeline) -> list[Finding]:
    """The code a device would run from the run's libggml-cuda is stored compressed in its fat
    binary, and the driver the shim reports is older than the first that loads compressed code
    (CUDA 12.4, r550): the first kernel launch fails where that driver is the real one."""
    from .devprops import COMPRESSED_NEEDS_DRIVER, code_for, fatbin_targets

    ggml, targets, out = None, None, []
    for pid in _pids(tl):
        version = next((c for c in _ok_calls(tl, pid, "cuDriverGetVersion") + _ok_calls(tl, pid, "cudaDriverGetVersion")
                        if isinstance(c.args.get("driverVersion"), int)), None)
        if version is None or version.args["driverVersion"] >= COMPRESSED_NEEDS_DRIVER:
            continue
        for dev, major, minor, where in _capabilities(tl, pid):
            if not isinstance(major, int) or not isinstance(minor, int) or major <= 0:
                continue
            if targets is None:
                ggml = ggml_in_run(tl)
                targets = (fatbin_targets(ggml) if ggml else None) or {}
            code = code_for(targets, major, minor) if targets else None
            if code is None or code[1] not in targets.get(f"compressed_{code[0]}", ()):
                continue
            kind, arch = code
            v = version.args["driverVersion"]
            what = f"{'PTX compute' if kind == 'ptx' else 'cubin sm'}_{arch}"
            ev = [f"{where}: compute capability {major}.{minor}",
                  f"{_base(ggml)} carries {what} for it" + (", which the driver JIT-compiles (no cubin of its major)"
                                                             if kind == "ptx" else "")
                  + "; that entry's fat binary flags hold 0x2000: compressed",
                  f"{version.function}() in {_base(version.library)} answered {v} (CUDA {v // 1000}.{v % 1000 // 10}); "
                  "compressed code needs the driver of CUDA 12.4 (r550) or newer"]
            out.append(Finding(
                rule="compressed-fatbin", pid=pid,
                summary=(f"{_base(ggml)} stores the code for device {dev} ({what}) compressed, and the driver reports "
                         f"CUDA {v // 1000}.{v % 1000 // 10}: a driver older than CUDA 12.4 cannot load it, so where that "
                         f"is the real driver behind the shim the first kernel launch fails ('no kernel image is "
                         f"available for execution on the device')"),
                evidence=ev,
                fix=("report the version of the driver that really loads the modules (forward cuDriverGetVersion); "
                     "with a driver older than r550, use a libggml-cuda built without fat binary compression or with a "
                     f"cubin for this device (CMAKE_CUDA_ARCHITECTURES={major}{minor})")))
    return out


RULES = (
    rule_device_without_properties,
    rule_device_compute_capability,
    rule_device_memory,
    rule_device_name,
    rule_nvml_cuda_disagree,
    rule_compressed_fatbin,
)
