"""A shim's g_* globals read from a live process: typed through DWARF when the shim has it,
else raw from its ELF symbol table. cuda-state and the run's tracer both read them here."""
from __future__ import annotations

import os

import gdb

from ..core.text import More
from ..core.elf import read_symtab_objects
from . import memory

TEXT_READ = 4096  # bytes of a char array or string read at most
ARRAY_SHOWN = 15  # elements of an array shown; the rest is counted, never dropped silently


def _is_char(t: gdb.Type) -> bool:
    """char / signed char (text); unsigned char stays bytes."""
    t = t.strip_typedefs()
    return t.code in (gdb.TYPE_CODE_INT, gdb.TYPE_CODE_CHAR) and t.sizeof == 1 and "unsigned" not in (t.name or "unsigned")


def _value_to_py(value: gdb.Value, depth=0):
    if str(value.type) == "pthread_mutex_t":  # glibc's union: who holds it, not its 40 bytes
        try:
            data = value["__data"]
            owner, lock = int(data["__owner"]), int(data["__lock"])
        except gdb.error:
            pass
        else:
            if not lock:
                return "unlocked"
            return f"locked by thread {owner}" if owner else "locked"
    t = value.type.strip_typedefs()
    if t.code == gdb.TYPE_CODE_STRUCT and depth < 3:
        return {f.name: _value_to_py(value[f.name], depth + 1) for f in t.fields() if f.name}
    if t.code == gdb.TYPE_CODE_ARRAY:
        if _is_char(t.target()):  # text, even when it is not valid UTF-8; a 1 GiB buffer is not read whole
            size = min(t.sizeof, TEXT_READ)
            raw = bytes(gdb.selected_inferior().read_memory(value.address, size)) if value.address else b""
            text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            if b"\0" not in raw and t.sizeof > size:
                text += f"... (cut at {size} of {t.sizeof} bytes)"
            return text
        low, high = t.range()
        shown = [_value_to_py(value[i], depth + 1) for i in range(low, min(high, low + ARRAY_SHOWN - 1) + 1)]
        if high - low + 1 > len(shown):
            shown.append(More(high - low + 1 - len(shown)))
        return shown
    if t.code == gdb.TYPE_CODE_PTR:
        if int(value) and _is_char(t.target()):
            text = memory.read_cstring(gdb.selected_inferior(), int(value), limit=TEXT_READ)
            if text is not None:
                return text + (f"... (cut at {TEXT_READ} bytes)" if len(text.encode("utf-8", "replace")) >= TEXT_READ
                               else "")
        return hex(int(value))
    if t.code in (gdb.TYPE_CODE_INT, gdb.TYPE_CODE_ENUM, gdb.TYPE_CODE_BOOL, gdb.TYPE_CODE_CHAR):
        if t.code == gdb.TYPE_CODE_ENUM:
            return str(value)
        return int(value)
    return str(value)


def globals_with_dwarf(path: str, names, objfiles=None) -> dict | None:
    objfile = next((o for o in (objfiles if objfiles is not None else gdb.objfiles()) if o.filename and os.path.realpath(o.filename) == os.path.realpath(path)),
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


def globals_from_elf(path: str, base: int, names, inferior) -> dict:
    out = {}
    objects = _objects(path, names)
    for name in names:
        if name not in objects:
            continue
        addr, size = objects[name]
        if not size:
            out[name] = {"value": None, "error": "size 0 in the symbol table", "source": "ELF symbol table", "size": 0}
            continue
        try:
            raw = bytes(inferior.read_memory(base + addr, min(size, 256)))
        except gdb.MemoryError as exc:
            out[name] = {"value": None, "error": str(exc), "source": "ELF symbol table", "size": size}
            continue
        if size == 8:  # a pointer or a 64-bit count: an address in hex, a small number in decimal
            value = int.from_bytes(raw, "little")
            value = hex(value) if value >= 1 << 32 else value
        elif size in (1, 2, 4):
            value = int.from_bytes(raw, "little", signed=bool(raw[-1] & 0x80))
        else:
            value = raw.hex()
        out[name] = {"value": value, "size": size, "source": "ELF symbol table (no DWARF: raw integer/bytes)"}
        if size > len(raw):
            out[name]["more_bytes"] = size - len(raw)
    return out




class Unreadable(Exception):
    """A shim's symbol tables cannot be read (damaged section headers...): one line."""


def _objects(path: str, names) -> dict[str, tuple[int, int]]:
    """The g_* data objects of PATH (core/symaddr: no pyelftools, ~1 ms); other NAMES asked for by
    cuda-state --var come from the full symbol tables. Unreadable when the tables are damaged."""
    from ..core.symaddr import SymaddrError, read_objects

    if all(n.startswith("g_") for n in names):
        try:
            return read_objects(path, "g_")
        except SymaddrError as exc:
            raise Unreadable(str(exc)) from None
    try:
        return read_symtab_objects(path)
    except Exception as exc:  # pyelftools raises assorted errors on a damaged file
        raise Unreadable(f"{path}: {type(exc).__name__}: {exc}") from None


def read_globals(path: str, base: int, has_debug_info: bool, inferior, names=None) -> dict:
    """{"library", "globals", "missing", "how"} for the shim at PATH mapped at BASE: NAMES, or
    every g_* data object it has; "how" says "unreadable: ..." when its symbol tables are damaged.
    NAMES it lacks are "missing", with the g_* data objects it has as "available"."""
    asked = bool(names)
    try:
        names = list(names) if names else sorted(_objects(path, ()))
        values = globals_with_dwarf(path, names, inferior.progspace.objfiles()) if has_debug_info else None
        if not values:
            values = globals_from_elf(path, base, names, inferior)
    except Unreadable as exc:
        return {"library": path, "globals": {}, "missing": list(names or ()), "how": f"unreadable: {exc}"}
    out = {"library": path, "globals": values, "missing": [n for n in names if n not in values],
           "how": "DWARF" if has_debug_info and values and any(v.get("source") == "DWARF" for v in values.values())
           else ("ELF symbol table" if values else "no symbols")}
    if out["missing"] and asked:  # cuda-state --var NAME: a name this shim lacks; what it has instead
        try:
            out["available"] = sorted(_objects(path, ()))
        except Unreadable:
            pass
    return out


def snapshot(tracer, pid: int, when: str) -> None:
    """Record PID's CUDA-role files and every shim's g_* globals on the timeline, once per
    process: run's view of cuda-state, taken where the state means something (the end of the
    init window, a failed load, a hang). Callable from a stop handler: /proc and memory reads only."""
    tl = tracer.timeline
    existing = tl.mapped(pid)
    if existing is not None:
        # once per process, except that the end of init says more than a failed load before it
        # (a program probing for libraries): that one is replaced
        if not (when == "after init" and existing.when == "at a failed load"
                or existing.when == "when the watch began" and not existing.files):  # an attach to a process with none yet
            return
        tl.events.remove(existing)
    inferior = next((i for i in gdb.inferiors() if i.pid == pid), None)
    if inferior is None:
        return
    here = gdb.selected_thread()
    if gdb.selected_inferior() != inferior:  # typed values are read from the selected inferior
        thread = next(iter(inferior.threads()), None)
        if thread is None:
            return
        thread.switch()
    try:
        _snapshot(tl, inferior, pid, when)
    finally:
        if here is not None and here.is_valid() and gdb.selected_thread() != here:
            here.switch()


def _snapshot(tl, inferior, pid: int, when: str) -> None:
    from ..core import cudafiles
    from ..core.procfs import ProcError, mapped_files
    from ..core.timeline import Libraries

    try:
        mapped = mapped_files(pid)
    except (OSError, ProcError):
        return
    files, shims = [], []
    for path, base in mapped.items():
        role = cudafiles.role(path)
        if role is None:
            continue
        files.append({"path": path, "role": role, "base": base})
        if base is not None and not cudafiles.made_by_nvidia(path, role):
            try:
                state = read_globals(path, base, True, inferior)
            except Exception as exc:  # a damaged symbol table: the rest of the snapshot stands
                state = {"library": path, "globals": {}, "missing": [], "how": f"unreadable ({exc})"}
            if state["globals"] or state["how"].startswith("unreadable"):
                shims.append(state)
    tl.add(Libraries(seq=tl.next_seq(), pid=pid, when=when, files=files, shims=shims))
