"""What an ELF shared object offers and needs, read with pyelftools.

Pure: never imports gdb. Used by the audit, the stub generator and the rules
that explain a failed dlopen.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from functools import lru_cache

# pyelftools is imported on first use, not at load: it costs ~70 ms, and loading the
# gdb extension must stay cheap (gdb-cudashim run's cost target).


class ElfProblem(Exception):
    """A file that cannot be read as a 64-bit x86-64 shared object; the message is one line."""


@dataclass(frozen=True)
class Import:
    name: str
    version: str | None  # e.g. "libcudart.so.12"
    library: str | None  # the DT_NEEDED file the version belongs to, when versioned
    weak: bool = False


@dataclass
class ElfInfo:
    path: str
    soname: str | None = None
    needed: list[str] = field(default_factory=list)
    rpath: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)
    exports: dict[str, set[str | None]] = field(default_factory=dict)  # name -> versions
    version_definitions: list[str] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    has_symtab: bool = False
    has_debug_info: bool = False
    build_id: str | None = None
    debuglink: str | None = None
    symtab_objects: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (value, size)
    has_versym: bool = False  # a .gnu.version section (any versioned import gives a file one)
    # no readable section headers (sstrip, damage) but loadable: exports read through PT_DYNAMIC
    # (core/dynsym), without their version names; a name there counts for any version asked
    sections_missing: bool = False

    @property
    def stripped(self) -> bool:
        return not self.has_symtab

    def exports_symbol(self, name: str, version: str | None = None) -> bool:
        versions = self.exports.get(name)
        if versions is None:
            return False
        if version is None:
            return True
        # Measured with glibc 2.36: a definition under another version does not satisfy a
        # versioned reference; an unversioned (global) one does, as long as the file has a
        # .gnu.version section; in a file with none at all ld.so asserts in check_match.
        return version in versions or (None in versions and self.has_versym) or self.sections_missing

    def imports_from(self, library: str) -> list[Import]:
        return [i for i in self.imports if i.library == library]


_NOT_A_FILE = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def _check_file(path: str) -> None:
    """Everything that can be told without opening PATH (a FIFO must never be opened: it blocks)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ElfProblem(f"{path}: symbolic link loop") from None
        if exc.errno == errno.ENOENT and os.path.islink(path):
            raise ElfProblem(f"{path}: dangling symbolic link (to {os.readlink(path)})") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ElfProblem(f"{path}: no such file") from None
        raise ElfProblem(f"{path}: cannot be reached ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ElfProblem(f"{path}: is a directory, not a shared object")
    for test, what in _NOT_A_FILE:
        if test(st.st_mode):
            raise ElfProblem(f"{path}: is {what}, not a shared object")
    if st.st_size == 0:
        raise ElfProblem(f"{path}: empty file, not a shared object")
    if not os.access(path, os.R_OK):
        raise ElfProblem(f"{path}: not readable (permission denied)")


def _dynamic_tags(elf, info: ElfInfo) -> None:
    from elftools.elf.dynamic import DynamicSection

    for section in elf.iter_sections():
        if not isinstance(section, DynamicSection):
            continue
        for tag in section.iter_tags():
            if tag.entry.d_tag == "DT_SONAME":
                info.soname = tag.soname
            elif tag.entry.d_tag == "DT_NEEDED":
                info.needed.append(tag.needed)
            elif tag.entry.d_tag == "DT_RPATH":
                info.rpath.extend(p for p in tag.rpath.split(":") if p)
            elif tag.entry.d_tag == "DT_RUNPATH":
                info.runpath.extend(p for p in tag.runpath.split(":") if p)


def _versions(elf) -> tuple[dict[int, str], dict[int, tuple[str, str]], list[str]]:
    """Index -> defined version name; index -> (needed file, version name); defined names."""
    from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

    defined: dict[int, str] = {}
    needed: dict[int, tuple[str, str]] = {}
    definitions: list[str] = []
    for section in elf.iter_sections():
        if isinstance(section, GNUVerDefSection):
            for verdef, auxiter in section.iter_versions():
                names = [aux.name for aux in auxiter]
                if not names:
                    continue
                defined[verdef["vd_ndx"]] = names[0]
                if not verdef["vd_flags"] & 0x1:  # VER_FLG_BASE names the file itself
                    definitions.append(names[0])
        elif isinstance(section, GNUVerNeedSection):
            for verneed, auxiter in section.iter_versions():
                for aux in auxiter:
                    needed[aux["vna_other"]] = (verneed.name, aux.name)
    return defined, needed, definitions


def _symbols(elf, info: ElfInfo) -> None:
    from elftools.elf.gnuversions import GNUVerSymSection
    from elftools.elf.sections import SymbolTableSection

    defined, needed, info.version_definitions = _versions(elf)
    dynsym = elf.get_section_by_name(".dynsym")
    versym = next((s for s in elf.iter_sections() if isinstance(s, GNUVerSymSection)), None)
    info.has_versym = versym is not None
    if isinstance(dynsym, SymbolTableSection):
        for index, sym in enumerate(dynsym.iter_symbols()):
            if not sym.name:
                continue
            ndx = None
            if versym is not None:
                ndx = versym.get_symbol(index).entry["ndx"]
                if isinstance(ndx, str):  # VER_NDX_LOCAL / VER_NDX_GLOBAL
                    ndx = None
                else:
                    ndx &= 0x7FFF  # the hidden bit
            bind = sym.entry.st_info.bind
            if sym.entry.st_shndx == "SHN_UNDEF":
                lib, ver = needed.get(ndx, (None, None)) if ndx is not None else (None, None)
                info.imports.append(Import(sym.name, ver, lib, weak=bind == "STB_WEAK"))
            elif bind in ("STB_GLOBAL", "STB_WEAK", "STB_GNU_UNIQUE"):
                if sym.entry.st_info.type == "STT_SECTION":
                    continue
                info.exports.setdefault(sym.name, set()).add(defined.get(ndx) if ndx and ndx > 1 else None)
    symtab = elf.get_section_by_name(".symtab")
    info.has_symtab = isinstance(symtab, SymbolTableSection)


def _debug(elf, info: ElfInfo) -> None:
    info.has_debug_info = elf.get_section_by_name(".debug_info") is not None
    note = elf.get_section_by_name(".note.gnu.build-id")
    if note is not None:
        for n in note.iter_notes():
            if n["n_type"] == "NT_GNU_BUILD_ID":
                info.build_id = n["n_desc"]
    link = elf.get_section_by_name(".gnu_debuglink")
    if link is not None:
        data = link.data()
        info.debuglink = data.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_symtab_objects(path: str) -> dict[str, tuple[int, int]]:
    """Data objects (name -> (address, size)) from .symtab, else .dynsym."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with open(path, "rb") as f:
        elf = ELFFile(f)
        out: dict[str, tuple[int, int]] = {}
        for name in (".dynsym", ".symtab"):
            table = elf.get_section_by_name(name)
            if not isinstance(table, SymbolTableSection):
                continue
            for sym in table.iter_symbols():
                if sym.entry.st_info.type == "STT_OBJECT" and sym.entry.st_shndx != "SHN_UNDEF" and sym.name:
                    out[sym.name] = (sym.entry.st_value, sym.entry.st_size)
        return out


def _from_loader_view(info: ElfInfo) -> bool:
    """Fill INFO from PT_DYNAMIC (core/dynsym), the way ld.so reads a file, when its section
    headers are gone or damaged; False when that cannot be read either."""
    from .dynsym import DynsymError, read

    try:
        dyn = read(info.path)
    except DynsymError:
        return False
    if not dyn.definitions and not dyn.needed:
        return False
    info.soname = info.soname or dyn.soname
    info.needed = info.needed or list(dyn.needed)
    info.exports = {name: {None} for name in dyn.definitions}
    info.has_versym = dyn._versym is not None
    info.sections_missing = True
    return True


def read_elf(path: str) -> ElfInfo:
    """Read PATH; raises ElfProblem with a one-line reason for anything unusable."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    _check_file(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ElfProblem(f"{path}: cannot be opened ({exc.strerror})") from None
    try:
        with f:
            head = f.read(4)
            if head != b"\x7fELF":
                raise ElfProblem(f"{path}: not an ELF file")
            f.seek(0)
            elf = ELFFile(f)
            if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
                raise ElfProblem(
                    f"{path}: {elf.elfclass}-bit {elf['e_machine']} ELF; only 64-bit x86-64 objects can be loaded here"
                )
            info = ElfInfo(path=path)
            try:
                _dynamic_tags(elf, info)
                _symbols(elf, info)
                _debug(elf, info)
            except (ELFError, ValueError, KeyError, IndexError, AssertionError, OverflowError):
                if not _from_loader_view(info):
                    raise
            if not info.exports and not info.imports:
                _from_loader_view(info)
            return info
    except ElfProblem:
        raise
    except (ELFError, ValueError, KeyError, IndexError, AssertionError, OSError) as exc:
        raise ElfProblem(f"{path}: truncated or damaged ELF file ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # pyelftools raises assorted errors on damaged input
        raise ElfProblem(f"{path}: unreadable ELF file ({type(exc).__name__}: {exc})") from None


@lru_cache(maxsize=64)
def _cached(path: str, mtime: float, size: int) -> ElfInfo:
    return read_elf(path)


def read_elf_cached(path: str) -> ElfInfo:
    _check_file(path)
    st = os.stat(path)
    return _cached(os.path.realpath(path), st.st_mtime, st.st_size)
