"""cuda-audit: the file audit from inside gdb, by default against what the inferior has loaded."""
from __future__ import annotations

import json
import os

import gdb

from ...core import audit as core_audit
from ...core import cudafiles
from ...core.procfs import ProcError, mapped_files, read_environ
from ..command import Command, register
from ..output import write_lines


@register
class CudaAudit(Command):
    name = "cuda-audit"
    summary = "Check, from the files, that the shims give cudart and libggml-cuda what they need."

    @classmethod
    def build(cls, p):
        p.epilog = ("Without --shim/--consumer: the shims and consumers the current process has loaded\n"
                    "(or the pinned real stack as consumers when nothing is loaded), resolved with its environment.")
        p.add_argument("--shim", action="append", default=[], metavar="PATH", help="a shim library (repeatable)")
        p.add_argument("--consumer", action="append", default=[], metavar="PATH",
                       help="what uses it: libggml-cuda*, libcudart.so.12")
        p.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args, from_tty):
        inferior = gdb.selected_inferior()
        env = dict(os.environ)
        shims, consumers = list(args.shim), list(args.consumer)
        if inferior.pid:
            try:
                env = read_environ(inferior.pid)
                loaded = mapped_files(inferior.pid)
            except (ProcError, OSError) as exc:
                raise gdb.GdbError(f"cuda-audit: {exc}")
            for path in loaded:
                found = cudafiles.identify(path)
                if found is None or found[2] is None:
                    continue
                role, kind, _ = found
                nvidia = kind.startswith("NVIDIA")  # NVIDIA's driver, NVML or runtime: a consumer at most
                if not args.shim and role in ("driver", "nvml", "runtime") and not nvidia:
                    shims.append(path)  # a runtime stand-in too: its exports against libggml-cuda's imports
                if not args.consumer and (role == "ggml-cuda" or (role == "runtime" and nvidia)):
                    consumers.append(path)
        if not consumers:
            from ...stack import installed

            stack = installed()
            consumers = [str(p) for p in stack.consumers()] if stack else []
        if not shims:
            raise gdb.GdbError("cuda-audit: no shim loaded in this process: give --shim PATH")
        if not consumers:
            raise gdb.GdbError("cuda-audit: no consumer: give --consumer PATH (libggml-cuda, libcudart.so.12)")
        result = core_audit.audit(shims, consumers, env)
        errors = result.errors()
        if args.json:
            gdb.write(json.dumps(result.to_dict(), indent=1) + "\n")
        elif not errors or core_audit.usable(result):
            write_lines(core_audit.render(result))
        for line in errors:  # one line each, not a gdb error: a script sourcing this goes on
            gdb.write(f"cuda-audit: {line}\n", gdb.STDERR)
