"""Small, fast readers of inferior state for stop handlers (x86-64)."""
from __future__ import annotations

import os

import gdb

from ..core.procfs import file_mappings

MASK64 = (1 << 64) - 1
_RECORDER = "/libcudashim-audit.so"  # core.recorder.AUDIT_LIBRARY: its frames are hidden from backtraces


def reg(frame: gdb.Frame, name: str) -> int:
    return int(frame.read_register(name)) & MASK64


def regs(*names: str) -> list[int]:
    """Registers of the selected thread's newest frame, without building a gdb.Frame:
    in a stop handler parse_and_eval('$reg') costs a fraction of newest_frame() (measured:
    +0.01 s vs +0.06 s over 420 stops)."""
    return [int(gdb.parse_and_eval(f"${name}")) & MASK64 for name in names]


def as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def as_int64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value & (1 << 63) else value


def read_bytes(inferior: gdb.Inferior, address: int, length: int) -> bytes | None:
    if not address or length <= 0:
        return b"" if length == 0 else None
    try:
        return bytes(inferior.read_memory(address, length))
    except (gdb.MemoryError, gdb.error, OverflowError, ValueError):
        return None


def read_u64(inferior: gdb.Inferior, address: int) -> int | None:
    raw = read_bytes(inferior, address, 8)
    return int.from_bytes(raw, "little") if raw and len(raw) == 8 else None


def read_i32(inferior: gdb.Inferior, address: int) -> int | None:
    raw = read_bytes(inferior, address, 4)
    return int.from_bytes(raw, "little", signed=True) if raw and len(raw) == 4 else None


def read_cstring(inferior: gdb.Inferior, address: int, limit: int = 4096) -> str | None:
    """A NUL-terminated string; reads in page-safe chunks so a string near the end
    of a mapping is still read."""
    if not address:
        return None
    out = bytearray()
    addr = address
    while len(out) < limit:
        chunk = 256 - (addr % 256)  # never cross a 256-byte boundary in one read
        try:
            data = bytes(inferior.read_memory(addr, chunk))
        except (gdb.MemoryError, gdb.error, OverflowError, ValueError):
            break
        nul = data.find(b"\0")
        if nul >= 0:
            out += data[:nul]
            return out.decode("utf-8", "replace")
        out += data
        addr += chunk
    return out.decode("utf-8", "replace") if out else None


def solib(address: int) -> str | None:
    """The file ADDRESS lies in: a shared library, else the main program."""
    try:
        name = gdb.solib_name(address)
    except (gdb.error, OverflowError, ValueError):
        return None
    if name:
        return name
    try:
        exe = gdb.current_progspace().filename
    except gdb.error:
        exe = None
    mapped = _mapped_file(address)  # a library gdb could not read (no section headers): the kernel knows
    if mapped is not None and mapped != _real(exe):
        return mapped
    return exe


_MAPS: dict[int, list[tuple[int, int, str]]] = {}  # pid -> its file mappings, read when an address is not in them
_MISSES: dict[int, set[int]] = {}  # pid -> addresses in no file mapping (until the next library loads)
_REAL: dict[str, str] = {}


def _real(path: str | None) -> str | None:
    if path is None:
        return None
    if path not in _REAL:
        _REAL[path] = os.path.realpath(path)
    return _REAL[path]


def forget_maps(pid: int | None = None) -> None:
    """A library loaded or went, a process exec'd or exited: the cached mappings are stale."""
    if pid is None:
        _MAPS.clear()
        _MISSES.clear()
    else:
        _MAPS.pop(pid, None)
        _MISSES.pop(pid, None)


def _mapped_file(address: int) -> str | None:
    """The file mapped at ADDRESS in the selected process, from /proc/PID/maps (cached, re-read
    once when the address is not in the cached copy: a library loaded since)."""
    pid = gdb.selected_inferior().pid
    if not pid or address in _MISSES.get(pid, ()):
        return None
    for fresh in (False, True):
        if fresh or pid not in _MAPS:
            try:
                _MAPS[pid] = [(lo, hi, path) for lo, hi, _offset, path in file_mappings(pid)]
            except OSError:
                return None
        for lo, hi, path in _MAPS[pid]:
            if lo <= address < hi:
                return path
    misses = _MISSES.setdefault(pid, set())
    if len(misses) < 4096:
        misses.add(address)
    return None


class ReturnAddresses:
    """Where a traced call returns to, read from the stack in one memory read.

    A breakpoint on a function by name sits at its entry or just after its prologue; at
    a given location the return address is always the same distance above $rsp. That
    distance is learnt once per location by unwinding (frame.older(), costly) and then
    reused; a location where the unwound answer cannot be checked keeps unwinding."""

    _UNKNOWN = object()

    def __init__(self):
        self._offset: dict[tuple[int, int], int | None] = {}

    def caller_pc(self, inferior: gdb.Inferior, pc: int, rsp: int) -> int | None:
        key = (inferior.num, pc)
        offset = self._offset.get(key, self._UNKNOWN)
        if offset is self._UNKNOWN:
            offset = self._offset[key] = self._learn(inferior, rsp)
        if offset is None:
            return _unwound_caller_pc()
        return read_u64(inferior, rsp + offset)

    @staticmethod
    def _learn(inferior: gdb.Inferior, rsp: int) -> int | None:
        try:
            older = gdb.newest_frame().older()
            if older is None:
                return None
            return_pc = older.pc()
            # the caller's $rsp once the call has returned is one slot above the return address
            offset = (int(older.read_register("rsp")) & MASK64) - 8 - rsp
        except gdb.error:
            return None
        if 0 <= offset < 0x10000 and read_u64(inferior, rsp + offset) == return_pc:
            return offset
        return None


def _unwound_caller_pc() -> int | None:
    try:
        older = gdb.newest_frame().older()
        return older.pc() if older is not None else None
    except gdb.error:
        return None


def ptid() -> tuple[int, int]:
    thread = gdb.selected_thread()
    if thread is None:
        return 0, 0
    pid, lwp, _ = thread.ptid
    return pid, lwp or pid


def backtrace(limit: int = 32) -> list[tuple[str, str | None, int, str | None]]:
    """(function, library, pc, file:line) per frame, newest first."""
    out = []
    try:
        frame = gdb.newest_frame()
    except gdb.error:
        return out
    while frame is not None and len(out) < limit:
        try:
            pc = frame.pc()
            name = frame.name() or "??"
            where = None
            sal = frame.find_sal()
            if sal is not None and sal.symtab is not None and sal.line:
                where = f"{sal.symtab.filename}:{sal.line}"
            library = solib(pc)
            if not (library and library.endswith(_RECORDER)):  # the recorder's wrapper: not the program's
                out.append((name, library, pc, where))
            frame = frame.older()
        except gdb.error:
            break
    return out
