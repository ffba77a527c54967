"""The one armed catch-init-error of this gdb, and what turns its timeline into a report."""
from __future__ import annotations

import os

import gdb

from ..core import report as core_report
from ..core import rules
from ..core.calls import is_cuda_symbol, role_of
from ..core.timeline import Frame
from . import memory, tracer as tracer_mod
from .output import color_enabled, write_lines


class State:
    tracer: tracer_mod.Tracer | None = None
    json_path: str | None = None
    auto_report = True
    driving = False  # cuda-run prints the report itself


def active() -> tracer_mod.Tracer | None:
    return State.tracer


def explain_load(load):
    """Evidence for a failed libggml-cuda dlopen, from the files alone (audit core)."""
    try:
        from ..core import audit
        return audit.explain_failed_load(load.path, os.environ)
    except Exception as exc:  # the audit is a bonus; the loader's text is the evidence
        return [f"(could not audit {load.path}: {exc})"]


WHY = {"timeout": "still running at the timeout", "SIGINT": "stopped by SIGINT (Ctrl-C)",
       "SIGTERM": "stopped by SIGTERM", "SIGHUP": "stopped by SIGHUP"}


def collect_hang(reason: str = "timeout") -> dict:
    """Every thread's backtrace in every live inferior, and the shim frame each waits in."""
    threads = []
    for inferior in gdb.inferiors():
        if not inferior.pid:
            continue
        for thread in inferior.threads():
            try:
                thread.switch()
            except gdb.error:
                continue
            frames = [Frame(function=f, library=lib, pc=pc, where=where) for f, lib, pc, where in memory.backtrace(48)]
            in_shim = [f for f in frames if role_of(f.library) in ("driver", "nvml")]
            waiting = None
            if in_shim:
                entry = next((f for f in in_shim if is_cuda_symbol(f.function)), None)
                innermost = in_shim[0]
                waiting = entry.describe() if entry else innermost.describe()
                if entry is not None and entry is not innermost:
                    waiting += f", blocked in {innermost.function}" + (f" at {innermost.where}" if innermost.where else "")
            threads.append({"pid": inferior.pid, "tid": thread.ptid[1], "name": thread.name,
                            "waiting_in": waiting, "frames": [f.__dict__ for f in frames]})
    shim = [t for t in threads if t["waiting_in"]]
    if shim:
        summary = f"{WHY.get(reason, reason)}; {len(shim)} thread(s) wait inside the CUDA driver/shim: " + \
                  "; ".join(f"pid {t['pid']} thread {t['tid']} in {t['waiting_in']}" for t in shim)
    else:
        summary = f"{WHY.get(reason, reason)}; no thread is inside a CUDA driver or shim frame"
    return {"summary": summary, "reason": reason, "threads": threads}


def build_report(meta=None) -> dict:
    t = State.tracer
    findings = rules.analyze(t.timeline, explain_load)
    for text in t.internal_errors:
        t.note(f"internal: {text}")
    return core_report.build(t.timeline, findings, t.hang, meta)


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
        write_json(report, State.json_path)
