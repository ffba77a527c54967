"""cuda-report: the report of what catch-init-error has captured so far."""
from __future__ import annotations

import gdb

from .. import session
from ..command import Command, check_json, register


@register
class CudaReport(Command):
    name = "cuda-report"
    summary = "Print what catch-init-error captured so far: errors, calls, lookups, loads and the diagnosis."

    @classmethod
    def build(cls, p):
        p.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE instead of printing it")
        p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
        p.add_argument("--verbose", action="store_true", help="every call and lookup, full backtraces")

    def run(self, args, from_tty):
        if session.State.tracer is None:
            raise gdb.GdbError("cuda-report: nothing captured: run 'catch-init-error' first, then 'run'")
        check_json(self.name, args.json)
        report = session.build_report()
        if args.json is not None:
            try:
                session.write_json(report, args.json)
            except OSError as exc:
                raise gdb.GdbError(f"cuda-report: cannot write {args.json}: {exc.strerror}")
            gdb.write(f"cuda-report: wrote {args.json}\n")
            return
        session.print_report(report, args.color, args.verbose)
