"""Where a loaded file's functions are: their addresses from its ELF symbol tables.

Why: a breakpoint set by function name makes gdb look the name up in every objfile,
debug info included, each time a library loads. With libc's separate debug info
installed that cost 0.1 s per run for catch-init-error's ~35 names, more than all
420 of cudart's dlsym stops. The tracer instead reads each newly loaded file's own
.dynsym (and the main program's .symtab) here, and places its breakpoints at
load bias + st_value: the function's first instruction, where the arguments are
exactly where the ABI puts them.

A name is looked up in .dynsym through the file's GNU hash table, as ld.so does;
in a table without one (and in .symtab) with bytes.find in the string table, then
the symbol entries that point at it. No table is walked in Python: a 200 MB
library costs well under a millisecond. Only defined STT_FUNC symbols of global, weak or unique binding count;
an STT_GNU_IFUNC resolver is not the function, and is skipped.

Pure: never imports gdb.
"""
from __future__ import annotations

import os
import struct

from .dynsym import damage_reason as _why
from .dynsym import gnu_hash
from .files import map_regular
from .record import record

SHT_SYMTAB, SHT_DYNSYM, SHT_GNU_HASH = 2, 11, 0x6FFFFFF6
PT_LOAD = 1
STT_FUNC = 2
FUNCTION_BINDS = {1, 2, 10}  # GLOBAL WEAK GNU_UNIQUE
# Go's exit (gdb/handlers.ExitBreakpoint) is a local symbol of the program's own symbol table
LOCAL_FUNCTIONS = frozenset({"runtime.exit.abi0"})
SYM_SIZE = 24
PAGE = 0xFFF


class SymaddrError(Exception):
    """The file cannot be read for its function addresses; the message is one line."""


@record
class FileFunctions:
    path: str
    offsets: dict  # name -> tuple of st_values (duplicates from symbol versions removed)
    load_vaddr: int  # page-aligned p_vaddr of the first PT_LOAD
    load_offset: int  # page-aligned p_offset of the first PT_LOAD


def read_functions(path: str, names, symtab: bool = False) -> FileFunctions:
    """The st_value of every NAMES function PATH defines in .dynsym (and in .symtab when
    SYMTAB: a statically linked program's functions are there only)."""
    try:
        with map_regular(path) as data:
            try:
                return _read(path, data, names, symtab)
            except (struct.error, IndexError, ValueError, OverflowError) as exc:
                load = _first_load(data)
                try:  # damaged section headers: ld.so does not read them
                    if load is None:
                        raise ValueError("no loadable segment")
                    return _via_dynamic(path, data, names, load)
                except (SymaddrError, struct.error, IndexError, ValueError, OverflowError):
                    raise SymaddrError(f"{path}: damaged ELF file ({_why(exc)})") from None
    except OSError as exc:
        raise SymaddrError(f"{path}: {exc.strerror or exc}") from None


def _read(path, data, names, symtab) -> FileFunctions:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SymaddrError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    load = _first_load(data)
    if load is None:
        raise SymaddrError(f"{path}: no loadable segment")
    if not shoff or not shnum:
        return _via_dynamic(path, data, names, load)  # sstrip'ed: no section headers at all
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    wanted = (SHT_DYNSYM, SHT_SYMTAB) if symtab else (SHT_DYNSYM,)
    found: dict[str, set[int]] = {}
    hashes = {s[6]: s for s in sections if s[1] == SHT_GNU_HASH}  # sh_link: the symbol table it indexes
    for index, table in enumerate(sections):
        if table[1] in wanted and table[6] < len(sections):
            if table[1] == SHT_DYNSYM and index in hashes:
                _find_by_gnu_hash(data, table, sections[table[6]], hashes[index], names, found)
            else:
                _find_in_table(data, table, sections[table[6]], names, found)
    return FileFunctions(path=path, offsets={n: tuple(sorted(v)) for n, v in found.items()},
                         load_vaddr=load[0], load_offset=load[1])


def _first_load(data) -> tuple[int, int] | None:
    """(page-aligned p_vaddr, p_offset) of the first PT_LOAD, None if there is none."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr = struct.unpack_from("<IIQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            return p_vaddr & ~PAGE, p_offset & ~PAGE
    return None


def _via_dynamic(path, data, names, load) -> FileFunctions:
    """The functions found the way ld.so finds them, through PT_DYNAMIC: for a file whose section
    headers are gone (sstrip) or damaged, which still loads."""
    from .dynsym import DynsymError, _from_dynamic

    try:
        offsets = _from_dynamic(path, data).function_values(names)
    except (DynsymError, struct.error, IndexError, ValueError, OverflowError, KeyError) as exc:
        raise SymaddrError(f"{path}: no readable symbol table ({exc})") from None
    return FileFunctions(path=path, offsets={n: tuple(sorted(v)) for n, v in offsets.items()},
                         load_vaddr=load[0], load_offset=load[1])


def _take(data, pos, found, name) -> None:
    _st_name, info, _other, shndx, value, _size = struct.unpack_from("<IBBHQQ", data, pos)
    if shndx != 0 and value and info & 0xF == STT_FUNC and (info >> 4 in FUNCTION_BINDS or name in LOCAL_FUNCTIONS):
        found.setdefault(name, set()).add(value)


def _find_by_gnu_hash(data, table, strtab, hashtab, names, found) -> None:
    """glibc's DT_GNU_HASH lookup: bucket of the name's hash, then its chain of symbols
    (all versions of a name share a hash, so the whole chain is read)."""
    off = hashtab[4]
    nbuckets, symoffset, bloom_size, _shift = struct.unpack_from("<IIII", data, off)
    if not nbuckets:
        return
    buckets = off + 16 + bloom_size * 8
    chains = buckets + nbuckets * 4
    sym_off, str_off = table[4], strtab[4]
    for name in names:
        raw = name.encode()
        h = gnu_hash(raw)
        index, = struct.unpack_from("<I", data, buckets + (h % nbuckets) * 4)
        if index < symoffset:
            continue
        while True:
            chain, = struct.unpack_from("<I", data, chains + (index - symoffset) * 4)
            if chain | 1 == h | 1:
                pos = sym_off + index * SYM_SIZE
                st_name, = struct.unpack_from("<I", data, pos)
                start = str_off + st_name
                if data[start:start + len(raw) + 1] == raw + b"\0":
                    _take(data, pos, found, name)
            if chain & 1:
                break
            index += 1


def _find_in_table(data, table, strtab, names, found) -> None:
    sym_off, sym_size = table[4], table[5]
    sym_end = sym_off + sym_size - sym_size % SYM_SIZE
    str_off, str_end = strtab[4], strtab[4] + strtab[5]
    for name in names:
        needle = name.encode() + b"\0"
        at = data.find(needle, str_off, str_end)
        while at >= 0:  # every place the name's bytes end a string (ld merges string tails)
            key = struct.pack("<I", at - str_off)
            pos = data.find(key, sym_off, sym_end)
            while pos >= 0:
                if (pos - sym_off) % SYM_SIZE == 0:
                    _take(data, pos, found, name)
                pos = data.find(key, pos + 1, sym_end)
            at = data.find(needle, at + 1, str_end)


def load_biases(maps: str, ino: int, dev: int, functions: FileFunctions) -> list[int]:
    """Every load bias of the file (inode INO on device DEV) in a process whose /proc/PID/maps
    text is MAPS: where each copy of its first PT_LOAD was mapped, minus its vaddr. A file is
    mapped more than once when it is loaded in more than one link-map namespace: the C library
    of an rtld-audit library's namespace (the in-process recorder's) beside the program's own."""
    major, minor = os.major(dev), os.minor(dev)
    out = []
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or parts[4] == "0":
            continue
        try:
            if int(parts[4]) != ino or int(parts[2], 16) != functions.load_offset:
                continue
            dmaj, dmin = (int(x, 16) for x in parts[3].split(":"))
        except ValueError:
            continue
        if (dmaj, dmin) != (major, minor):
            continue
        start = int(parts[0].split("-", 1)[0], 16)
        if start - functions.load_vaddr not in out:
            out.append(start - functions.load_vaddr)
    return out


def load_bias(maps: str, ino: int, dev: int, functions: FileFunctions) -> int | None:
    """The first load bias of the file (load_biases)."""
    biases = load_biases(maps, ino, dev, functions)
    return biases[0] if biases else None


STT_OBJECT = 1


def read_objects(path: str, prefix: str = "g_") -> dict[str, tuple[int, int]]:
    """Defined data objects whose names start with PREFIX (a shim's g_* globals, static ones
    included): name -> (st_value, st_size), from .symtab and .dynsym. Found the way
    _find_in_table finds names, so a 200 MB library costs no walk in Python."""
    try:
        with map_regular(path) as data:
            if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
                raise SymaddrError(f"{path}: not a 64-bit little-endian ELF file")
            shoff, = struct.unpack_from("<Q", data, 0x28)
            shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
            sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
            found: dict[str, tuple[int, int]] = {}
            for table in sections:
                if table[1] in (SHT_SYMTAB, SHT_DYNSYM) and table[6] < len(sections):
                    _objects_in(data, table, sections[table[6]], prefix.encode(), found)
            return found
    except OSError as exc:
        raise SymaddrError(f"{path}: {exc.strerror or exc}") from None
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise SymaddrError(f"{path}: damaged ELF file ({_why(exc)})") from None


def _objects_in(data, table, strtab, prefix: bytes, found) -> None:
    sym_off, sym_size = table[4], table[5]
    sym_end = sym_off + sym_size - sym_size % SYM_SIZE
    str_off, str_end = strtab[4], strtab[4] + strtab[5]
    at = data.find(b"\0" + prefix, str_off, str_end)
    while at >= 0:
        start = at + 1
        end = data.find(b"\0", start, str_end)
        if end < 0:
            break
        name = bytes(data[start:end]).decode("utf-8", "replace")
        key = struct.pack("<I", start - str_off)
        pos = data.find(key, sym_off, sym_end)
        while pos >= 0:
            if (pos - sym_off) % SYM_SIZE == 0:
                _st_name, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", data, pos)
                if shndx != 0 and info & 0xF == STT_OBJECT and name not in found:
                    found[name] = (value, size)
            pos = data.find(key, pos + 1, sym_end)
        at = data.find(b"\0" + prefix, end, str_end)
