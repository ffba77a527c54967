"""ld.so's own words, read: what a dlopen() failure message says failed, and in which file.

glibc writes (elf/dl-load.c, dl-lookup.c, dl-version.c) a message that names the file the
problem is in first, then the problem:

    libcuda.so.1: cannot open shared object file: No such file or directory
    /path/libcuda.so.1: undefined symbol: cuFoo            <- the file whose REFERENCE is unresolved
    /path/libcudart.so.12: version `libcudart.so.12' not found (required by /path/libggml-cuda.so)
    /path/libcuda.so.1: wrong ELF class: ELFCLASS32
    /path/libcuda.so.1: invalid ELF header
    /path/libcuda.so.1: file too short

so "undefined symbol" blames the file named, which may be the shim itself, not the library
dlopen()ed. Pure: never imports gdb.
"""
from __future__ import annotations

import os
import re

from . import loader
from .record import record

CANNOT_OPEN, UNDEFINED, VERSION, WRONG_CLASS, BAD_HEADER, TOO_SHORT = (
    "cannot-open", "undefined-symbol", "version-not-found", "wrong-elf-class", "invalid-elf-header", "file-too-short")

_PATTERNS = (
    (CANNOT_OPEN, re.compile(r"(?P<file>[^\s:][^:]*): cannot open shared object file")),
    (UNDEFINED, re.compile(r"(?P<file>[^\s:][^:]*): undefined symbol: (?P<symbol>[^\s,]+)(?:, version (?P<version>\S+))?")),
    (VERSION, re.compile(r"(?P<file>[^\s:][^:]*): version `(?P<version>[^']+)' not found \(required by (?P<by>[^)]+)\)")),
    (WRONG_CLASS, re.compile(r"(?P<file>[^\s:][^:]*): wrong ELF class")),
    (BAD_HEADER, re.compile(r"(?P<file>[^\s:][^:]*): invalid ELF header")),
    (TOO_SHORT, re.compile(r"(?P<file>[^\s:][^:]*): file too short")),
)

# la_objsearch's flags: where ld.so was looking when it tried a path (<link.h>)
SEARCH_FROM = {1: loader.AS_GIVEN, 2: loader.LIBRARY_PATH, 4: loader.RUNPATH, 8: loader.CACHE,
               0x10: loader.RPATH, 0x40: "the default directories", 0x80: "a secure directory"}


@record
class LoaderError:
    kind: str
    file: str  # the file the problem is in (for cannot-open: the name that was not found)
    symbol: str | None = None
    version: str | None = None
    required_by: str | None = None


def parse(text: str | None) -> LoaderError | None:
    """The first problem ld.so names in TEXT (a dlerror() string or ggml's line quoting it)."""
    if not text:
        return None
    for kind, pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            file = m.group("file").strip()
            # ggml quotes it: "load_backend: failed to load /x/libggml-cuda.so: libcuda.so.1: cannot ..."
            file = file.rsplit(": ", 1)[-1].rsplit(" ", 1)[-1]
            return LoaderError(kind=kind, file=file, symbol=m.groupdict().get("symbol"),
                               version=m.groupdict().get("version"), required_by=m.groupdict().get("by"))
    return None


_SUBDIRS = re.compile(r"(/glibc-hwcaps/[^/]+|/tls|/x86_64|/haswell|/avx512_1)+$")


def search_dir(path: str) -> str:
    """The directory a tried path is in, without the hwcaps/tls/platform subdirectories ld.so
    tries inside each one (…/glibc-hwcaps/x86-64-v3/, …/tls/x86_64/)."""
    return _SUBDIRS.sub("", os.path.dirname(path)) or "/"


def searched(searches: list[dict], pid: int, name: str) -> tuple[list[str], list[tuple[str, str]]]:
    """For NAME (a library not found) in PID: (the files that asked for it, the directories ld.so
    looked in, with where each came from), from the in-process recorder's la_objsearch records."""
    base = os.path.basename(name)
    asked_by: list[str] = []
    tried: list[tuple[str, str]] = []
    for s in searches:
        if s["pid"] != pid or os.path.basename(s["path"]) != base:
            continue
        if s["flag"] == 1 and s.get("for") and s["for"] not in asked_by:
            asked_by.append(s["for"])
        else:
            where = (search_dir(s["path"]), SEARCH_FROM.get(s["flag"], f"search flag {s['flag']}"))
            if s["flag"] != 1 and where not in tried:
                tried.append(where)
    return asked_by, tried
