"""What-if: test a finding by simulating its fix and running the program again (run --what-if).

A finding is an inference from one run. Its fix can often be simulated with cuda-patch: the
result (and out-parameters) a call would have had once the shim is fixed. The re-run then says
whether the error ggml printed went away or changed (the finding is proven) or stayed (it is not
the cause), and what the next wall is. Pure: never imports gdb; the CLI runs the programs.
"""
from __future__ import annotations

import os

from .calls import VMM_ATTRIBUTE

# init calls whose failure a stand-in result can lift, with the out-parameters a success needs
_SUCCESS_OUTS = {
    "cuInit": [],
    "cuDeviceGetCount": ["0=1"],
    "cuDeviceGet": ["0=0"],
    "cuDevicePrimaryCtxRetain": [],
    "nvmlInit_v2": [],
    "nvmlInit": [],
}

# memory queries past init (rules_road): a success with a device's figures (8 GiB free and total)
_MEMORY_OUTS = {
    "cuDevicePrimaryCtxRetain": [],
    "cuMemGetInfo_v2": ["0=8589934592:8", "1=8589934592:8"],  # size_t out-parameters
    "cudaMemGetInfo": ["0=8589934592:8", "1=8589934592:8"],
}

# what a simulated fix answers in place of a shim's wrong one: a driver branch in NVIDIA's form
# (570: what ollama's cuda_v13 libraries need, 550 enough for cuda_v12), a device's memory, a
# UUID (fixed: the same in every re-run and process), a name
DRIVER_VERSION_TEXT = "570.133.20"
DEVICE_BYTES = 8 << 30
DEVICE_UUID = "GPU-5a1e0c4d-9b7f-4e21-8c3a-2f6d1b0e7a95"
DEVICE_NAME = "NVIDIA simulated device (what-if)"

_CANNOT = {
    "proc-address-target": "the fix is the pointer itself: the shim's own implementation of that entry point",
    "missing-cuGetExportTable": "NVIDIA's private export tables (CUDART_INTERFACE...) exist only in NVIDIA's driver: "
                                "no stand-in can answer for them without one",
    "export-table-failed": "NVIDIA's private export tables (CUDART_INTERFACE...) exist only in NVIDIA's driver: "
                           "no stand-in can answer for them without one",
    "compressed-fatbin": "the wall is which driver loads the modules (the file's compressed code against its age), "
                         "not a call's answer: a run on the shim cannot show the first launch",
    "crash-in-runtime": "the crash is NVIDIA's cudart using a table the shim handed it: only the real table fixes it",
    "backend-load-failed": "a file problem (what ld.so could not load), not a call's result: fix the file",
    "preload-ignored": "a file problem (what ld.so could not preload), not a call's result: fix the path",
    # the first use (core/rules_use.py): what it needs is a device doing work, not an answer
    "first-launch-no-kernel-image": "a launch needs something to run the kernel: no answer stands in for a device "
                                    "(or for code built for the capability reported)",
    "first-use-memory": "an allocation's answer is memory the program then uses: a stand-in pointer would be memory "
                        "that is not there",
    "cublas-create-failed": "a cuBLAS handle is cuBLAS's own object, made on the device: no stand-in answer makes one",
}

Patch = list  # one cuda-patch command's arguments: [FUNCTION, --return, VALUE, --out, ...]


def simulation(finding: dict, report: dict) -> tuple[list[Patch] | None, str | None]:
    """(the cuda-patch commands that simulate FINDING's fix, None) or (None, why it cannot be)."""
    rule = finding.get("rule")
    pid = finding.get("pid")
    if rule == "driver-version":
        return [["cuDriverGetVersion", "--return", "SUCCESS", "--out", f"0={_version_wanted(finding)}"]], None
    if rule in ("driver-error-passed-through", "init-call-failed"):
        return _one(_success_for_first_failure(report, pid, _SUCCESS_OUTS))
    if rule == "memory-query-failed":  # the first memory query that failed, answered with a device's figures
        return _one(_success_for_first_failure(report, pid, _MEMORY_OUTS))
    if rule == "nvml-driver-version":
        return [["nvmlSystemGetDriverVersion", "--return", "SUCCESS", "--out", f"0=str:{DRIVER_VERSION_TEXT}"]], None
    if rule == "device-count":
        return _count(finding, report, pid)
    if rule == "device-uuid-zero":
        return _uuid(report, pid)
    if rule == "device-compute-capability":
        return _capability(finding, report, pid)
    if rule == "device-no-memory":
        return _memory(report, pid)
    if rule == "device-empty-name":
        return _name(report, pid)
    if rule == "device-without-properties":
        return _properties(finding, report, pid)
    if rule == "visible-devices":
        return _visible(finding, report)
    if rule == "missing-cuGetProcAddress_v2":
        return _standin_gpa()
    if rule == "vmm-pool-failed":
        # the fix that needs no VMM at all: the attribute says no, and ggml allocates with cudaMalloc
        return [["cuDeviceGetAttribute", "--return", "SUCCESS", "--out", "0=0", "--if", f"$rsi == {VMM_ATTRIBUTE}"]], None
    if rule in _CANNOT:
        return None, _CANNOT[rule]
    return None, "no stand-in for this finding's fix yet (cuda-patch sets results and out-parameters)"


STANDIN = "libcudashim-standin.so"  # shim/standin_gpa.c
STANDIN_GPA = "cudashim_standin_cuGetProcAddress_v2"


def standin_path() -> str:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(here, "shim", "build", STANDIN)


def _standin_gpa():
    """The driver exporting cuGetProcAddress_v2, simulated: a stand-in (shim/standin_gpa.c, preloaded
    in the re-run) that answers each query from the driver file's own exports, handed to whoever asks
    dlsym for the driver's cuGetProcAddress_v2 (cudart, or an interposer forwarding cudart's queries)."""
    path = standin_path()
    if not os.path.isfile(path):
        return None, f"the stand-in cuGetProcAddress_v2 ({path}) is not built: make -C shim"
    return [["dlsym", "--return", f"sym:{STANDIN_GPA}", "--if", '$_streq((char *)$rsi, "cuGetProcAddress_v2")',
             "--preload", path]], None


def _visible(finding: dict, report: dict):
    """A shim that rejects GPU-<uuid> tokens, simulated as one that reads them: each child's token
    rewritten at its exec (cuda-patch env:) to the ordinal the shim's own cuDeviceGetUuid answered
    for that UUID in another process. The other ways to get the variable wrong are the shim's state
    across processes or its not reading the variable at all: no rewrite of the value shows their fix."""
    summary = finding.get("summary") or ""
    if "does not accept GPU- tokens" not in summary:
        return None, ("the fix is how the shim keeps its devices' UUIDs or reads CUDA_VISIBLE_DEVICES at all, not "
                      "a value the variable could be given instead")
    ordinals: dict[str, int] = {}
    for c in report.get("calls") or []:
        uuid = ((c.get("args") or {}).get("uuid") or {})
        if c.get("function") in ("cuDeviceGetUuid_v2", "cuDeviceGetUuid") and c.get("result") == 0 \
                and isinstance(uuid, dict) and isinstance((c.get("args") or {}).get("dev"), int):
            ordinals.setdefault(uuid.get("uuid"), c["args"]["dev"])
    maps = []
    for p in report.get("processes") or []:
        value = (p.get("env") or {}).get("CUDA_VISIBLE_DEVICES")
        if p.get("what") != "start" or not value or any(m[0] == value for m in maps):
            continue
        tokens = [t for t in value.replace(" ", ",").split(",") if t]
        if not tokens or not all(t.startswith("GPU-") for t in tokens):
            continue
        mapped = [next((d for u, d in ordinals.items() if u and u.startswith(t)), None) for t in tokens]
        if None in mapped:
            continue
        maps.append((value, ",".join(map(str, mapped))))
    if not maps:
        return None, "no child's GPU- token matches a UUID the shim answered in this run"
    patch = ["env:CUDA_VISIBLE_DEVICES"]
    for a, b in maps:
        patch += ["--map", f"{a}={b}"]
    return [patch], None


def _one(result):
    args, why = result
    return ([args] if args is not None else None), why


def _calls(report: dict, pid, functions) -> list[dict]:
    return [c for c in report.get("calls") or [] if (pid is None or c.get("pid") == pid)
            and c.get("function") in functions and c.get("returned")]


def _count(finding: dict, report: dict, pid):
    """A device count ggml cannot take (0 or negative with success, more than its 16), answered as
    a shim with one device would: success, *count = 1, in the call the finding names (its
    summary: "FUNCTION in LIB reports N CUDA devices")."""
    import re

    m = re.match(r"(\w+) in \S+ reports (-?\d+) CUDA devices", finding.get("summary") or "")
    if m is None:
        return None, "the finding does not name the call that gave the count"
    bad = next((c for c in _calls(report, pid, (m.group(1),))
                if c.get("result") == 0 and (c.get("args") or {}).get("count") == int(m.group(2))), None)
    if bad is None:
        return None, "the call that answered the device count is not in the report"
    return [[bad["function"], "--return", "SUCCESS", "--out", "0=1"]], None


def _uuid(report: dict, pid):
    zero = next((c for c in _calls(report, pid, ("cuDeviceGetUuid_v2", "cuDeviceGetUuid"))
                 if (c.get("args") or {}).get("uuid", {}).get("zero")), None)
    if zero is None:
        return None, "the call that answered the all-zero UUID is not in the report"
    return [[zero["function"], "--return", "SUCCESS", "--out", f"0=hex:{DEVICE_UUID}",
             *_for_device((zero.get("args") or {}).get("dev"))]], None


def _for_device(dev) -> list[str]:
    """The answer for device DEV only, in a call whose second argument is the device
    (cudaGetDeviceProperties_v2(prop, device), cuDeviceGetUuid(uuid, dev))."""
    return ["--if", f"$rsi == {dev}"] if isinstance(dev, int) else []


def _needed(finding: dict) -> tuple[int, int]:
    """The compute capability the run's libggml-cuda needs (from the finding's fix), else 8.9."""
    import re

    fix = finding.get("fix") or ""
    m = re.search(r"needs (\d+)\.(\d+) or newer", fix)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r"one of ([0-9,]+)", fix)  # ollama's exact match: one of the backend's ARCHS
    if m:
        arch = int(m.group(1).strip(",").split(",")[-1]) // 10
        return arch // 10, arch % 10
    return 8, 9


def _capability(finding: dict, report: dict, pid):
    major, minor = _needed(finding)
    props = _calls(report, pid, ("cudaGetDeviceProperties_v2",))
    if props:
        return [["cudaGetDeviceProperties_v2", "--return", "SUCCESS", "--out", f"0.major={major}",
                 "--out", f"0.minor={minor}", *_for_device((props[0].get("args") or {}).get("device"))]], None
    attrs = _calls(report, pid, ("cuDeviceGetAttribute",))
    if attrs:
        # one patch per function: the major (attribute 75) is answered, the minor stays what the
        # shim says; that is a simulation of the fix only where the shim's minor is enough
        shim_minor = next(((c.get("args") or {}).get("pi") for c in attrs
                           if (c.get("args") or {}).get("attrib") == 76), None)
        if not isinstance(shim_minor, int) or shim_minor < minor:
            return None, (f"the probe reads major and minor from two calls of cuDeviceGetAttribute and one patch per "
                          f"function answers only the major (75): the shim's minor ({shim_minor}) is below the "
                          f"{major}.{minor} needed")
        return [["cuDeviceGetAttribute", "--return", "SUCCESS", "--out", f"0={major}", "--if", "$rsi == 75"]], None
    return None, "the call that answered the compute capability is not in the report"


def _memory(report: dict, pid):
    """Every place that answered 0 bytes, answered with a device's memory (ggml and ollama read
    several: fixing one leaves the others at 0)."""
    patches = []
    for c in _calls(report, pid, ("cudaGetDeviceProperties_v2", "cudaMemGetInfo", "cuMemGetInfo_v2",
                                  "cuDeviceTotalMem_v2", "nvmlDeviceGetMemoryInfo")):
        args, fn = c.get("args") or {}, c["function"]
        if c.get("result") not in (0, None) or any(p[0] == fn for p in patches):
            continue
        if fn == "cudaGetDeviceProperties_v2" and isinstance(args.get("prop"), dict) and not args["prop"].get("totalGlobalMem"):
            patches.append([fn, "--return", "SUCCESS", "--out", f"0.totalGlobalMem={DEVICE_BYTES}",
                            *_for_device(args.get("device"))])
        elif fn in ("cudaMemGetInfo", "cuMemGetInfo_v2") and not args.get("total"):
            patches.append([fn, "--return", "SUCCESS", "--out", f"0={DEVICE_BYTES}:8", "--out", f"1={DEVICE_BYTES}:8"])
        elif fn == "cuDeviceTotalMem_v2" and not args.get("bytes"):
            patches.append([fn, "--return", "SUCCESS", "--out", f"0={DEVICE_BYTES}:8"])
        elif fn == "nvmlDeviceGetMemoryInfo" and isinstance(args.get("memory"), dict) and not args["memory"].get("total"):
            patches.append([fn, "--return", "SUCCESS", "--out", f"1.total={DEVICE_BYTES}",
                            "--out", f"1.free={DEVICE_BYTES}", "--out", "1.used=0"])
    return (patches, None) if patches else (None, "the calls that answered 0 bytes are not in the report")


def _properties(finding: dict, report: dict, pid):
    """cudaGetDeviceProperties_v2 that failed or described nothing, answered with what ggml's init
    reads first: a name, a compute capability (8.9; a backend built for newer meets its own wall
    next, simulated as such), the device's memory. The fields not named keep what the call left."""
    import re

    from .devprops import is_blank

    m = re.search(r"\(device=(\d+)\)", finding.get("summary") or "")
    device = int(m.group(1)) if m else None
    call = next((c for c in _calls(report, pid, ("cudaGetDeviceProperties_v2",))
                 if (device is None or (c.get("args") or {}).get("device") == device)
                 and (c.get("result") != 0 or isinstance((c.get("args") or {}).get("prop"), dict)
                      and is_blank(c["args"]["prop"]))), None)
    if call is None:
        return None, "the cudaGetDeviceProperties_v2 call that described nothing is not in the report"
    return [[call["function"], "--return", "SUCCESS", "--out", f"0.name=str:{DEVICE_NAME}", "--out", "0.major=8",
             "--out", "0.minor=9", "--out", f"0.totalGlobalMem={DEVICE_BYTES}",
             *_for_device((call.get("args") or {}).get("device"))]], None


def _name(report: dict, pid):
    for c in _calls(report, pid, ("cudaGetDeviceProperties_v2", "cuDeviceGetName")):
        args = c.get("args") or {}
        if c["function"] == "cudaGetDeviceProperties_v2" and isinstance(args.get("prop"), dict) \
                and not args["prop"].get("name"):
            return [[c["function"], "--return", "SUCCESS", "--out", f"0.name=str:{DEVICE_NAME}",
                     *_for_device(args.get("device"))]], None
        if c["function"] == "cuDeviceGetName" and args.get("name") == "":
            return [[c["function"], "--return", "SUCCESS", "--out", f"0=str:{DEVICE_NAME}"]], None
    return None, "the call that answered the empty name is not in the report"


class Unmergeable(ValueError):
    """Two walls' answers for one function that one patch cannot give: the line says why."""


def merged(patches: list[Patch]) -> list[Patch]:
    """PATCHES with those of one function made one (cuda-patch holds one patch per function: a
    second wall's answer for cudaGetDeviceProperties_v2 joins the first's). The later --return
    and --out of the same place win. Two different --if conditions cannot be one patch (dropping
    them would write one device's answer into every call): Unmergeable."""
    out: dict[str, dict] = {}
    for p in patches:
        fn, opts = p[0], _options(p[1:])
        if fn not in out:
            out[fn] = opts
            continue
        have = out[fn]
        if have.get("--if") != opts.get("--if"):
            raise Unmergeable(f"two walls answer {fn} under different conditions ({have.get('--if') or 'every call'} "
                              f"and {opts.get('--if') or 'every call'}); cuda-patch holds one patch per function")
        for key in ("--return", "--preload"):
            if key in opts:
                have[key] = opts[key]
        for key in ("--out", "--map"):  # the later answer for one place (an out-parameter, a value) wins
            merged_ = {o.split("=", 1)[0]: o for o in have.get(key, []) + opts.get(key, [])}
            have[key] = list(merged_.values())
    result = []
    for fn, opts in out.items():
        args = [fn]
        for key in ("--return", "--if", "--preload"):
            if opts.get(key) is not None:
                args += [key, opts[key]]
        for key in ("--out", "--map"):
            for o in opts.get(key, []):
                args += [key, o]
        result.append(args)
    return result


def _options(args: list[str]) -> dict:
    opts: dict = {}
    for key, value in zip(args[::2], args[1::2]):
        if key in ("--out", "--map"):
            opts.setdefault(key, []).append(value)
        else:
            opts[key] = value
    return opts


def _success_for_first_failure(report: dict, pid, outs: dict) -> tuple[Patch | None, str | None]:
    """cuda-patch arguments that make PID's first failing call among OUTS's functions succeed, with
    the out-parameters OUTS gives it."""
    call = next((c for c in _calls(report, pid, outs) if c.get("result") not in (0, None)), None)
    if call is None:
        return None, "the failing call is not in the report"
    args = [call["function"], "--return", "SUCCESS"]
    for out in outs[call["function"]]:
        args += ["--out", out]
    return args, None


def _version_wanted(finding: dict) -> int:
    import re

    text = " ".join([finding.get("summary", ""), *finding.get("evidence", [])])
    m = re.search(r"\((1[23]\d{3})\)", text) or re.search(r"needs (1[23]\d{3})", text)
    return 13000 if m and m.group(1).startswith("13") else 12090


def prove(report: dict, rerun, max_walls: int, announce=None) -> tuple[list[dict], list[dict]]:
    """(the walls, the findings tested beside them) of REPORT's run. The walls: simulate the first
    finding's fix, run again (RERUN(patches) -> the re-run's report, or a string: why it could not
    run with them), and judge. Proven: the next run's findings are the next wall. Not the cause:
    the next finding is tried, and the simulation is dropped. A finding that cannot be simulated
    ends the chain when it claims the error the run printed (nothing past it can be seen); one
    that claims none (a preload ld.so ignored, an abort that follows) is passed, and the next
    finding of the same run is tried.
    Then each finding of the chain's last run that no wall reached and whose fix can be simulated
    is tested beside the walls, at most MAX_WALLS of them: its fix alone on top of the proven
    walls' fixes, judged against that last run. Every finding an inference makes gets its re-run
    (issue #20 item 1): the lookup miss cudart tolerates, listed below the wall that ended the
    chain, is shown not to be the cause instead of standing there as a second suspect.
    ANNOUNCE(label, the simulation in words) says what is about to run ("wall 2", "also tested").
    RERUN raises Stop when the user stopped the what-if (SIGINT, SIGTERM): the walls and tests
    judged so far are kept, the one in progress is dropped.
    One loop for both drivers: the CLI (a gdb per run) and cuda-whatif (runs in the same gdb)."""
    walls: list[dict] = []
    tested: list[dict] = []
    try:
        _prove(report, rerun, max_walls, announce, walls, tested)
    except Stop:
        if walls and "verdict" not in walls[-1]:
            walls.pop()
    return walls, tested


class Stop(Exception):
    """Raised by a what-if's RERUN: the user stopped it; no further run is made."""


def _prove(report: dict, rerun, max_walls: int, announce, walls: list[dict], tested: list[dict]) -> None:
    patches: list[Patch] = []
    current, tried = report, set()
    ended = False
    while len(walls) < max_walls and not ended:
        progressed = False
        for f in current.get("findings") or []:
            key = same_words(f)  # the same finding in a re-run (another pid) is not a new wall
            if key in tried or len(walls) >= max_walls:
                continue
            tried.add(key)
            wall = {"wall": len(walls) + 1, "rule": f.get("rule"), "summary": f.get("summary"),
                    "error_before": error_text(current)}
            walls.append(wall)
            fields, after, sims = _try(f, current, patches, rerun, announce, f"wall {wall['wall']}")
            wall.update(fields)
            if fields["verdict"] == "proven":
                patches += sims
                current, progressed = after, True
                break
            if fields["verdict"] == "cannot simulate" and _claims_the_error(f):
                ended = True
                break
        if not progressed:
            break
    if not ended and len(walls) >= max_walls and any(same_words(f) not in tried for f in current.get("findings") or []):
        return  # cut by the limit: the next wall stands untried in front of every other finding
    standing = walls[-1] if ended else None
    _beside(current, patches, tried, walls, standing, rerun, max_walls, announce, tested)


def _beside(current: dict, patches: list[Patch], tried: set, walls: list[dict], standing: dict | None, rerun,
            limit: int, announce, tested: list[dict]) -> None:
    """The findings of CURRENT (the chain's last run) that no wall reached, each with its fix
    simulated alone on top of PATCHES (the proven walls' fixes) and judged against CURRENT.
    Those that cannot be simulated are not re-run: the diagnosis already says what they are.
    STANDING: the wall that ended the chain (the printed error's own cause, which nothing
    simulates); a finding that fails the same way behind it is not the cause of that error, and
    says so in those words: what it does once that wall is fixed no run here can show."""
    on = [w["wall"] for w in walls if w.get("verdict") == "proven"]
    for f in current.get("findings") or []:
        key = same_words(f)
        if key in tried or len(tested) >= limit or simulation(f, current)[0] is None:
            continue
        tried.add(key)
        entry = {"test": len(tested) + 1, "rule": f.get("rule"), "summary": f.get("summary"),
                 "error_before": error_text(current), "on_walls": on}
        fields, _after, _sims = _try(f, current, patches, rerun, announce, "also tested")
        if fields["verdict"] == "not the cause" and standing is not None:
            fields["why"] += (f"; wall {standing['wall']} still stands in front of it (cannot simulate): not the cause "
                              "of this error, which says nothing of what it does once that wall is fixed")
        entry.update(fields)
        tested.append(entry)


def rank(report: dict, walls: list[dict], tested: list[dict] = ()) -> None:
    """A finding whose re-run showed it is not the cause drops in rank: REPORT's findings keep
    their order, those below every other, each with the re-run's evidence. The walls that were
    proven or could not be simulated stay where they were."""
    findings = report.get("findings") or []
    demoted = {}
    for w in [*walls, *tested]:
        if w.get("verdict") == "not the cause":
            demoted.setdefault(same_words({"rule": w.get("rule"), "summary": w.get("summary")}), w)
    if not demoted:
        return
    keep, down = [], []
    for f in findings:
        w = demoted.get(same_words(f))
        if w is None:
            keep.append(f)
            continue
        f.setdefault("evidence", []).append(f"what-if {_label(w)}: not the cause (with {shown(w['simulation'])}: "
                                            f"{w['why']})")
        f["not_the_cause"] = True
        down.append(f)
    report["findings"] = keep + down


def _label(entry: dict) -> str:
    """A wall ("wall 2") or a finding tested beside the walls ("test 1, with the fix of wall 1")."""
    if "wall" in entry:
        return f"wall {entry['wall']}"
    on = entry.get("on_walls") or []
    return f"test {entry.get('test')}" + (f", with the fix of wall {on[0]}" if len(on) == 1 else
                                          f", with the fixes of walls {', '.join(map(str, on))}" if on else
                                          ", on the first run")


def _try(finding: dict, current: dict, patches: list[Patch], rerun, announce, label: str):
    """One wall or test: (its verdict fields, the re-run's report or None, the simulation's patches)."""
    sims, why = simulation(finding, current)
    if sims is None:
        return {"verdict": "cannot simulate", "why": why, "simulation": None}, None, []
    words = as_words(sims)
    if announce is not None:
        announce(label, shown(words))
    try:
        after = rerun(merged(patches + sims))
    except Unmergeable as exc:
        after = str(exc)
    if isinstance(after, str):
        return {"verdict": "cannot simulate", "simulation": words, "why": after}, None, sims
    if after.get("partial"):
        # stopped before its end (gdb died, stopped answering): part of a run proves nothing
        how = after.get("gdb_died") or after.get("interrupted") or "stopped before its end"
        return {"verdict": "cannot simulate", "simulation": words,
                "why": f"the re-run did not finish ({how}): no verdict from part of a run"}, None, sims
    untouched = [sim[0] for sim in sims if _made_but_not_patched(after, sim[0])]
    if untouched:
        # the call was made again but its result was not replaced (cuda-patch refused the
        # arguments, or could not reach the call): no verdict from a run that simulated nothing
        return {"verdict": "cannot simulate", "simulation": words,
                "why": f"cuda-patch {untouched[0]} did not change its result in the re-run"}, None, sims
    if not any(_patched(after, sim[0]) for sim in sims):
        # the re-run never reached the call the simulation answers: it ran unchanged, and failing
        # the same way then says nothing of the finding (never "not the cause" on that strength)
        return {"verdict": "cannot simulate", "simulation": words,
                "why": f"the re-run never reached {sims[0][0]}: nothing was simulated"}, None, sims
    judged, why = verdict(current, after, [sim[0] for sim in sims])
    return {"verdict": judged, "why": why, "simulation": words, "error_after": error_text(after),
            "status_after": after.get("status"),
            "rules_after": [x.get("rule") for x in after.get("findings") or []]}, after, sims


def _claims_the_error(finding: dict) -> bool:
    """FINDING says which error the run printed (its cudaError or CUresult): past a wall that is
    the error's own cause and cannot be simulated, nothing further can be seen."""
    return finding.get("explains") is not None


def _made_but_not_patched(report: dict, function: str) -> bool:
    if function.startswith("env:"):
        return not _patched(report, function)
    calls = [c for c in report.get("calls") or [] if c.get("function") == function]
    return bool(calls) and not _patched(report, function)


def _patched(report: dict, function: str) -> bool:
    """cuda-patch FUNCTION changed something in REPORT's run: a call's result (cuda-patch records
    each answer it gave as a call with patched_from), or a child's variable at its exec."""
    if function.startswith("env:"):  # an environment rewrite says so in the notes when it is made
        name = function[4:]
        return any(f"started with {name}=" in n and ", rewritten to " in n for n in report.get("notes") or [])
    return any(c.get("function") == function and c.get("patched_from") is not None for c in report.get("calls") or [])


def error_text(report: dict) -> str | None:
    """What the run printed as its CUDA init error (the first one), or None."""
    errors = report.get("errors") or []
    return errors[0]["text"].strip() if errors else None


def verdict(before: dict, after: dict, functions: list[str] | None = None) -> tuple[str, str]:
    """(proven | not the cause | cannot simulate, the evidence in words) from the runs before and
    after a simulation of FUNCTIONS' answers."""
    was, now = error_text(before), error_text(after)
    first_before = (before.get("findings") or [{}])[0]
    first_after = (after.get("findings") or [{}])[0] if after.get("findings") else {}
    if was and not now:
        return "proven", f"the error {was!r} is gone"
    if was != now:
        return "proven", f"the error changed from {was!r} to {now!r}"
    if was and _texts(before) == _texts(after):
        follow = _same_failure_next(before, after, functions or [])
        if follow:
            return "cannot simulate", follow
        # the same words, but another cause behind them now: the simulated wall was real, and the next
        # one happens to end in the same message (a driver too old, met once cudart gets its entry points)
        had = {same_words(f) for f in before.get("findings") or []}
        code = _printed_code(after)
        behind = next((f for f in after.get("findings") or [] if code is not None and f.get("explains") == code
                       and same_words(f) not in had), None)
        if behind is not None:
            return "proven", (f"the same text ({now!r}), but the re-run went further and met another cause behind "
                              f"it: {behind.get('rule')}: {behind.get('summary')}")
        # the program printed the same failure: whatever its own finding says now (the simulated
        # call answers success), the program did not get past it; the shim's state behind the
        # answer (an init that never ran) may be part of the cause, not simulated by an answer
        return "not the cause", (f"the run failed the same way ({now!r}): the simulated answer alone does not get "
                                 "the program past it")
    if same_words(first_before) != same_words(first_after):
        went = (f"its first finding is now {first_after.get('rule')}: {first_after.get('summary')}"
                if first_after else "no finding is left")
        return "proven", (("the same text, but " if now else "") + f"the run went further ({went})"
                          + _output_change(before, after))
    return "not the cause", (f"the run failed the same way ({now!r})" if now else
                             "the run failed the same way (the same first finding, no error text)")


def _output_change(before: dict, after: dict) -> str:
    """'; the program's output changed: A became B' (the first line of the capture windows that
    differs: ggml's "Device 0: ..." lines), or '' when nothing it wrote there differs or nothing
    was captured. The evidence that the program, not only the finding, behaved differently."""
    from itertools import zip_longest

    a, b = next(((a, b) for a, b in zip_longest(_output_lines(before), _output_lines(after)) if a != b), (None, None))
    if a is None and b is None:
        return ""
    return f"; the program's output changed: {repr(a) if a is not None else 'nothing'} became " \
           f"{repr(b) if b is not None else 'nothing'}"


def _output_lines(report: dict) -> list[str]:
    """REPORT's output, line by line, without what differs on every run (diff's normal_text:
    time stamps, addresses, pids, directories)."""
    from .diff import normal_text

    lines = []
    for w in report.get("output") or []:
        lines += [t for t in (normal_text(line).strip() for line in (w.get("text") or "").splitlines()) if t]
    return lines


def _same_failure_next(before: dict, after: dict, functions: list[str]) -> str | None:
    """The simulated call answered success, and the next call of the same process now fails with
    the very result it had: the shim's state behind the answer (an init that never ran) is the
    cause, which no answer simulates. None when that is not what the re-run shows."""
    for fn in functions:
        was = next((c for c in before.get("calls") or [] if c.get("function") == fn and c.get("returned")
                    and c.get("result") not in (0, None) and c.get("patched_from") is None), None)
        if was is None:
            continue
        nxt = next((c for c in after.get("calls") or [] if c.get("function") not in functions and c.get("returned")
                    and c.get("result") == was["result"] and c.get("patched_from") is None), None)
        if nxt is not None:
            name = was.get("result_name") or was["result"]
            return (f"answering {fn} alone is not enough: the next call, {nxt['function']}, fails the same way ({name}); "
                    f"the shim's state behind {fn} (what its success would have set up) is what the fix must change")
    return None


def _printed_code(report: dict) -> int | None:
    """The cudaError behind the error text REPORT's run printed ("failed to initialize CUDA: <text>")."""
    from .codes import ggml_init_error

    return ggml_init_error(error_text(report) or "")


def _texts(report: dict) -> list[str]:
    return [e.get("text", "").strip() for e in report.get("errors") or []]


def same_words(finding: dict) -> tuple:
    """A finding as two runs can compare it: its rule and summary without process ids."""
    import re

    summary = re.sub(r"\bpids? \d+", "pid N", finding.get("summary") or "")
    return finding.get("rule"), re.sub(r"\b0x[0-9a-f]{5,}\b", "0x...", summary)  # load addresses move between runs


def render(walls: list[dict], seconds: float, tested: list[dict] = ()) -> list[str]:
    also = f", {len(tested)} other finding(s) tested beside them" if tested else ""
    out = ["", f"What-if: each finding's fix simulated and the program run again ({len(walls)} wall(s){also}, "
               f"{seconds:.1f} s in all)"]
    for w in walls:
        out.append(_line(f"wall {w['wall']}: {w['summary']}", w))
    last = walls[-1] if walls else None
    if last and last["verdict"] == "proven" and last.get("status_after") == 0 and not last.get("rules_after"):
        proven = sum(w["verdict"] == "proven" for w in walls)
        fixes = f"the {proven} simulated fixes" if proven > 1 else "the simulated fix"
        out.append(f"no wall left: with {fixes} above, CUDA initialised and the run met no finding (make "
                   f"{'them' if proven > 1 else 'it'} in the shim, then run again to see it for real)")
    for t in tested:
        on = t.get("on_walls") or []
        where = (f"with wall {on[0]}'s fix" if len(on) == 1 else
                 f"with walls {', '.join(map(str, on))}'s fixes" if on else "on the first run")
        out.append(_line(f"also tested ({where}): {t['summary']}", t))
    return out


def _line(head: str, entry: dict) -> str:
    if entry["verdict"] == "cannot simulate":
        return f"{head} -- cannot simulate: {entry['why']}"
    return f"{head} -- {entry['verdict']} (with {shown(entry['simulation'])}: {entry['why']})"


def shown(simulation: list[str]) -> str:
    """A wall's simulation as a person would type it: each cuda-patch command, its arguments quoted
    where they hold spaces or shell characters, commands joined by ';'."""
    import shlex

    return " ".join(a if a == ";" else shlex.quote(a) for a in simulation)


def as_words(patches: list[Patch]) -> list[str]:
    """The JSON form of a wall's simulation: 'cuda-patch' and the arguments of each command, ';'
    between commands (one command: exactly its words, as schema 2 has them)."""
    words: list[str] = []
    for p in patches:
        words += ([";"] if words else []) + ["cuda-patch", *p]
    return words
