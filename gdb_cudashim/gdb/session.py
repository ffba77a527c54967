"""The one armed catch-init-error of this gdb, and what turns its timeline into a report."""
from __future__ import annotations

import gdb

from ..core import report as core_report
from ..core import rules
from .output import color_enabled, write_lines
from .state import State
from .threads import thread_snapshot


def active():
    """The armed tracer (gdb.tracer.Tracer), or None."""
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
