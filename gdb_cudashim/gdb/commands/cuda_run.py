"""cuda-run: run the program to the end under catch-init-error, children included, then report."""
from __future__ import annotations

import time

import gdb

from ...core.report import EXIT_USAGE
from .. import session
from ..command import Command, register


def _live():
    return [i for i in gdb.inferiors() if i.pid]


@register
class CudaRun(Command):
    name = "cuda-run"
    summary = "Run (or continue) every process to its end under catch-init-error, then print the report."

    @classmethod
    def build(cls, p):
        p.epilog = "Arms catch-init-error with its defaults first if it is not armed. Used by commands/*.gdb."
        p.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE")
        p.add_argument("--timeout", type=float, metavar="S", help="interrupt after S seconds and report the hang")
        p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
        p.add_argument("--verbose", action="store_true", help="every call and lookup, full backtraces")
        p.add_argument("--no-report", action="store_true", help="do not print the report (with --json)")
        p.add_argument("--detach", action="store_true", help="attached use: at the end (or --timeout) remove everything "
                       "armed, delete cuda-patch patches, and detach, leaving the processes running")
        p.add_argument("--quit", action="store_true", help="quit gdb with the report's exit status: 0 no failure, "
                       "1 failure caught, 2 could not run, 3 timed out")

    def run(self, args, from_tty):
        if args.json is not None and not args.json.strip():
            raise gdb.GdbError("cuda-run: --json needs a file name")
        if session.State.tracer is None:
            gdb.execute("catch-init-error", to_string=True)
        t = session.State.tracer
        timeout = args.timeout if args.timeout is not None else t.timeout
        session.State.driving = True
        status = None
        started = time.monotonic()
        timer = t.interrupt_later(timeout) if timeout else None
        if args.detach and not _live():
            session.State.driving = False
            if timer is not None:
                timer.cancel()
            raise gdb.GdbError("cuda-run: --detach needs an attached process (attach PID first)")
        try:
            try:
                if _live():
                    gdb.execute("continue", to_string=True)
                else:
                    gdb.execute("run", to_string=True)
            except gdb.error as exc:
                if not t.timeline.processes:
                    status = EXIT_USAGE
                    t.note(f"could not run the program: {exc}")
            while status is None and not t.timed_out:
                live = _live()
                if not live:
                    break
                try:
                    gdb.execute(f"inferior {live[0].num}", to_string=True)
                except gdb.error:
                    # switched, but its frame could not be shown ("Couldn't get registers: No such
                    # process"): it is exiting, and the continue below collects that
                    if gdb.selected_inferior().num != live[0].num:
                        t.note(f"could not switch to inferior {live[0].num}")
                        break
                try:
                    gdb.execute("continue", to_string=True)
                except gdb.error as exc:
                    t.note(f"continue failed: {exc}")
                    break
            if args.detach and _live():
                _detach_all(t)
            elif t.timed_out and _live():
                t.hang = session.collect_hang()
                t.hang["after_seconds"] = round(time.monotonic() - started, 1)
                gdb.execute("kill inferiors " + " ".join(str(i.num) for i in _live()), to_string=True)
        finally:
            if timer is not None:
                timer.cancel()
            session.State.driving = False
        report = session.build_report(meta={"command": _command_line(), "elapsed_s": round(time.monotonic() - started, 3)})
        if status is not None:
            report["status"] = status
        json_path = args.json or session.State.json_path
        if json_path:
            try:
                session.write_json(report, json_path)
            except OSError as exc:
                gdb.write(f"cuda-run: cannot write {json_path}: {exc.strerror}\n", gdb.STDERR)
                report["status"] = EXIT_USAGE
        if not args.no_report:
            session.print_report(report, args.color, args.verbose)
        if args.quit:
            gdb.execute(f"quit {report['status']}")


def _detach_all(tracer):
    """Leave every process running and exactly as it was: no breakpoint, no patch, settings restored."""
    from . import cuda_patch

    if cuda_patch.PATCHES:
        gdb.execute("cuda-patch delete all", to_string=True)
    for message in tracer.disarm():
        tracer.note(message)
    session.State.tracer = None
    live = _live()
    pids = ", ".join(str(i.pid) for i in live)
    gdb.execute("detach inferiors " + " ".join(str(i.num) for i in live), to_string=True)
    tracer.note(f"detached from {pids}; left running")
    session.State.tracer = tracer  # build_report still reads its timeline


def _command_line():
    try:
        prog = gdb.current_progspace().filename or ""
        extra = gdb.parameter("args") or ""
        return [prog] + ([extra] if extra else [])
    except gdb.error:
        return []
