"""catch-init-error: arm the capture of ggml/cudart CUDA init failures."""
from __future__ import annotations

import re

import gdb

from ...core.timeline import DEFAULT_ERROR_PATTERNS
from .. import session, tracer as tracer_mod
from ..command import Command, check_json, check_seconds, register


@register
class CatchInitError(Command):
    name = "catch-init-error"
    summary = "Capture why ggml/cudart CUDA init fails: the full error text, the call timeline and the cause."

    @classmethod
    def build(cls, p):
        p.epilog = ("Arms in the current and all future inferiors; then 'run' or 'continue'.\n"
                    "When the last process exits the report is printed (or use 'cuda-report').")
        p.add_argument("--pattern", action="append", default=[], metavar="REGEX",
                       help="also capture writes matching REGEX (repeatable)")
        follow = p.add_mutually_exclusive_group()
        follow.add_argument("--follow-children", dest="follow", action="store_true", default=True,
                            help="follow fork/vfork/exec children, parents keep running (default)")
        follow.add_argument("--no-follow-children", dest="follow", action="store_false",
                            help="leave gdb's fork settings alone")
        p.add_argument("--timeout", type=float, metavar="S",
                       help="with cuda-run: interrupt after S seconds and report every thread")
        p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
        p.add_argument("--every-return", action="store_true",
                       help="watch every dlsym() inside the window to its return (about 2x the stops) instead of "
                            "answering found/NULL from the handle's symbol tables, as ld.so does")
        p.add_argument("--by-name", action="store_true",
                       help="place breakpoints by function name, as 'break NAME' does, instead of at the addresses "
                            "each loaded file's symbol tables give (slower; for targets whose files or /proc cannot "
                            "be read from here, such as gdbserver on another machine)")
        p.add_argument("--disarm", action="store_true", help="remove everything armed and restore settings")
        p.add_argument("--status", action="store_true", help="say what is armed")

    def run(self, args, from_tty):
        if args.disarm:
            t = session.State.tracer
            if t is None:
                gdb.write("catch-init-error: nothing is armed\n")
                return
            messages = t.disarm()
            session.State.tracer = None
            gdb.write("catch-init-error: disarmed" + ("; " + ", ".join(messages) if messages else "") + "\n")
            return
        if args.status:
            t = session.State.tracer
            if t is None:
                gdb.write("catch-init-error: not armed\n")
            else:
                tl = t.timeline
                gdb.write(f"catch-init-error: armed; {len(tl.calls)} calls, {len(tl.lookups)} lookups, "
                          f"{len(tl.errors)} errors, {tl.stops} stops so far\n")
            return
        for pattern in args.pattern:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise gdb.GdbError(f"catch-init-error: bad --pattern {pattern!r}: {exc}")
        check_seconds(self.name, "--timeout", args.timeout)
        check_json(self.name, args.json)
        if session.State.tracer is not None:
            session.State.tracer.disarm()
        t = tracer_mod.Tracer(tuple(DEFAULT_ERROR_PATTERNS) + tuple(args.pattern), follow_children=args.follow,
                                by_name=args.by_name)
        t.timeout = args.timeout
        t.lookups.every_return = args.every_return
        session.State.tracer = t
        session.State.json_path = args.json
        t.on_all_exited = session.on_all_exited
        from ..quiet import quietly
        messages = quietly(t.arm)
        for m in messages:
            gdb.write(m + "\n")
        gdb.write("catch-init-error: armed: CUDA driver/runtime/NVML calls, CUDA library loads; error text and "
                  "lookups are captured inside the init window\n")
