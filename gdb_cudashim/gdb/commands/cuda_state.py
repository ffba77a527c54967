"""cuda-state: who answers each CUDA role in the process, the shim's globals, and the environment."""
from __future__ import annotations

import json
import os

import gdb

from ...core import state as core_state
from ...core.elf import read_symtab_objects
from ...core.procfs import ProcError, mapped_files, read_environ
from ...core.timeline import relevant_env
from .. import memory, session
from ..command import Command, register
from ..output import color_enabled, write_lines


def _environ(pid: int) -> dict:
    try:
        return read_environ(pid)
    except ProcError as exc:
        return {"(error)": str(exc)}


ARRAY_SHOWN = 15  # elements of an array shown; the rest is counted, never dropped silently


def _is_char(t: gdb.Type) -> bool:
    """char / signed char (text); unsigned char stays bytes."""
    t = t.strip_typedefs()
    return t.code in (gdb.TYPE_CODE_INT, gdb.TYPE_CODE_CHAR) and t.sizeof == 1 and "unsigned" not in (t.name or "unsigned")


def _value_to_py(value: gdb.Value, depth=0):
    t = value.type.strip_typedefs()
    if t.code == gdb.TYPE_CODE_STRUCT and depth < 3:
        return {f.name: _value_to_py(value[f.name], depth + 1) for f in t.fields() if f.name}
    if t.code == gdb.TYPE_CODE_ARRAY:
        if _is_char(t.target()):  # text, even when it is not valid UTF-8
            raw = bytes(gdb.selected_inferior().read_memory(value.address, t.sizeof)) if value.address else b""
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        low, high = t.range()
        shown = [_value_to_py(value[i], depth + 1) for i in range(low, min(high, low + ARRAY_SHOWN - 1) + 1)]
        if high - low + 1 > len(shown):
            shown.append(core_state.More(high - low + 1 - len(shown)))
        return shown
    if t.code == gdb.TYPE_CODE_PTR:
        if int(value) and _is_char(t.target()):
            text = memory.read_cstring(gdb.selected_inferior(), int(value), limit=4096)
            if text is not None:
                return text
        return hex(int(value))
    if t.code in (gdb.TYPE_CODE_INT, gdb.TYPE_CODE_ENUM, gdb.TYPE_CODE_BOOL, gdb.TYPE_CODE_CHAR):
        if t.code == gdb.TYPE_CODE_ENUM:
            return str(value)
        return int(value)
    return str(value)


def _globals_with_dwarf(path: str, names) -> dict | None:
    objfile = next((o for o in gdb.objfiles() if o.filename and os.path.realpath(o.filename) == os.path.realpath(path)),
                   None)
    if objfile is None:
        return None
    out = {}
    for name in names:
        try:
            sym = objfile.lookup_global_symbol(name) or objfile.lookup_static_symbol(name)
        except gdb.error:
            sym = None
        if sym is None or not sym.is_variable:
            continue
        try:
            out[name] = {"value": _value_to_py(sym.value()), "type": str(sym.type), "source": "DWARF"}
        except gdb.error as exc:
            out[name] = {"value": None, "error": str(exc), "source": "DWARF"}
    return out


def _globals_from_elf(path: str, base: int, names, inferior) -> dict:
    out = {}
    objects = read_symtab_objects(path)
    for name in names:
        if name not in objects:
            continue
        addr, size = objects[name]
        size = size or 8
        try:
            raw = bytes(inferior.read_memory(base + addr, min(size, 256)))
        except gdb.MemoryError as exc:
            out[name] = {"value": None, "error": str(exc), "source": "ELF symbol table", "size": size}
            continue
        value = int.from_bytes(raw, "little", signed=size in (1, 2, 4, 8) and raw[-1] & 0x80 and size < 8) \
            if size in (1, 2, 4, 8) else raw.hex()
        out[name] = {"value": value, "size": size, "source": "ELF symbol table (no DWARF: raw integer/bytes)"}
        if size > len(raw):
            out[name]["more_bytes"] = size - len(raw)
    return out


def collect(inferior, wanted: list[str]) -> dict:
    pid = inferior.pid
    roles = []
    shims = []
    for path, base in mapped_files(pid).items():
        found = core_state.identify(path)
        if found is None:
            continue
        role, kind, info = found
        roles.append({"role": role, "path": path, "soname": info.soname if info else None, "kind": kind,
                      "debug_info": bool(info and info.has_debug_info), "base": hex(base) if base is not None else None})
        if kind in ("bundled cudashim", "unknown shim") and info is not None and base is not None:
            shims.append((path, base, info))
    state = []
    for path, base, info in shims:
        names = wanted or sorted(n for n in read_symtab_objects(path) if n.startswith("g_"))
        values = None
        if info.has_debug_info:
            values = _globals_with_dwarf(path, names)
        if not values:
            values = _globals_from_elf(path, base, names, inferior)
        missing = [n for n in names if n not in values]
        state.append({"library": path, "globals": values, "missing": missing,
                      "how": "DWARF" if info.has_debug_info else ("ELF symbol table" if values else "no symbols")})
    versions = {}
    tracer = session.active()
    if tracer is not None:
        for c in tracer.timeline.calls:
            if c.pid == pid and c.function in ("cuDriverGetVersion", "cudaRuntimeGetVersion", "cudaDriverGetVersion") \
                    and c.returned and not c.failed:
                versions[f"{c.function} ({os.path.basename(c.library or '?')})"] = next(iter(c.args.values()), None)
    for r in roles:
        if r["role"] == "runtime":
            versions[f"cudart file ({os.path.basename(r['path'])})"] = core_state.cudart_version(r["path"])
    settings = {}
    for name in ("follow-fork-mode", "detach-on-fork", "schedule-multiple", "follow-exec-mode"):
        try:
            settings[name] = gdb.parameter(name)
        except (gdb.error, RuntimeError):
            pass
    return {"pid": pid, "inferior": inferior.num, "roles": roles, "warnings": core_state.warnings(roles),
            "shim_state": state, "versions": versions, "environment": relevant_env(_environ(pid)),
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
