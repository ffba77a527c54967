"""A shim's g_* globals read from a live process: typed through DWARF when the shim has it,
else raw from its ELF symbol table. cuda-state and the run's tracer both read them here."""
from __future__ import annotations

import os

import gdb

from ..core import state as core_state
from ..core.elf import read_symtab_objects
from . import memory

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


def globals_with_dwarf(path: str, names) -> dict | None:
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


def globals_from_elf(path: str, base: int, names, inferior) -> dict:
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




def read_globals(path: str, base: int, has_debug_info: bool, inferior, names=None) -> dict:
    """{"library", "globals", "missing", "how"} for the shim at PATH mapped at BASE: NAMES, or
    every g_* data object it has."""
    names = list(names) if names else sorted(n for n in read_symtab_objects(path) if n.startswith("g_"))
    values = globals_with_dwarf(path, names) if has_debug_info else None
    if not values:
        values = globals_from_elf(path, base, names, inferior)
    return {"library": path, "globals": values, "missing": [n for n in names if n not in values],
            "how": "DWARF" if has_debug_info and values and any(v.get("source") == "DWARF" for v in values.values())
            else ("ELF symbol table" if values else "no symbols")}
