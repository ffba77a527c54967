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

import os
import struct

from .files import map_regular

SHT_DYNSYM = 11
SHT_GNU_VERSYM = 0x6FFFFFFF
SHT_DYNAMIC = 6
SHT_GNU_HASH = 0x6FFFFFF6
SYM_SIZE = 24
DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 14, 15, 29
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
STT_TLS = 6
ALLOWED_TYPES = {0, 1, 2, 5, 6, 10}  # NOTYPE OBJECT FUNC COMMON TLS GNU_IFUNC
ALLOWED_BINDS = {1, 2, 10}  # GLOBAL WEAK GNU_UNIQUE


class DynsymError(Exception):
    """The file's dynamic symbols cannot be read; the message is one line."""


class DynamicSymbols:
    """One object's dynamic symbols. A name is looked up through the object's GNU hash
    table, as ld.so does (microseconds); `definitions`, every definition at once, is
    parsed only when asked for (or when there is no GNU hash table)."""

    def __init__(self, path: str, soname: str | None, needed: list[str], dynsym: bytes, dynstr: bytes,
                 versym: bytes | None, gnu_hash: bytes | None, rpath: list[str] | None = None,
                 runpath: list[str] | None = None):
        self.path = path
        self.soname = soname
        self.needed = needed
        self.rpath, self.runpath = rpath or [], runpath or []  # as written ($ORIGIN unexpanded): core/loader
        self._dynsym, self._dynstr, self._versym, self._hash = dynsym, dynstr, versym, gnu_hash
        self._header = struct.unpack_from("<IIII", gnu_hash, 0) if gnu_hash else None
        self._all: dict[str, list[tuple[int | None, bool]]] | None = None

    @property
    def definitions(self) -> dict[str, list[tuple[int | None, bool]]]:
        """name -> [(version index or None, hidden)] for every definition dlsym may take."""
        if self._all is None:
            out: dict[str, list[tuple[int | None, bool]]] = {}
            for index in range(len(self._dynsym) // SYM_SIZE):
                entry = self._definition(index)
                if entry is not None:
                    out.setdefault(self._name_at(index), []).append(entry)
            self._all = out
        return self._all

    def exported_data(self) -> set[str]:
        """Data objects this file exports with default visibility: its own references to them go
        through the GOT, so an earlier-loaded file defining the same name takes them over."""
        out = set()
        for index in range(len(self._dynsym) // SYM_SIZE):
            st_name, st_info, st_other, st_shndx, _value, _size = struct.unpack_from("<IBBHQQ", self._dynsym,
                                                                                      index * SYM_SIZE)
            if st_name and st_shndx != SHN_UNDEF and st_info & 0xF == 1 and st_info >> 4 == 1 \
                    and st_other & 3 == 0:  # STT_OBJECT, GLOBAL (not weak: C++'s inline data), STV_DEFAULT
                name = self._name_at(index)
                if not name.startswith(("_ZT", "_ZGV")):  # typeinfo, vtables, guards: read-only and meant shared
                    out.add(name)
        return out

    def function_values(self, names) -> dict[str, set[int]]:
        """st_value of each of NAMES defined here as a function (a walk of the table: only for a
        file whose section headers cannot be read, see symaddr.read_functions)."""
        wanted, out = set(names), {}
        for index in range(len(self._dynsym) // SYM_SIZE):
            st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from("<IBBHQQ", self._dynsym,
                                                                                      index * SYM_SIZE)
            if st_shndx != SHN_UNDEF and st_value and st_info & 0xF == 2 and st_info >> 4 in (1, 2, 10):
                name = self._name_at(index)
                if name in wanted:
                    out.setdefault(name, set()).add(st_value)
        return out

    def _name_at(self, index: int) -> str:
        st_name, = struct.unpack_from("<I", self._dynsym, index * SYM_SIZE)
        end = self._dynstr.find(b"\0", st_name)
        return self._dynstr[st_name:end if end >= 0 else None].decode("utf-8", "replace")

    def _definition(self, index: int) -> tuple[int | None, bool] | None:
        """(version index or None, hidden) if symbol INDEX is a definition dlsym may take."""
        st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from("<IBBHQQ", self._dynsym,
                                                                                  index * SYM_SIZE)
        if not st_name or st_shndx == SHN_UNDEF:
            return None
        stype, bind = st_info & 0xF, st_info >> 4
        if stype not in ALLOWED_TYPES or bind not in ALLOWED_BINDS:
            return None
        if st_value == 0 and st_shndx != SHN_ABS and stype != STT_TLS:
            return None
        if self._versym is not None and 2 * index + 2 <= len(self._versym):
            raw, = struct.unpack_from("<H", self._versym, 2 * index)
            return raw & 0x7FFF, bool(raw & 0x8000)
        return None, False

    def _lookup(self, name: str, raw: bytes | None = None, h: int | None = None) -> list[tuple[int | None, bool]]:
        """NAME's definitions here; RAW and H (its bytes and GNU hash) when the caller has them."""
        if self._all is not None or self._hash is None:
            return self.definitions.get(name, [])
        if raw is None:
            raw = name.encode("utf-8", "surrogateescape")
        if h is None:
            h = gnu_hash(raw)
        nbuckets, symoffset, bloom_size, shift = self._header
        if not nbuckets or not bloom_size:
            return []
        # the Bloom filter rules out most names an object does not define in one read
        word, = struct.unpack_from("<Q", self._hash, 16 + ((h >> 6) % bloom_size) * 8)
        if not (word >> (h & 63)) & 1 or not (word >> ((h >> shift) & 63)) & 1:
            return []
        buckets = 16 + bloom_size * 8
        chains = buckets + nbuckets * 4
        index, = struct.unpack_from("<I", self._hash, buckets + (h % nbuckets) * 4)
        found = []
        if index < symoffset:
            return found
        want = raw + b"\0"
        while True:
            chain, = struct.unpack_from("<I", self._hash, chains + (index - symoffset) * 4)
            if chain | 1 == h | 1:
                st_name, = struct.unpack_from("<I", self._dynsym, index * SYM_SIZE)
                if self._dynstr[st_name:st_name + len(want)] == want:
                    entry = self._definition(index)
                    if entry is not None:
                        found.append(entry)
            if chain & 1:
                return found
            index += 1

    def dlsym_finds(self, name: str, raw: bytes | None = None, h: int | None = None) -> bool:
        """Whether dlsym() (no version) would take NAME from this object."""
        defs = self._lookup(name, raw, h)
        if not defs:
            return False
        versioned = 0
        for index, hidden in defs:
            if index is None or index < 2:
                return True
            if not hidden:
                versioned += 1
        return versioned == 1


def gnu_hash(raw: bytes) -> int:
    h = 5381
    for c in raw:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


def read(path: str) -> DynamicSymbols:
    """Read PATH's .dynsym, .dynstr, .gnu.version, GNU hash table and dynamic tags (64-bit little-endian ELF)."""
    try:
        with map_regular(path) as data:
            # only the headers and the dynamic sections are touched: cheap even for a 200 MB library
            return _parse(path, data)
    except OSError as exc:
        raise DynsymError(f"{path}: {exc.strerror or exc}") from None
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise DynsymError(f"{path}: damaged ELF file ({damage_reason(exc)})") from None


def _parse(path: str, data) -> DynamicSymbols:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise DynsymError(f"{path}: not a 64-bit little-endian ELF file")
    try:
        return _from_sections(path, data)
    except (DynsymError, struct.error, IndexError, ValueError, OverflowError) as exc:
        # no section headers (sstrip) or damaged ones: ld.so never reads them; neither do we then
        try:
            return _from_dynamic(path, data)
        except (DynsymError, struct.error, IndexError, ValueError, OverflowError, KeyError):
            if isinstance(exc, DynsymError):
                raise exc from None  # what the section headers said, not the fallback's complaint
            raise DynsymError(f"{path}: damaged ELF file ({damage_reason(exc)})") from None


DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_HASH = 5, 6, 10, 4
DT_GNU_HASH, DT_VERSYM = 0x6FFFFEF5, 0x6FFFFFF0


def _from_dynamic(path: str, data) -> DynamicSymbols:
    """The dynamic symbols found the way ld.so finds them: PT_DYNAMIC's DT_SYMTAB, DT_STRTAB,
    DT_GNU_HASH (or DT_HASH) and DT_VERSYM, through the PT_LOAD segments. No section header read."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((vaddr, offset, filesz))
        elif p_type == 2:
            dynamic = (offset, filesz)
    if dynamic is None:
        raise DynsymError(f"{path}: no dynamic section (PT_DYNAMIC)")

    def at(vaddr: int) -> int:
        for start, offset, size in loads:
            if start <= vaddr < start + size:
                return offset + vaddr - start
        raise DynsymError(f"{path}: address {vaddr:#x} is in no loaded segment")

    tags: dict[int, int] = {}
    raw_needed = []
    for tag, value in struct.iter_unpack("<qQ", data[dynamic[0]:dynamic[0] + dynamic[1] - dynamic[1] % 16]):
        if tag == 0:
            break
        if tag == DT_NEEDED:
            raw_needed.append(value)
        else:
            tags.setdefault(tag, value)
    strtab = at(tags[DT_STRTAB])
    strings = bytes(data[strtab:strtab + tags[DT_STRSZ]])
    symtab = at(tags[DT_SYMTAB])
    gnu = None
    if DT_GNU_HASH in tags:
        off = at(tags[DT_GNU_HASH])
        nbuckets, symoffset, bloom_size, _shift = struct.unpack_from("<IIII", data, off)
        buckets = off + 16 + bloom_size * 8
        last = max(struct.unpack_from(f"<{nbuckets}I", data, buckets)) if nbuckets else 0
        chains = buckets + nbuckets * 4
        count = symoffset
        if last >= symoffset:  # walk the last chain to its end: the symbol count
            while not struct.unpack_from("<I", data, chains + (last - symoffset) * 4)[0] & 1:
                last += 1
            count = last + 1
        gnu = bytes(data[off:chains + (count - symoffset) * 4])
    elif DT_HASH in tags:
        count = struct.unpack_from("<II", data, at(tags[DT_HASH]))[1]  # nchain
    else:
        raise DynsymError(f"{path}: no symbol hash table")
    versym = None
    if DT_VERSYM in tags:
        vs = at(tags[DT_VERSYM])
        versym = bytes(data[vs:vs + 2 * count])

    def text(offset: int) -> str:
        end = strings.find(b"\0", offset)
        return strings[offset:end if end >= 0 else None].decode("utf-8", "replace")

    return DynamicSymbols(path, text(tags[DT_SONAME]) if DT_SONAME in tags else None, [text(v) for v in raw_needed],
                          bytes(data[symtab:symtab + count * SYM_SIZE]), strings, versym, gnu,
                          text(tags[DT_RPATH]).split(":") if DT_RPATH in tags else [],
                          text(tags[DT_RUNPATH]).split(":") if DT_RUNPATH in tags else [])


def _from_sections(path: str, data) -> DynamicSymbols:
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    if not shoff or not shnum:
        raise DynsymError(f"{path}: no section headers")
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    index = next((i for i, s in enumerate(sections) if s[1] == SHT_DYNSYM), None)
    if index is None:
        raise DynsymError(f"{path}: no .dynsym")

    def body(section):
        if section[4] + section[5] > len(data):  # a damaged header: the caller reads PT_DYNAMIC instead
            raise ValueError(f"a section lies beyond the end of the file ({section[4]:#x})")
        return bytes(data[section[4]:section[4] + section[5]])

    dynsym = sections[index]
    strings = body(sections[dynsym[6]])
    versym = next((s for s in sections if s[1] == SHT_GNU_VERSYM), None)
    hash_section = next((s for s in sections if s[1] == SHT_GNU_HASH and s[6] == index), None)
    soname, needed, paths = None, [], {DT_RPATH: [], DT_RUNPATH: []}
    dynamic = next((s for s in sections if s[1] == SHT_DYNAMIC), None)
    if dynamic is not None:
        for tag, value in struct.iter_unpack("<qQ", data[dynamic[4]:dynamic[4] + dynamic[5] - dynamic[5] % 16]):
            if tag == 0:
                break
            if tag in (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH):
                end = strings.find(b"\0", value)
                text = strings[value:end if end >= 0 else None].decode("utf-8", "replace")
                if tag == DT_NEEDED:
                    needed.append(text)
                elif tag == DT_SONAME:
                    soname = text
                else:
                    paths[tag] = text.split(":")
    size = dynsym[5] - dynsym[5] % SYM_SIZE
    body((0, 0, 0, 0, dynsym[4], size))  # within the file
    if dynamic is not None:
        body(dynamic)
    return DynamicSymbols(path, soname, needed, bytes(data[dynsym[4]:dynsym[4] + size]), strings,
                          body(versym) if versym is not None else None,
                          body(hash_section) if hash_section is not None else None, paths[DT_RPATH], paths[DT_RUNPATH])


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
    raw = name.encode("utf-8", "surrogateescape")
    h = gnu_hash(raw)  # once, not once per object: this runs at each of cudart's ~420 lookups
    for obj in scope:
        if obj.dlsym_finds(name, raw, h):
            return obj.path
    return None


def damage_reason(exc: Exception) -> str:
    """A damaged file's fault in the file's terms, not Python's."""
    if isinstance(exc, OverflowError):
        return "a header points outside the file"
    if isinstance(exc, struct.error):
        return "a table runs past the end of the file"
    return str(exc)
