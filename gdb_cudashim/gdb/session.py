"""The one armed catch-init-error of this gdb, and what turns its timeline into a report."""
from __future__ import annotations

import os

import gdb

from ..core import report as core_report
from ..core import rules
from ..core.timeline import Frame
from . import memory, tracer as tracer_mod
from .output import color_enabled, write_lines


class State:
    """The one root object of this gdb's gdb-cudashim (GEF's way): the armed tracer, the live
    cuda-patch patches, and how the report is delivered. Nothing else holds module state."""
    tracer: tracer_mod.Tracer | None = None
    patches: dict = {}  # cuda-patch id -> Patch
    json_path: str | None = None
    auto_report = True
    driving = False  # cuda-run prints the report itself


def active() -> tracer_mod.Tracer | None:
    return State.tracer


def explain_load(load):
    """Evidence for a failed libggml-cuda dlopen, from the files alone (audit core)."""
    try:
        from ..core import audit, loader

        # the traced process's own environment and working directory, never gdb's
        tl = State.tracer.timeline if State.tracer is not None else None
        if tl is None or tl.process_start(load.pid) is None:
            return []  # whose environment it was is unknown: no answer beats gdb's own
        env, cwd = loader.process_env(tl, load.pid)
        return audit.explain_failed_load(load.path, env, cwd)
    except Exception as exc:  # the audit is a bonus; the loader's text is the evidence
        return [f"(could not audit {load.path}: {exc})"]


WHY = {"timeout": "still running at the timeout", "SIGINT": "stopped by SIGINT (Ctrl-C)",
       "SIGTERM": "stopped by SIGTERM", "SIGHUP": "stopped by SIGHUP"}


def thread_snapshot(inferior, limit=48) -> list[dict]:
    """Each thread of INFERIOR: its backtrace and the CUDA driver/shim frame it waits in. The
    selected thread is restored afterwards."""
    from ..core.timeline import waiting_in

    here = gdb.selected_thread()
    threads = []
    shims = _shim_files(inferior.pid)
    try:
        for thread in inferior.threads():
            try:
                thread.switch()
            except gdb.error:
                continue
            frames = [Frame(function=f, library=lib, pc=pc, where=where) for f, lib, pc, where in memory.backtrace(limit)]
            threads.append({"pid": inferior.pid, "tid": thread.ptid[1], "name": thread.name,
                            "waiting_in": waiting_in(frames, shims), "blocked": _blocked(inferior.pid, thread.ptid[1]),
                            "frames": [f.__dict__ for f in frames]})
    finally:
        if here is not None and here.is_valid():
            here.switch()
    return threads


def _shim_files(pid: int) -> set[str]:
    """The names of PID's files in a driver or NVML role, those their names do not tell included: an
    interposer under its own soname (HAMi-core's libvgpu.so), whose lock waits are shim waits."""
    from ..core import cudafiles
    from ..core.procfs import ProcError, mapped_files

    try:
        paths = mapped_files(pid)
    except (OSError, ProcError):
        return set()
    return {os.path.basename(p) for p in paths if cudafiles.role(p) in ("driver", "nvml")}


def _blocked(pid: int, tid: int) -> str | None:
    """The system call TID sat in when it was stopped (a thread that waits: futex, poll...),
    None when it was running its own code (runnable: slowed down, or spinning)."""
    from ..core.procfs import syscall_name

    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            number = f.read().split()[0]
    except (OSError, IndexError):
        return None
    return None if number in ("-1", "running") else syscall_name(int(number))


def collect_hang(reason: str = "timeout") -> dict:
    """Every thread's backtrace in every live inferior, and the shim frame each waits in."""
    threads = []
    if State.tracer is not None:
        State.tracer.recording.drain()  # the calls in progress: their entries are recorded
    for inferior in gdb.inferiors():
        if inferior.pid:
            threads += thread_snapshot(inferior)
    if State.tracer is not None:
        for inferior in gdb.inferiors():
            if inferior.pid:
                State.tracer.snapshot(inferior.pid, "at the hang")
    shim = [t for t in threads if t["waiting_in"]]
    blocked = [t for t in shim if t["blocked"]]
    if shim and not blocked:
        # Slowed is not hung: every thread inside the driver/shim was running its own code, none
        # waited in the kernel (a debugger that stopped it often enough looks like this too)
        summary = (f"{WHY.get(reason, reason)}; {len(shim)} thread(s) inside the CUDA driver/shim were still running, "
                   "not blocked (slowed down or spinning, not waiting): " +
                   "; ".join(f"pid {t['pid']} thread {t['tid']} in {t['waiting_in']}" for t in shim))
    elif shim:
        summary = f"{WHY.get(reason, reason)}; {len(blocked)} thread(s) wait inside the CUDA driver/shim: " + \
                  "; ".join(f"pid {t['pid']} thread {t['tid']} in {t['waiting_in']} (blocked in {t['blocked']})"
                            for t in blocked)
    else:
        summary = f"{WHY.get(reason, reason)}; no thread is inside a CUDA driver or shim frame"
    hang = {"summary": summary, "reason": reason, "threads": threads, "blocked": bool(blocked) or not shim}
    try:
        from . import locks
        hang.update(locks.examine(threads))
    except Exception as exc:  # the lock analysis is a bonus: the backtraces above stand on their own
        hang["locks_error"] = f"{type(exc).__name__}: {exc}"
    return hang


def build_report(meta=None) -> dict:
    t = State.tracer
    t.recording.finish()
    t.timeline.observed.update(t.recording.how)
    t.timeline.order()
    t.timeline.hang = t.hang
    findings = rules.analyze(t.timeline, explain_load)
    for text in t.internal_errors:
        t.note(f"internal: {text}")
    report = core_report.build(t.timeline, findings, t.hang, meta)
    for patch in list(State.patches.values()):  # a cuda-patch that never applied, or whose --if failed
        note = patch.report_note()
        if note and note not in report["notes"]:
            report["notes"].append(note)
    return report


def write_json(report: dict, path: str) -> None:
    """Replaces a regular file atomically, writes through a symlink, in place into a FIFO or device."""
    from ..core.files import write_text

    write_text(path, core_report.to_json(report))


def print_report(report: dict, color_flag="auto", verbose=False):
    write_lines(core_report.render(report, color=color_enabled(color_flag), verbose=verbose))


def on_all_exited():
    """Interactive use: when the last inferior is gone, report once."""
    if State.driving or not State.auto_report or State.tracer is None:
        return
    report = build_report()
    print_report(report)
    if State.json_path:
        try:  # checked when armed, but the path may have changed since (a directory made there)
            write_json(report, State.json_path)
        except OSError as exc:
            gdb.write(f"catch-init-error: cannot write --json {State.json_path}: {exc.strerror or exc}\n", gdb.STDERR)
