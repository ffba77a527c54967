"""cuda-whatif: run --what-if from inside gdb. The program is run to its end and diagnosed, then
each finding's fix is simulated with cuda-patch and the program run again, in this same gdb;
the chain of walls is core/walls.py's, the one the CLI prints.

Each run is an ordinary cuda-run (children followed, the --timeout, a launched program ended):
catch-init-error is armed afresh for it and disarmed after, so one run's events never mix with
the next's; the patches this command made are deleted after each run. The user's own cuda-patch
patches stay, and apply to every run (they are part of what is being tested); a simulation that
needs a function the user already patched cannot be made, and its wall says so.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
import time

import gdb

from ...core import walls as walls_mod
from .. import session
from ..command import Command, check_json, check_seconds, register
from ..threads import live_inferiors


@register
class CudaWhatif(Command):
    name = "cuda-whatif"
    summary = "Diagnose the program, then prove each finding: simulate its fix (cuda-patch), run again, show the next wall."

    @classmethod
    def build(cls, p):
        p.epilog = ("Runs the program loaded with 'file' (and its 'set args', 'set environment') from the start, "
                    "several times.\nThe same as 'gdb-cudashim run --what-if' outside gdb.")
        p.add_argument("--max-walls", type=int, default=5, metavar="N", help="at most N walls (default 5), and N other findings tested beside them")
        p.add_argument("--timeout", type=float, metavar="S", help="each run: stop after S seconds and report the hang")
        p.add_argument("--json", metavar="FILE", help="write the first run's report, with its walls, to FILE")

    def run(self, args, from_tty):
        if args.max_walls < 1:
            raise gdb.GdbError("cuda-whatif: --max-walls must be 1 or more")
        check_seconds(self.name, "--timeout", args.timeout)
        check_json(self.name, args.json)  # before the runs, as cuda-run: never the user's own file
        if live_inferiors():
            raise gdb.GdbError("cuda-whatif: a process is running; it runs the program from the start, several times: "
                               "'kill' it first (or use cuda-run for this run)")
        if not gdb.current_progspace().filename:
            raise gdb.GdbError("cuda-whatif: no program: load one with 'file PROGRAM' first")
        if session.State.tracer is not None:
            raise gdb.GdbError("cuda-whatif: catch-init-error is armed; each run arms its own: "
                               "'catch-init-error --disarm' first")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="gdb-cudashim-whatif-") as tmp:
            runs = itertools.count(1)
            report = _one_run(os.path.join(tmp, f"run-{next(runs)}.json"), [], args.timeout)
            if not isinstance(report, dict):
                raise gdb.GdbError(f"cuda-whatif: the first run could not be made: {report}")
            if report.get("partial"):
                session.print_report(report, "auto", False)
                gdb.write("cuda-whatif: the first run was not followed to its end; nothing to prove\n", gdb.STDERR)
                return

            def rerun(patches):
                return _one_run(os.path.join(tmp, f"run-{next(runs)}.json"), patches, args.timeout)

            def announce(label, words):
                gdb.write(f"cuda-whatif: {label}: {words}\n")

            report["walls"], report["tested"] = walls_mod.prove(report, rerun, args.max_walls, announce)
            walls_mod.rank(report, report["walls"], report["tested"])
        report["walls_s"] = round(time.monotonic() - started, 1)
        session.print_report(report, "auto", False)
        for line in walls_mod.render(report["walls"], report["walls_s"], report["tested"]):
            gdb.write(line + "\n")
        if args.json:
            try:
                session.write_json(report, args.json)
            except OSError as exc:
                raise gdb.GdbError(f"cuda-whatif: cannot write {args.json}: {exc.strerror}")


def _one_run(path: str, patches: list[list[str]], timeout: float | None):
    """One run to its end with PATCHES applied: its report, or why the patches could not be made."""
    import shlex

    made: list[int] = []
    for held in session.State.patches.values():
        held.reset_counts()  # the user's --count and its notes count each run afresh
    try:
        for patch in patches:
            before = set(session.State.patches)
            try:
                gdb.execute("cuda-patch " + " ".join(shlex.quote(a) for a in patch), to_string=True)
            except gdb.error as exc:
                return str(exc)
            made += sorted(set(session.State.patches) - before)
        gdb.execute("catch-init-error", to_string=True)
        drive = f"cuda-run --no-report --json {shlex.quote(path)}" + (f" --timeout {timeout!r}" if timeout else "")
        gdb.execute(drive, to_string=True)
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        return f"the run wrote no report ({exc})"
    except gdb.error as exc:  # the walls proven so far stand; this one says why it has no verdict
        return f"the run could not be made: {exc}"
    finally:
        if session.State.tracer is not None:
            gdb.execute("catch-init-error --disarm", to_string=True)
        if made:
            gdb.execute("cuda-patch delete " + " ".join(map(str, made)), to_string=True)
