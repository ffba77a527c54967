"""The in-process recorder's side in Python: read the rings shim/audit.c writes, and turn their
records into the timeline's own events (Call, Lookup), so that rules, report and diff never
know how an event was seen.

A ring is one file per process image, GDB_CUDASHIM_RING_DIR/PID.N.ring (an exec keeps the pid
and makes a new one; a fork without exec shares its parent's, and every record carries its
pid). Records are appended with an atomic cursor and marked complete last, so a ring can be
read while the process runs (up to the first record still being written) and after it died
(a record it never finished is skipped).

Pure: never imports gdb.
"""
from __future__ import annotations

import glob
import os
import struct

from . import codes
from .calls import ARG_REGISTERS, SPECS, decode_struct, is_cuda_library, is_cuda_symbol
from .timeline import Call, Lookup

RING_MAGIC = b"CSRING01"
RING_DATA = 4096
REC_COMMIT = 0x43534852
_HEADER = struct.Struct("<8sIIQQQQQIIQ")  # magic version pid cursor capacity dropped t0 serial nspecs cap unwrapped
_CALLS_AT, _MAX_SPECS, _EXE_AT = 72, 64, 72 + 64 * 8
_REC = struct.Struct("<IIHHIIIQQ")  # commit len type spec pid tid aux t_ns serial
REC_SPECS, REC_OBJ, REC_OBJCLOSE, REC_SEARCH, REC_CALL, REC_RETURN, REC_DLSYM, REC_DLSYM_RET, REC_BIND = range(1, 10)
VIA_LIBC, VIA_HOOK = 1, 2
SPEC_DLVSYM = 0xFFF1
LA_SYMB_DLSYM = 8
RTLD_NEXT = (1 << 64) - 1
AUDIT_LIBRARY = "libcudashim-audit.so"
RING_DIR_ENV = "GDB_CUDASHIM_RING_DIR"


class RingError(Exception):
    pass


class Record:
    """One record: its header fields and its payload bytes."""

    __slots__ = ("type", "spec", "pid", "tid", "aux", "t_ns", "serial", "payload")

    def __init__(self, type_, spec, pid, tid, aux, t_ns, serial, payload):
        self.type, self.spec, self.pid, self.tid, self.aux = type_, spec, pid, tid, aux
        self.t_ns, self.serial, self.payload = t_ns, serial, payload


class _Payload:
    """Reads a record's payload: 8-byte words, then u16-length-prefixed byte strings."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def u64(self) -> int:
        value = int.from_bytes(self.data[self.at:self.at + 8], "little")
        self.at += 8
        return value

    def bytes(self) -> bytes:
        n = int.from_bytes(self.data[self.at:self.at + 2], "little")
        out = self.data[self.at + 2:self.at + 2 + n]
        self.at += 2 + n
        return out

    def text(self) -> str:
        return self.bytes().decode("utf-8", "replace")


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class Ring:
    """One ring file, read incrementally."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0  # the next record, from RING_DATA
        with open(path, "rb") as f:
            head = f.read(_EXE_AT + 1024)
        if len(head) < _EXE_AT + 1024 or head[:8] != RING_MAGIC:
            raise RingError(f"{path}: not a gdb-cudashim ring")
        (_m, self.version, self.pid, _c, self.capacity, _d, self.t0_ns, _s, self.nspecs, self.calls_recorded,
         _u) = _HEADER.unpack_from(head)
        self.exe = _text(head[_EXE_AT:_EXE_AT + 512]) or None
        self.cwd = _text(head[_EXE_AT + 512:_EXE_AT + 1024]) or None

    def header(self) -> dict:
        """The live counters: cursor, dropped, unwrapped, calls per spec index."""
        with open(self.path, "rb") as f:
            head = f.read(_EXE_AT)
        fields = _HEADER.unpack_from(head)
        calls = struct.unpack_from(f"<{_MAX_SPECS}Q", head, _CALLS_AT)
        return {"cursor": fields[3], "dropped": fields[5], "unwrapped": fields[10], "calls": calls}

    def read(self, final: bool = False) -> list[Record]:
        """The records written since the last read. FINAL: the process is gone, so a record it
        never finished is skipped instead of waited for."""
        cursor = min(self.header()["cursor"], self.capacity)
        if cursor <= self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(RING_DATA + self.offset)
            data = f.read(cursor - self.offset)
        out, at = [], 0
        while at + _REC.size <= len(data):
            commit, length, type_, spec, pid, tid, aux, t_ns, serial = _REC.unpack_from(data, at)
            if commit != REC_COMMIT or length < _REC.size or length % 8 or at + length > len(data):
                if not final:
                    break  # still being written: next time
                at += 8  # never finished (the writer died): find the next complete record
                continue
            out.append(Record(type_, spec, pid, tid, aux, t_ns, serial, bytes(data[at + _REC.size:at + length])))
            at += length
        self.offset += at if not final else len(data)
        return out


def ring_paths(directory: str, pid: int | None = None) -> list[str]:
    """The rings in DIRECTORY (of PID only), oldest process image first."""
    pattern = f"{pid}.*.ring" if pid is not None else "*.ring"
    paths = glob.glob(os.path.join(glob.escape(directory), pattern))

    def order(path):
        name = os.path.basename(path).split(".")
        return (int(name[0]) if name[0].isdigit() else 0, int(name[1]) if name[1].isdigit() else 0)

    return sorted(paths, key=order)


def ring_pid(path: str) -> int | None:
    """The pid a ring file is named after."""
    head = os.path.basename(path).split(".", 1)[0]
    return int(head) if head.isdigit() else None


# ----------------------------------------------------------------- addresses --
_EXTENTS: dict[tuple[str, int, int], tuple[int, int] | None] = {}


def load_extent(path: str) -> tuple[int, int] | None:
    """(lowest, highest) virtual address of PATH's PT_LOAD segments, before its load bias."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_ino, st.st_mtime_ns)
    if key not in _EXTENTS:
        _EXTENTS[key] = _read_extent(path)
    return _EXTENTS[key]


def _read_extent(path: str) -> tuple[int, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.pread(fd, 64, 0)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
            return None
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        table = os.pread(fd, phentsize * phnum, phoff)
    finally:
        os.close(fd)
    low, high = None, None
    for i in range(phnum):
        if (i + 1) * phentsize > len(table):
            break
        p_type, _flags, _off, vaddr, _pa, _fs, memsz = struct.unpack_from("<IIQQQQQ", table, i * phentsize)
        if p_type == 1:
            low = vaddr if low is None else min(low, vaddr)
            high = vaddr + memsz if high is None else max(high, vaddr + memsz)
    return (low, high) if low is not None else None


class Objects:
    """What ld.so opened in one process image (la_objopen), by link_map, with where each lies."""

    def __init__(self, exe: str | None, cwd: str | None = None):
        self.exe, self.cwd = exe, cwd
        self.by_id: dict[int, str] = {}
        self.ranges: list[tuple[int, int, str, int]] = []  # (low, high, path, its load base)

    def opened(self, ident: int, base: int, name: str) -> None:
        path = name or self.exe or "?"
        self.by_id[ident] = path
        real = path if path.startswith("/") or not self.cwd else os.path.join(self.cwd, path)
        extent = load_extent(real) if real.startswith("/") else None
        if extent is not None:
            self.ranges.append((base + extent[0], base + extent[1], path, base))

    def closed(self, ident: int) -> None:
        path = self.by_id.pop(ident, None)
        if path is not None:
            self.ranges = [r for r in self.ranges if r[2] != path]

    def name(self, ident: int) -> str | None:
        return self.by_id.get(ident)

    def at(self, address: int) -> str | None:
        found = self.locate(address)
        return found[0] if found else None

    def locate(self, address: int) -> tuple[str, int] | None:
        """(the file ADDRESS lies in, its offset from the file's load base: a symbol's st_value)."""
        for low, high, path, base in reversed(self.ranges):  # the latest mapping of a reused range
            if low <= address < high:
                return path, address - base
        return None


# -------------------------------------------------------------------- events --
def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class Reader:
    """One process image's ring turned into timeline events, as they become readable."""

    def __init__(self, ring: Ring):
        self.ring = ring
        self.objects = Objects(ring.exe, ring.cwd)
        self.searches: list[dict] = []  # la_objsearch: what ld.so tried, for whom
        self.specs: list[str] = []
        self.calls: dict[int, Call] = {}  # serial -> the call whose return is due
        self.outs: dict[int, list] = {}  # serial -> its out-parameters (name, kind), in the return's order
        self.hooks: dict[int, Lookup] = {}  # serial -> a hook's lookup whose answer is due
        self.pending: dict[tuple[int, int], Lookup] = {}  # (pid, tid) -> libc dlsym answered by a bind, or not
        self.calls_seen: dict[str, int] = {}

    def read(self, final: bool = False) -> list[tuple[int, object]]:
        """(t_ns, event) for what became readable. Call and Lookup objects are completed in
        place when their return arrives later."""
        out: list[tuple[int, object]] = []
        for rec in self.ring.read(final):
            try:
                self._one(rec, out)
            except (IndexError, ValueError, struct.error):
                continue  # a damaged record: the others stand
        if final:
            for lookup in self.pending.values():
                lookup.found = None  # its answer never came: core/lookups.py may still answer from the tables
            self.pending.clear()
        return out

    def _one(self, rec: Record, out: list) -> None:
        key = (rec.pid, rec.tid)
        if rec.type != REC_BIND:  # libc's dlsym that found something is followed at once by its bind
            self._settle(key)
        p = _Payload(rec.payload)
        if rec.type == REC_SPECS:
            self.specs = [s.decode() for s in rec.payload.rstrip(b"\0").split(b"\0")]
        elif rec.type == REC_OBJ:
            ident, base, _lmid = p.u64(), p.u64(), p.u64()
            self.objects.opened(ident, base, p.text())
        elif rec.type == REC_OBJCLOSE:
            self.objects.closed(p.u64())
        elif rec.type == REC_SEARCH:
            who = p.u64()
            self.searches.append({"pid": rec.pid, "for": self.objects.name(who), "flag": rec.aux, "path": p.text()})
        elif rec.type == REC_CALL:
            call = self._call(rec, p)
            if call is not None:
                out.append((rec.t_ns, call))
        elif rec.type == REC_RETURN:
            call = self.calls.pop(rec.serial, None)
            if call is not None:
                self._returned(call, p, self.outs.pop(rec.serial, []))
        elif rec.type == REC_DLSYM:
            lookup = self._lookup(rec, p)
            if lookup is not None:
                out.append((rec.t_ns, lookup))
        elif rec.type == REC_DLSYM_RET:
            lookup = self.hooks.pop(rec.serial, None)
            if lookup is not None:
                address = p.u64()
                lookup.found, lookup.address = address != 0, address
                lookup.provider = self.objects.at(address) if address else None
        elif rec.type == REC_BIND:
            self._bind(rec, p, key)

    def _settle(self, key) -> None:
        """The lookup KEY's thread made through libc's dlsym got no bind: NULL."""
        lookup = self.pending.pop(key, None)
        if lookup is not None:
            lookup.found, lookup.address = False, 0

    def _bind(self, rec: Record, p: _Payload, key) -> None:
        _ref, defining, value, _out = p.u64(), p.u64(), p.u64(), p.u64()
        name = p.text()
        lookup = self.pending.get(key)
        if rec.aux & LA_SYMB_DLSYM and lookup is not None and lookup.symbol == name:
            del self.pending[key]
            lookup.found, lookup.address = True, value
            lookup.provider = self.objects.name(defining) or self.objects.at(value)

    def _spec_name(self, index: int) -> str | None:
        return self.specs[index] if index < len(self.specs) else None

    def _call(self, rec: Record, p: _Payload) -> Call | None:
        name = self._spec_name(rec.spec)
        spec = SPECS.get(name)
        if spec is None:
            return None
        fn, caller = p.u64(), p.u64()
        regs = [p.u64() for _ in ARG_REGISTERS]
        args, outs = {}, []
        for i, (arg, kind) in enumerate(spec.args):
            if kind == "str":
                raw = p.bytes()
                args[arg] = raw.decode("utf-8", "replace") if regs[i] else None
            elif kind == "uuid":
                raw = p.bytes()
                args[arg] = codes.uuid_str(raw) if len(raw) == 16 else None
            elif kind == "int":
                args[arg] = _signed32(regs[i])
            elif kind.startswith("out_"):
                outs.append((arg, kind))
            else:
                args[arg] = regs[i]
        call = Call(seq=0, pid=rec.pid, tid=rec.tid, function=name, library=self.objects.at(fn),
                    caller=self.objects.at(caller), args=args)
        self.calls[rec.serial] = call
        self.outs[rec.serial] = outs  # what the return record carries, in order
        self.calls_seen[name] = self.calls_seen.get(name, 0) + 1
        return call

    def _returned(self, call: Call, p: _Payload, outs) -> None:
        spec = call.spec
        rax = p.u64()
        call.returned = True
        if spec.result == "str":
            raw = p.bytes()
            call.result = raw.decode("utf-8", "replace") if rax else None
        else:
            call.result = rax & 0xFFFFFFFF
        for name, kind in outs:
            raw = p.bytes()
            if not raw:
                continue  # not read: the call failed (out-parameters are undefined then)
            if kind in ("out_i32", "out_u32"):
                call.args[name] = int.from_bytes(raw[:4], "little", signed=True)
            elif kind in ("out_u64", "out_ptr"):
                call.args[name] = int.from_bytes(raw[:8], "little")
            elif kind == "out_str":
                call.args[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind.startswith("out_struct:"):
                call.args[name] = decode_struct(kind, raw)
        pfn = call.args.get("pfn")
        if pfn and call.function.startswith("cuGetProcAddress"):
            found = self.objects.locate(pfn)  # where the entry point handed back lies
            call.lands_in, call.lands_offset = found if found else ("unmapped memory", None)

    def _lookup(self, rec: Record, p: _Payload) -> Lookup | None:
        target, handle, caller = p.u64(), p.u64(), p.u64()
        symbol, version = p.text(), p.text() or None
        asked = ("RTLD_DEFAULT" if handle == 0 else "RTLD_NEXT" if handle == RTLD_NEXT
                 else self.objects.name(handle))
        if not (is_cuda_symbol(symbol) or is_cuda_library(asked)):
            return None  # what the breakpoints never recorded either: Python's PyInit_*, plugins...
        hook = None if rec.spec == VIA_LIBC else self.objects.at(target)
        lookup = Lookup(seq=0, pid=rec.pid, tid=rec.tid, how="dlvsym" if rec.aux else "dlsym", symbol=symbol,
                        handle_library=asked, version=version, found=None, found_by="recorded",
                        caller=self.objects.at(caller), hook=hook)
        if hook is not None:
            self.hooks[rec.serial] = lookup
        else:
            self.pending[(rec.pid, rec.tid)] = lookup
        return lookup

    def calls_made(self) -> dict[str, tuple[int, int]]:
        """Per entry point: (calls made, calls recorded), for the ones past the ring's cap."""
        counts = self.ring.header()["calls"]
        out = {}
        for index, name in enumerate(self.specs[:_MAX_SPECS]):
            made = counts[index]
            if made > self.ring.calls_recorded:
                out[name] = (made, self.ring.calls_recorded)
        return out
