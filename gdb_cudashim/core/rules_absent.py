"""Rules for what did not happen, or happened with no ggml message to point at it: a clean bill
is a claim. "No CUDA init failure seen" is said only when CUDA was loaded and initialised and
the run watched it; nothing loaded, nothing seen, a failing init call the program checked itself,
or a device count ggml cannot take is a finding of its own (issues #18 item 5, #21).

Pure: never imports gdb. Each rule is Timeline -> list[Finding]; rules.analyze runs them after
its own and keeps the ones that say something the others did not (see `extra`).
"""
from __future__ import annotations

import glob
import os
import re

from .calls import role_of
from .finding import Finding, base as _base
from .timeline import Timeline

# The rules whose findings mean "nothing to diagnose", not "a failure caught": run's exit 4.
NOTHING_TO_DIAGNOSE = ("no-cuda-loaded", "program-never-ran", "init-before-watch")

# The calls a CUDA init goes through: one of them failing is the init failing, whoever checks it.
INIT_CALLS = ("cuInit", "cuDriverGetVersion", "cuDeviceGetCount", "nvmlInit", "nvmlInit_v2", "nvmlInitWithFlags",
              "cudaGetDeviceCount")

GGML_CUDA_MAX_DEVICES = 16  # ggml-cuda/common.cuh; ggml_cuda_init: GGML_ASSERT(info.device_count <= GGML_CUDA_MAX_DEVICES)


def cuda_loaded(tl: Timeline, pid: int) -> bool:
    """PID had a CUDA library mapped at some point the run saw."""
    if any(l.pid == pid and l.ok for l in tl.loads):
        return True
    if any(s.pid == pid and s.files for s in tl.libraries):
        return True
    return any(c.pid == pid for c in tl.calls) or any(l.pid == pid and l.found for l in tl.lookups)


def _started(tl: Timeline) -> list:
    return [p for p in tl.processes if p.what == "start"]


def _ended(tl: Timeline, pid: int):
    return next((p for p in tl.processes if p.pid == pid and p.what == "exit"), None)


EXIT_WORDS = {126: "the shell's 'found but cannot execute'", 127: "the shell's 'command not found' (a #! interpreter "
              "or a program that does not exist)"}


def _how_it_ended(tl: Timeline, pid: int) -> str:
    end = _ended(tl, pid)
    if end is None:
        return "was still running when the watch ended"
    if end.signal:
        return f"ended by {end.signal}" + (" (ended by gdb-cudashim)" if end.detail.startswith("ended by") else "")
    if end.exit_code is None:
        return "ended (exit status not seen)"
    words = EXIT_WORDS.get(end.exit_code)
    return f"exited with status {end.exit_code}" + (f": {words}" if words else "")


def _backend_search(start) -> list[str]:
    """Where ggml's backend loader (GGML_BACKEND_DL builds: llama.cpp, ollama) would have found
    libggml-cuda: GGML_BACKEND_PATH, the executable's directory, the working directory; ollama's
    lib/ollama/<variant>/ beside its bin/. What the files say, not what the program did."""
    out = []
    env = start.env or {}
    exe = start.detail or ""
    path = env.get("GGML_BACKEND_PATH")
    if path:
        state = "exists" if os.path.exists(path) else "does not exist"
        out.append(f"GGML_BACKEND_PATH={path!r} ({state}) was never loaded as a CUDA library")
    dirs = [d for d in dict.fromkeys([os.path.dirname(exe) if exe.startswith("/") else "", start.cwd or ""]) if d]
    found, empty = [], []
    for d in dirs:
        hits = sorted(glob.glob(os.path.join(glob.escape(d), "libggml-cuda*.so")))
        (found if hits else empty).append((d, hits))
    if exe.startswith("/"):
        for d in sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(os.path.dirname(exe))), "lib", "ollama", "*"))):
            hits = sorted(glob.glob(os.path.join(glob.escape(d), "libggml-cuda*.so")))
            (found if hits else empty).append((d, hits))
    if env.get("OLLAMA_LIBRARY_PATH"):
        out.append(f"OLLAMA_LIBRARY_PATH={env['OLLAMA_LIBRARY_PATH']!r}")
    for d, hits in found:
        out.append(f"{d} holds {', '.join(os.path.basename(h) for h in hits[:3])}, which ggml's backend loader "
                   "would load from there: the program never did")
    if empty:
        out.append("no libggml-cuda*.so in " + ", ".join(d for d, _ in empty)
                   + " (where llama.cpp's backend loader looks, besides GGML_BACKEND_PATH)")
    return out


def rule_no_cuda(tl: Timeline) -> list[Finding]:
    """No traced process loaded a CUDA library: there was nothing to diagnose, and saying so is
    the finding. A program that never ran (could not be executed) says that instead."""
    starts = _started(tl)
    if any(cuda_loaded(tl, p.pid) for p in starts) or tl.calls:
        return []
    if not starts:
        why = [" ".join(n.split()) for n in tl.notes if n.startswith("could not run")]
        return [Finding(rule="program-never-ran", summary="the program never ran: no process started, so no CUDA library was loaded "
                        "and nothing could be diagnosed",
                        evidence=why or ["no process was seen"],
                        fix="check the program: it must be an executable file (a complete ELF, or a script with a #! line "
                        "naming an interpreter that exists)")]
    evidence = []
    for p in starts:
        evidence.append(f"pid {p.pid} ({_base(p.detail)}) {_how_it_ended(tl, p.pid)}, without loading any CUDA library")
    tried = tl.loads
    if tried:
        for l in tried:
            state = "FAILED" + (f": {l.error}" if l.error else "") if l.ok is False else "no return seen"
            evidence.append(f"pid {l.pid}: dlopen(\"{l.path}\") by {_base(l.caller)}: {state}")
    else:
        evidence.append("no process tried to dlopen a CUDA library (libcuda.so.1, libcudart.so.*, libggml-cuda*.so, "
                        "libnvidia-ml.so.1), and none was linked in")
    for p in starts[:1]:  # the program the user ran
        evidence += _backend_search(p)
    prog = _base(starts[0].detail)
    first_end = _how_it_ended(tl, starts[0].pid)
    never = ("the program never loaded CUDA" if _ended(tl, starts[0].pid) is not None
             else "the process loaded no CUDA library while it was watched")
    summary = f"no CUDA library was loaded: nothing to diagnose ({never}; {prog} {first_end})"
    fix = ("run the program that loads ggml's CUDA backend (llama-server, an ollama runner...), with its CUDA backend "
           "where its loader looks: libggml-cuda*.so beside the executable or in the working directory, or "
           "GGML_BACKEND_PATH pointing at it (ollama: lib/ollama/<variant>/); this run says nothing about the shim")
    if not tried and any(tl.process_start(p.pid) and _ended(tl, p.pid) and _ended(tl, p.pid).exit_code in (126, 127)
                         for p in starts):
        fix = "the program could not be executed (status 126/127): check the #! line and the path; " + fix
    return [Finding(rule="no-cuda-loaded", summary=summary, evidence=evidence, fix=fix, pid=starts[0].pid)]


FIXES = {
    100: "make cuInit find a device: check the shim's device discovery and CUDA_VISIBLE_DEVICES",
    34: "the process loaded a CUDA stub library as libcuda.so.1: put the real driver (or the shim) ahead of the stubs "
        "directory on the library path",
    3: "cuInit must succeed before other calls: return CUDA_SUCCESS from cuInit once the shim is set up",
}


def rule_init_call_failed(tl: Timeline) -> list[Finding]:
    """A CUDA init call that failed, whether or not anyone printed a message ggml's patterns
    match: ollama's older discovery dlopens libcuda.so.1 and checks cuInit itself."""
    out = []
    seen = set()
    for c in tl.calls:
        if c.function not in INIT_CALLS or not c.failed or c.pid in seen:
            continue
        seen.add(c.pid)
        start = tl.process_start(c.pid)
        prog = _base(start.detail) if start else "?"
        ev = [f"{c.function}({c.describe_args()}) in {_base(c.library)}, called from {_base(c.caller)}, returned "
              f"{c.result} ({c.result_name})"]
        # what the program wrote about it: the result as a number of its own (never the digit of a
        # time stamp or a device count), in a line naming the call or written as an error
        said = [w for w in tl.writes if w.pid == c.pid and re.search(rf"(?<![\w.]){c.result}(?![\w.])", w.text)
                and (c.function in w.text or tl.matches_error(w.text))][:2]
        ev += [f"{prog} wrote: {w.text.strip()!r}" for w in said]
        ev.append(f"pid {c.pid} ({prog}) {_how_it_ended(tl, c.pid)}")
        fix = FIXES.get(c.result if c.spec and c.spec.layer == "driver" else None,
                        f"find why {c.function} returns {c.result_name} in {_base(c.library)} and return success")
        visible = start.env.get("CUDA_VISIBLE_DEVICES") if start is not None else None
        if c.result == 100 and c.spec and c.spec.layer == "driver":
            fix += f" (the process has CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else " (unset in the process)"
        out.append(Finding(
            rule="init-call-failed",
            summary=f"{c.function}() in {_base(c.library)} returned {c.result_name} ({c.result}): {prog}'s CUDA init failed"
            + ("" if any(tl.matches_error(w.text) for w in tl.writes if w.pid == c.pid) else
               " (no ggml message: the program checked the result itself)"),
            evidence=ev, fix=fix, pid=c.pid, explains=c.result if isinstance(c.result, int) else None))
    return out


def rule_device_count(tl: Timeline) -> list[Finding]:
    """A device count ggml cannot take: more than GGML_CUDA_MAX_DEVICES (16) aborts ggml_cuda_init
    on GGML_ASSERT with no CUDA error printed; a negative one is logged as "found -5 CUDA devices"
    and carried on with."""
    out = []
    for c in tl.calls:
        if c.function not in ("cudaGetDeviceCount", "cuDeviceGetCount") or not c.returned or c.failed:
            continue
        n = c.args.get("count")
        if not isinstance(n, int) or 0 < n <= GGML_CUDA_MAX_DEVICES:
            continue
        if any(f.pid == c.pid for f in out):
            continue
        start = tl.process_start(c.pid)
        prog = _base(start.detail) if start else "?"
        visible = (start.env or {}).get("CUDA_VISIBLE_DEVICES") if start is not None else None
        if n == 0 and visible:
            continue  # told to see some devices and found none: rules_road's visible-devices says why
        ev = [f"{c.function}() in {_base(c.library)}, called from {_base(c.caller)}, returned {c.result_name} "
              f"and set *count = {n}"]
        if n == 0:
            later = [x for x in tl.calls if x.pid == c.pid and x.seq > c.seq and x.function == c.function
                     and x.returned and not x.failed and (x.args.get("count") or 0) > 0]
            if later:
                continue  # asked again later and found devices: not the answer the process went on with
            if any(x.pid == c.pid and x.function == "cudaGetDeviceCount" and x.failed for x in tl.calls):
                continue  # the runtime turned it into an error, which ggml printed: the init rules name it
            summary = (f"{c.function} in {_base(c.library)} reports 0 CUDA devices, with success: ggml finds no "
                       "device ('found 0 CUDA devices', llama-server lists none) and carries on without CUDA, "
                       "which ollama reports as library=cpu; no CUDA error is written")
            if visible is not None:
                ev.append(f"pid {c.pid} ({prog}) started with CUDA_VISIBLE_DEVICES={visible!r}: it was told to see none")
            fix = ("count the device(s) the shim has (after CUDA_VISIBLE_DEVICES); when there is none, say so as "
                   "NVIDIA's driver does, with CUDA_ERROR_NO_DEVICE from cuInit (cudaErrorNoDevice, 100), so that "
                   "the error is named where it happens")
            out.append(Finding(rule="device-count", summary=summary, evidence=ev, fix=fix, pid=c.pid))
            continue
        if n > GGML_CUDA_MAX_DEVICES:
            summary = (f"{c.function} in {_base(c.library)} reports {n} CUDA devices, more than ggml's limit of "
                       f"{GGML_CUDA_MAX_DEVICES} (GGML_CUDA_MAX_DEVICES): ggml_cuda_init aborts on "
                       "GGML_ASSERT(info.device_count <= GGML_CUDA_MAX_DEVICES)")
            ev.append(f"pid {c.pid} ({prog}) {_how_it_ended(tl, c.pid)}: the assertion's text goes to stderr, not "
                      "through a CUDA error, so no CUDA init error is written")
            fix = (f"return the real number of devices from {c.function} (at most {GGML_CUDA_MAX_DEVICES} for ggml; "
                   "the count the shim exposes, after CUDA_VISIBLE_DEVICES): an uninitialised or garbage count "
                   "looks like this")
        else:
            summary = (f"{c.function} in {_base(c.library)} reports {n} CUDA devices, a negative count with success: "
                       "ggml logs 'found {0} CUDA devices' and carries on with no usable device".format(n))
            ev += [f"ggml printed: {w.text.strip()!r}" for w in tl.writes
                   if w.pid == c.pid and "CUDA devices" in w.text][:1]
            fix = (f"return the number of devices (0 or more) from {c.function}, or an error (cudaErrorNoDevice, 100) "
                   "when there is none")
        out.append(Finding(rule="device-count", summary=summary, evidence=ev, fix=fix, pid=c.pid))
    return out


def rule_hang_since_attach(tl: Timeline) -> list[Finding]:
    """An attach to a process with a thread already inside a CUDA init entry point, still there
    in the same place when the watch ended: a hang, as run reports it."""
    out = []
    if not tl.hang:
        return out
    at_end = {t["tid"]: t for t in tl.hang.get("threads") or []}
    for th in tl.watch_began:
        end = at_end.get(th["tid"])
        if end is None or end.get("waiting_in") != th["waiting_in"]:
            continue
        start = tl.process_start(th["pid"])
        prog = _base(start.detail) if start else "?"
        after = tl.hang.get("after_seconds")
        ev = [f"when the watch began, thread {th['tid']} ({th.get('name') or prog}) was in {th['waiting_in']}"
              + (f", blocked in {th['blocked']}" if th.get("blocked") else ""),
              f"at the end ({after} s later) it was in the same place"
              + (f", blocked in {end['blocked']}" if end.get("blocked") else ", running (not blocked)")]
        out.append(Finding(
            rule="hang-since-attach",
            summary=f"{prog} (pid {th['pid']}) thread {th['tid']} was already inside {th['waiting_in']} when the watch began and "
            f"never left it{f' in {after} s' if after is not None else ''}: its CUDA init hangs",
            evidence=ev, fix="the call never returns from the driver/shim: see where the thread waits (the frames above); a lock, a "
            "wait on a device or on a daemon that never answers; run the program under 'gdb-cudashim run' to see what "
            "it did before", pid=th["pid"]))
    return out


def rule_init_before_watch(tl: Timeline) -> list[Finding]:
    """An attach after CUDA was loaded (and its init ran): say so, and read what it left (the files
    mapped, the shims' globals); never a clean bill for an init nobody watched."""
    from .text import format_value

    out = []
    for snap in tl.libraries:
        if snap.when != "when the watch began" or not snap.files:
            continue
        pid = snap.pid
        if any(c.pid == pid and c.function in INIT_CALLS for c in tl.calls):
            continue  # an init in the watch (a server calling cuInit again): watched
        start = tl.process_start(pid)
        prog = _base(start.detail) if start else "?"
        ev = [f"mapped when the watch began: {f['role']} {f['path']}" for f in snap.files]
        for shim in snap.shims:
            values = [f"{k}={format_value(v.get('value'))}" for k, v in (shim.get("globals") or {}).items()
                      if not v.get("error") and ("init" in k or "result" in k or "count" in k or "error" in k)]
            if values:
                ev.append(f"what the init left in {_base(shim['library'])}: " + ", ".join(values[:8]))
        out.append(Finding(
            rule="init-before-watch",
            summary=f"CUDA init in {prog} (pid {pid}) ran before the watch began ({', '.join(_base(f['path']) for f in snap.files)} "
            "already mapped): it was not watched, so nothing here says whether it failed",
            evidence=ev, fix="run the program under 'gdb-cudashim run -- ...', or attach before it loads CUDA (ollama: attach to the "
            "server before a model load: each runner child is watched from its start)", pid=pid))
    return out


def _covered(f: Finding, findings: list[Finding]) -> bool:
    """F says what an earlier finding about the same process already says."""
    if f.rule == "init-call-failed":
        return any(g.pid == f.pid and g.rule not in ("killed-by-signal",) for g in findings)
    return False


ABORT_FIX = ("ggml aborted on GGML_ASSERT(info.device_count <= GGML_CUDA_MAX_DEVICES): the device count above is "
             "the cause (no CUDA init error is written for it)")


def extra(tl: Timeline, findings: list[Finding]) -> list[Finding]:
    """This module's findings that add to FINDINGS (rules.RULES' own), in the order they show."""
    out = []
    counts = rule_device_count(tl)
    for f in counts:
        for g in findings:  # an abort() that the count explains: the fix says so, not "the errors above"
            if g.rule == "killed-by-signal" and g.pid == f.pid and "the CUDA init errors above" in g.fix:
                g.fix = ABORT_FIX
    out += counts
    out += [f for f in rule_init_call_failed(tl) if not _covered(f, findings + out)]
    hung = rule_hang_since_attach(tl)
    out += hung
    out += [f for f in rule_init_before_watch(tl) if not any(h.pid == f.pid for h in hung + findings)]
    if not findings and not out:  # a crash at start says it never loaded CUDA itself (killed-by-signal)
        out += rule_no_cuda(tl)
    return out


def driver_load_words(tl: Timeline, load) -> tuple[str, bool]:
    """Who could not load libcuda.so.1 and whether a cudart was in that process (only then is
    the consequence cudart's error 35)."""
    has_runtime = (role_of(load.caller) == "runtime"
                   or any(s.pid == load.pid and any(f["role"] == "runtime" for f in s.files) for s in tl.libraries)
                   or any(c.pid == load.pid and c.spec and c.spec.layer == "runtime" for c in tl.calls))
    return ("cudart" if role_of(load.caller) == "runtime" or (has_runtime and not load.caller) else _base(load.caller)), \
        has_runtime

