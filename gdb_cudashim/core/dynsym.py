"""What dlsym(handle, name) finds, answered from the dynamic symbol tables ld.so itself uses.

The tracer stops at every dlsym() entry inside the init window, but stopping at every
return too doubles the cost (cudart's fallback path makes ~420 lookups). For a lookup
in a library handle, glibc's answer is fixed by the handle's search list (the library,
then its DT_NEEDED dependencies, breadth first) and each object's .dynsym / .gnu.version,
read here with struct (pyelftools takes 0.5 s on libc; this takes milliseconds).

The rules mirror glibc's do_lookup_x/check_match for dlsym (no version asked,
DL_LOOKUP_RETURN_NEWEST): a defined symbol of an allowed type and global/weak/unique
binding; an unversioned definition wins; otherwise exactly one non-hidden versioned
definition. The tracer still watches the return of the lookups its rules depend on and
of the first few per library, and compares: any disagreement switches that library back
to watching every return.

Pure: never imports gdb.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

SHT_DYNSYM = 11
SHT_GNU_VERSYM = 0x6FFFFFFF
SHT_DYNAMIC = 6
DT_NEEDED, DT_SONAME = 1, 14
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
STT_TLS = 6
ALLOWED_TYPES = {0, 1, 2, 5, 6, 10}  # NOTYPE OBJECT FUNC COMMON TLS GNU_IFUNC
ALLOWED_BINDS = {1, 2, 10}  # GLOBAL WEAK GNU_UNIQUE


class DynsymError(Exception):
    """The file's dynamic symbols cannot be read; the message is one line."""


@dataclass
class DynamicSymbols:
    path: str
    soname: str | None = None
    needed: list[str] = field(default_factory=list)
    # name -> list of (version index or None, hidden) for every definition
    definitions: dict[str, list[tuple[int | None, bool]]] = field(default_factory=dict)

    def dlsym_finds(self, name: str) -> bool:
        """Whether dlsym() (no version) would take NAME from this object."""
        defs = self.definitions.get(name)
        if not defs:
            return False
        versioned = 0
        for index, hidden in defs:
            if index is None or index < 2:
                return True
            if not hidden:
                versioned += 1
        return versioned == 1


def read(path: str) -> DynamicSymbols:
    """Read PATH's .dynsym, .dynstr, .gnu.version and dynamic tags (64-bit little-endian ELF)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            # only the headers and the dynamic sections are touched: cheap even for a 200 MB library
            return _parse(path, data)
    except OSError as exc:
        raise DynsymError(f"{path}: {exc.strerror or exc}") from None
    except (struct.error, IndexError, ValueError) as exc:
        raise DynsymError(f"{path}: damaged ELF file ({exc})") from None


def _parse(path: str, data) -> DynamicSymbols:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise DynsymError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    if not shoff or not shnum:
        raise DynsymError(f"{path}: no section headers")
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out = DynamicSymbols(path=path)
    dynsym = next((s for s in sections if s[1] == SHT_DYNSYM), None)
    if dynsym is None:
        raise DynsymError(f"{path}: no .dynsym")
    strtab = sections[dynsym[6]]
    str_off, str_size = strtab[4], strtab[5]
    strings = data[str_off:str_off + str_size]

    def name_at(offset: int) -> str:
        end = strings.find(b"\0", offset)
        return strings[offset:end if end >= 0 else None].decode("utf-8", "replace")

    versym = next((s for s in sections if s[1] == SHT_GNU_VERSYM), None)
    versions = None
    if versym is not None:
        count = versym[5] // 2
        versions = struct.unpack_from(f"<{count}H", data, versym[4])
    sym_off, sym_size, sym_ent = dynsym[4], dynsym[5], dynsym[9] or 24
    for index, (st_name, st_info, _other, st_shndx, st_value, _size) in enumerate(
            struct.iter_unpack("<IBBHQQ", data[sym_off:sym_off + sym_size - sym_size % sym_ent])):
        if not st_name or st_shndx == SHN_UNDEF:
            continue
        stype, bind = st_info & 0xF, st_info >> 4
        if stype not in ALLOWED_TYPES or bind not in ALLOWED_BINDS:
            continue
        if st_value == 0 and st_shndx != SHN_ABS and stype != STT_TLS:
            continue
        if versions is not None and index < len(versions):
            raw = versions[index]
            entry = (raw & 0x7FFF, bool(raw & 0x8000))
        else:
            entry = (None, False)
        out.definitions.setdefault(name_at(st_name), []).append(entry)
    dynamic = next((s for s in sections if s[1] == SHT_DYNAMIC), None)
    if dynamic is not None:
        for tag, value in struct.iter_unpack("<qQ", data[dynamic[4]:dynamic[4] + dynamic[5] - dynamic[5] % 16]):
            if tag == 0:
                break
            if tag == DT_NEEDED:
                out.needed.append(name_at(value))
            elif tag == DT_SONAME:
                out.soname = name_at(value)
    return out


_CACHE: dict[tuple[str, int, int], DynamicSymbols] = {}


def read_cached(path: str) -> DynamicSymbols:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DynsymError(f"{path}: {exc.strerror or exc}") from None
    key = (path, st.st_ino, int(st.st_mtime_ns))
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = read(path)
    return found


def search_list(handle_path: str, loaded: list[str]) -> list[DynamicSymbols]:
    """A handle's search list, as ld.so builds it: the object, then its DT_NEEDED
    dependencies breadth first, each matched to a loaded object by file name, else by
    soname. Raises DynsymError when an object or a dependency cannot be placed."""
    by_name: dict[str, str] = {}
    for path in loaded:
        by_name.setdefault(os.path.basename(path), path)
    sonames: dict[str, str] | None = None
    order = [read_cached(handle_path)]
    queue = list(order)
    while queue:
        current = queue.pop(0)
        for needed in current.needed:
            path = by_name.get(os.path.basename(needed))
            if path is None:
                if sonames is None:
                    sonames = _sonames(loaded)
                path = sonames.get(needed)
            if path is None:
                raise DynsymError(f"{current.path}: its dependency {needed} is not among the loaded objects")
            if all(o.path != path for o in order):
                obj = read_cached(path)
                order.append(obj)
                queue.append(obj)
    return order


def _sonames(loaded: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in loaded:
        try:
            soname = read_cached(path).soname
        except DynsymError:
            continue
        if soname:
            out.setdefault(soname, path)
    return out


def lookup(scope: list[DynamicSymbols], name: str) -> str | None:
    """The path of the object in SCOPE that dlsym() takes NAME from, or None (dlsym returns NULL)."""
    for obj in scope:
        if obj.dlsym_finds(name):
            return obj.path
    return None
