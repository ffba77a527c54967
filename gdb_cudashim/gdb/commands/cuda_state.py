"""cuda-state: who answers each CUDA role in the process, the shim's globals, and the environment."""
from __future__ import annotations

import json
import os

import gdb

from ...core import cudafiles, loader
from ...core import state as core_state
from ...core.procfs import ProcError, mapped_files, read_environ
from ...core.timeline import relevant_env
from .. import session
from ..shimstate import read_globals
from ..command import Command, register
from ..output import color_enabled, write_lines


def _environ(pid: int) -> dict:
    try:
        return read_environ(pid)
    except ProcError as exc:
        return {"(error)": str(exc)}


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def collect(inferior, wanted: list[str]) -> dict:
    pid = inferior.pid
    environ = _environ(pid)
    cwd = _cwd(pid)
    roles = []
    infos = {}
    bases = {}
    for path, base in mapped_files(pid).items():
        found = cudafiles.identify(path)
        if found is None:
            continue
        role, kind, info = found
        roles.append({"role": role, "path": path, "soname": info.soname if info else None, "kind": kind,
                      "debug_info": bool(info and info.has_debug_info), "base": hex(base) if base is not None else None})
        if info is not None:
            infos[path] = info
        bases[path] = base
    preloads = loader.preload_entries(environ, cwd)
    for r in roles:
        r["loaded_via"] = loader.found_by(r["path"], r["soname"], list(infos.values()), environ, cwd,
                                          preloads) or loader.BY_PATH
    state = []
    for r in roles:  # never NVIDIA's files or libggml-cuda: stripped, and a huge symbol table
        info = infos.get(r["path"])
        if cudafiles.is_shim(r) and info is not None and bases[r["path"]] is not None:
            state.append(read_globals(r["path"], bases[r["path"]], info.has_debug_info, inferior, wanted))
    versions = {}
    tracer = session.active()
    if tracer is not None:
        for c in tracer.timeline.calls:
            if c.pid == pid and c.function in ("cuDriverGetVersion", "cudaRuntimeGetVersion", "cudaDriverGetVersion") \
                    and c.returned and not c.failed:
                versions[f"{c.function} ({os.path.basename(c.library or '?')})"] = next(iter(c.args.values()), None)
    for r in roles:
        if r["role"] == "runtime":
            key, value = core_state.cudart_version_entry(r)
            versions[key] = value
    warnings = core_state.warnings(roles)
    more, notes = core_state.runtime_findings(roles, infos, environ, cwd)
    settings = {}
    for name in ("follow-fork-mode", "detach-on-fork", "schedule-multiple", "follow-exec-mode"):
        try:
            settings[name] = gdb.parameter(name)
        except (gdb.error, RuntimeError):
            pass
    return {"pid": pid, "inferior": inferior.num, "roles": roles, "warnings": warnings + more, "notes": notes,
            "runtime_imports": [core_state.import_entry(c) for c in core_state.import_checks(roles, infos)],
            "shim_state": state, "versions": versions, "environment": relevant_env(environ),
            "gdb_settings": settings}


@register
class CudaState(Command):
    name = "cuda-state"
    summary = "Show who answers each CUDA role, the shim's g_* state, and the environment that matters."

    @classmethod
    def build(cls, p):
        p.add_argument("--pid", type=int, metavar="N", help="only the inferior with this pid")
        p.add_argument("--var", action="append", default=[], metavar="NAME",
                       help="globals of the shim to show (default: all its g_* globals)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--color", choices=("auto", "always", "never"), default="auto")

    def run(self, args, from_tty):
        inferiors = [i for i in gdb.inferiors() if i.pid]
        if not inferiors:
            raise gdb.GdbError("cuda-state: no process: 'run' or 'attach PID' first")
        if args.pid is not None:
            inferiors = [i for i in inferiors if i.pid == args.pid]
            if not inferiors:
                raise gdb.GdbError(f"cuda-state: no live inferior with pid {args.pid} (see 'info inferiors')")
        if not inferiors:
            raise gdb.GdbError("cuda-state: no process: 'run' or 'attach PID' first")
        results = []
        for inferior in inferiors:
            try:
                results.append(collect(inferior, args.var))
            except FileNotFoundError:
                raise gdb.GdbError(f"cuda-state: process {inferior.pid} is gone")
        if args.json:
            gdb.write(json.dumps(results, indent=1, default=str) + "\n")
            return
        lines = []
        for r in results:
            lines += core_state.render(r, color=color_enabled(args.color))
        write_lines(lines)
