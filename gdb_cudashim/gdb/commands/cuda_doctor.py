"""cuda-doctor: is gdb-cudashim usable in this gdb, and if not, what fixes it."""
from __future__ import annotations

import os
import sys

import gdb

from ... import deps
from ..command import Command, register


@register
class CudaDoctor(Command):
    name = "cuda-doctor"
    summary = "Show gdb's Python, where gdb-cudashim looks for its dependencies, and what is missing."

    @classmethod
    def build(cls, p):
        p.add_argument("--path", action="store_true", help="also list the whole sys.path")

    def run(self, args, from_tty):
        lines = [f"gdb {gdb.VERSION}, Python {sys.version.split()[0]} ({sys.executable or 'embedded'})",
                 f"gdb-cudashim from {deps.package_root()}"]
        for d in deps.candidate_site_dirs():
            lines.append(f"site dir: {d} ({'on sys.path' if d in sys.path else 'not on sys.path'}"
                         f"{'' if os.path.isdir(d) else ', missing'})")
        problems = deps.import_problems()
        for mod, dist in deps.REQUIRED.items():
            lines.append(f"  {dist:15} {problems.get(dist, 'ok')}")
        missing = [d for d, p in problems.items() if p == "MISSING"]
        if missing:
            lines.append(f"fix: {deps.fix_hint(missing)}")
        if len(missing) < len(problems):
            lines.append("fix: a BROKEN package fails when imported: repair or remove that copy (the path above; "
                         "gdb's Python searches PYTHONPATH first), then restart gdb")
        if not problems:
            lines.append("all dependencies importable")
        if args.path:
            lines += [f"  sys.path: {p}" for p in sys.path]
        gdb.write("\n".join(lines) + "\n")
