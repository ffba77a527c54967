"""The dynamic loader, as glibc's ld.so (2.3x, x86-64) finds a library: the one model that run,
cuda-state, audit and the rules read. Nothing else in the package splits LD_PRELOAD, expands
$ORIGIN or writes down the search order.

- Preloads, first: LD_PRELOAD (entries split on spaces and ':'), then /etc/ld.so.preload
  ('#' comments, whitespace or ':'). An entry with a '/' is a path (a relative one from the
  process's working directory); a bare name is searched like any other name.
- A name with a '/' is opened as given. Otherwise, in order: the DT_RPATH of the file that needs
  it (only when that file has no DT_RUNPATH), LD_LIBRARY_PATH (split on ':' and ';'; an empty entry
  is the working directory), the DT_RUNPATH of the file that needs it, ld.so.cache, the default
  directories. $ORIGIN / ${ORIGIN} in DT_RPATH/DT_RUNPATH is the directory of the file that holds
  the entry. Within each directory a glibc-hwcaps subdirectory this CPU supports wins when it
  holds the file (`ld.so --help` lists them).
- Every question is asked with the traced process's environment and working directory, never
  gdb's (a process's env is in its ProcessStart).

Not modelled (said where it matters): the DT_RPATH of the loader's own loaders up to the
executable, secure-execution (setuid) mode, the legacy tls/x86_64 subdirectories.
Pure: never imports gdb.
"""
from __future__ import annotations

import os
import subprocess
from functools import lru_cache

# how a file was found: constants, never display strings compared by hand
PRELOAD = "LD_PRELOAD"
PRELOAD_FILE = "ld.so.preload"  # a step from the preload file reads as the file's path (ld_so_preload_path())
AS_GIVEN = "the name as given"
RPATH = "DT_RPATH"
LIBRARY_PATH = "LD_LIBRARY_PATH"
RUNPATH = "DT_RUNPATH"
CACHE = "ld.so.cache"
DEFAULT = "default dirs"
BY_PATH = "by path (dlopen or DT_NEEDED)"  # mapped, but no step of the search finds it: it was named by path

LD_SO_PRELOAD_ENV = "GDB_CUDASHIM_LD_SO_PRELOAD"  # tests point it at a file of their own
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
LD_SO = ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")


# ------------------------------------------------------------------ lists --
def split_preload(value: str | None) -> list[str]:
    """LD_PRELOAD's entries: ld.so splits it on spaces and colons."""
    return (value or "").replace(":", " ").split()


def library_path(env: dict, cwd: str | None = None) -> list[str]:
    """LD_LIBRARY_PATH's directories, as ld.so reads them: split on ':' and ';', an empty entry is the
    working directory, a relative one is taken from it (checked: LD_DEBUG=libs shows the search)."""
    value = env.get("LD_LIBRARY_PATH")
    if not value:
        return []
    out = []
    for item in value.replace(";", ":").split(":"):
        out.append(_abs(item or ".", cwd))
    return out


def _abs(item: str, cwd: str | None) -> str:
    if os.path.isabs(item) or not cwd:
        return item
    return os.path.normpath(os.path.join(cwd, item))


def expand(entry: str, holder: str) -> str:
    """A DT_RPATH/DT_RUNPATH entry of the file HOLDER with $ORIGIN (or ${ORIGIN}) expanded."""
    origin = os.path.dirname(os.path.realpath(holder))
    return entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)


def origin_dirs(entries: list[str], holder: str) -> list[str]:
    """HOLDER's DT_RPATH/DT_RUNPATH ENTRIES as real directories."""
    return [os.path.realpath(expand(e, holder)) for e in entries]


def missing_dirs(env: dict, cwd: str | None = None) -> list[str]:
    """LD_LIBRARY_PATH directories that do not exist: ld.so skips them without a word."""
    return [d for d in dict.fromkeys(library_path(env, cwd)) if not os.path.isdir(d)]


# --------------------------------------------------------------- preloads --
def ld_so_preload_path() -> str:
    return os.environ.get(LD_SO_PRELOAD_ENV) or "/etc/ld.so.preload"


def ld_so_preload() -> list[str]:
    """The entries of /etc/ld.so.preload, as ld.so reads them (whitespace or ':' separated, '#' comments)."""
    try:
        with open(ld_so_preload_path()) as f:
            text = f.read()
    except OSError:
        return []
    lines = (line.partition("#")[0] for line in text.splitlines())
    return [item for line in lines for item in line.replace(":", " ").split()]


def is_preload(how: str | None) -> bool:
    """HOW (a search step, or how a mapped file got in) is a preload: LD_PRELOAD or the preload file."""
    return how in (PRELOAD, PRELOAD_FILE, ld_so_preload_path())


def preload_entries(env: dict, cwd: str | None) -> list[tuple[str, str]]:
    """(entry, how) of each preload in ld.so's order, as written: a path made absolute from CWD, a
    bare name kept as a name. HOW is PRELOAD or the preload file's path."""
    out = [(e if "/" not in e else _abs(e, cwd), PRELOAD) for e in split_preload(env.get("LD_PRELOAD"))]
    out += [(e if "/" not in e else _abs(e, "/"), ld_so_preload_path()) for e in ld_so_preload()]
    return out


def preloads(env: dict, cwd: str | None, cache=None) -> list[tuple[str, str]]:
    """(path, how) of each preload: a bare name where ld.so finds it (the search, as for a DT_NEEDED of
    the program), else the name itself (ld.so says it cannot be preloaded and goes on)."""
    out = []
    for entry, how in preload_entries(env, cwd):
        if "/" not in entry:
            found = first(search(entry, None, env, cwd, cache, with_preloads=False))
            entry = found["path"] if found else entry
        out.append((entry, how))
    return out


# ----------------------------------------------------------------- search --
@lru_cache(maxsize=1)
def _ld_cache_text() -> str:
    for cmd in (["ldconfig", "-p"], ["/sbin/ldconfig", "-p"]):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
    return ""


@lru_cache(maxsize=1)
def ld_cache() -> dict[str, list[str]]:
    """soname -> paths, from ld.so.cache (ldconfig -p, read once per run): x86-64 entries only.
    Parsed once too (~2 ms a time, and a report asks for each library): callers only read it."""
    cache: dict[str, list[str]] = {}
    for line in _ld_cache_text().splitlines()[1:]:
        line = line.strip()
        if "=>" not in line or "x86-64" not in line:
            continue
        cache.setdefault(line.split(" ", 1)[0], []).append(line.rsplit("=>", 1)[1].strip())
    return cache


@lru_cache(maxsize=1)
def hwcaps() -> tuple[str, ...]:
    """The glibc-hwcaps subdirectories ld.so searches on this CPU, best first (`ld.so --help`)."""
    for ld in LD_SO:
        try:
            text = subprocess.run([ld, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        return tuple(line.split()[0] for line in text.splitlines()
                     if line.startswith("  x86-64-") and "searched" in line)
    return ()


def _in_dir(d: str, name: str) -> list[str]:
    """Where NAME is looked for in directory D: a supported glibc-hwcaps subdirectory that holds it, then D."""
    out = [os.path.join(d, "glibc-hwcaps", h, name) for h in hwcaps()
           if os.path.isfile(os.path.join(d, "glibc-hwcaps", h, name))]
    return out + [os.path.join(d, name)]


def search(name: str, needer=None, env: dict | None = None, cwd: str | None = None, cache=None,
           with_preloads: bool = True) -> list[dict]:
    """Every place ld.so tries for NAME, needed by NEEDER (anything with .path, .rpath, .runpath; None
    for the program or a dlopen with no DT_RPATH of its own), in its order; the first that exists and
    satisfies wins. Each: how (a step constant, or the preload file's path), path, exists, soname (for
    preloads: what it answers to) and satisfies. Preloads come first: one whose soname is NAME
    satisfies it for every consumer."""
    from .dynsym import DynsymError, read_cached

    env = env or {}
    steps: list[tuple[str, str]] = []
    if with_preloads:
        steps += [(how, path) for path, how in preloads(env, cwd, cache)]
    if "/" in name:
        steps.append((AS_GIVEN, _abs(name, cwd)))
    else:
        if needer is not None and needer.rpath and not needer.runpath:
            steps += [(RPATH, p) for d in needer.rpath for p in _in_dir(expand(d, needer.path), name)]
        steps += [(LIBRARY_PATH, p) for d in library_path(env, cwd) for p in _in_dir(d, name)]
        if needer is not None and needer.runpath:
            steps += [(RUNPATH, p) for d in needer.runpath for p in _in_dir(expand(d, needer.path), name)]
        cache = ld_cache() if cache is None else cache
        steps += [(CACHE, p) for p in cache.get(name, [])]
        steps += [(DEFAULT, p) for d in DEFAULT_DIRS for p in _in_dir(d, name)]
    out, seen = [], set()
    for how, path in steps:
        exists = os.path.isfile(path)
        if is_preload(how):
            soname = None
            if exists:
                try:
                    soname = read_cached(path).soname
                except (DynsymError, OSError, ValueError):
                    pass
            out.append({"how": how, "path": path, "exists": exists, "soname": soname,
                        "satisfies": exists and soname == os.path.basename(name)})
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        out.append({"how": how, "path": path, "exists": exists, "soname": None, "satisfies": exists})
    return out


def first(candidates: list[dict]) -> dict | None:
    """The candidate ld.so takes: the first that satisfies the name."""
    return next((c for c in candidates if c["satisfies"]), None)


def searched_dirs(name: str, needer=None, env: dict | None = None, cwd: str | None = None, cache=None) -> list[str]:
    """The directories ld.so looks in for NAME, in order (no preloads), each once."""
    return list(dict.fromkeys(os.path.dirname(c["path"]) for c in search(name, needer, env, cwd, cache, False)))


def step_text(cand: dict, needer=None) -> str:
    """How a candidate is found, for a person: "DT_RPATH $ORIGIN/../lib of libggml-cuda.so" (the entry
    as written), "LD_PRELOAD", "LD_LIBRARY_PATH (/opt/shim)"."""
    how = cand["how"]
    if how in (RPATH, RUNPATH) and needer is not None:
        here = os.path.realpath(os.path.dirname(cand["path"]))
        entries = needer.rpath if how == RPATH else needer.runpath
        entry = next((e for e in entries if os.path.realpath(expand(e, needer.path)) == here),
                     os.path.dirname(cand["path"]))
        return f"{how} {entry} of {os.path.basename(needer.path)}"
    if is_preload(how):
        return how
    return f"{how} ({os.path.dirname(cand['path'])})"


# ------------------------------------------------ who would define a name --
DEFINING_BUDGET_S = 3.0  # an undefined-symbol finding is rare; a system holds ~500-3000 libraries


def defining(symbol: str, env: dict, cwd: str | None, near: tuple[str, ...] = (), shown: int = 3,
             budget_s: float = DEFINING_BUDGET_S) -> tuple[list[str], int, bool]:
    """Libraries that export SYMBOL (as dlsym would find it), looked for where ld.so would find a
    library for this process: the directories of NEAR (the file that needs it), LD_LIBRARY_PATH,
    then every library in ld.so.cache and the default directories. (paths, libraries read,
    whether every candidate was read within BUDGET_S)."""
    import glob
    import time

    from .dynsym import DynsymError, read  # not the cache: hundreds of files read once

    dirs = [os.path.dirname(os.path.realpath(p)) for p in near] + library_path(env, cwd)
    files = [f for d in dict.fromkeys(dirs) for f in sorted(glob.glob(os.path.join(glob.escape(d), "*.so*")))]
    files += sorted({p for paths in ld_cache().values() for p in paths})
    files += [f for d in DEFAULT_DIRS for f in sorted(glob.glob(os.path.join(d, "*.so*")))]
    found, count = [], 0
    seen = {os.path.realpath(p) for p in near}  # the file that needs it does not define it
    deadline = time.monotonic() + budget_s
    for f in files:
        real = os.path.realpath(f)
        if real in seen:
            continue
        seen.add(real)
        if time.monotonic() > deadline:
            return found, count, False
        try:
            d = read(real)
        except (DynsymError, OSError, ValueError):
            continue
        count += 1
        if d.dlsym_finds(symbol):
            found.append(f)
            if len(found) >= shown:
                break
    return found, count, True


# ------------------------------------------- how a mapped file got there --
def same_file(a: str, b: str) -> bool:
    """A and B name one file (through symlinks)."""
    return os.path.realpath(a) == os.path.realpath(b)


def found_by(path: str, soname: str | None, needers: list, env: dict, cwd: str | None,
             preload_list: list[tuple[str, str]] | None = None) -> str | None:
    """Which step of the search found PATH (mapped into a process whose ENV and CWD are given):
    a preload (PRELOAD or the preload file's path), "DT_RPATH of X", LD_LIBRARY_PATH,
    "DT_RUNPATH of X", ld.so.cache or the default directories. NEEDERS: the mapped files (with
    .path, .needed, .rpath, .runpath) that may need it. None: no step of the model finds it there
    (a dlopen by full path, or a search the model does not cover)."""
    name = soname or os.path.basename(path)
    for entry, how in (preload_entries(env, cwd) if preload_list is None else preload_list):
        if ("/" in entry and same_file(entry, path)) or ("/" not in entry and entry in (name, os.path.basename(path))):
            return how
    needing = [c for c in needers if name in (c.needed or ()) and not same_file(c.path, path)]
    for c in needing or [None]:
        for cand in search(name, c, env, cwd, with_preloads=False):
            if cand["exists"] and same_file(cand["path"], path):
                if cand["how"] in (RPATH, RUNPATH):
                    return f"{cand['how']} of {os.path.basename(c.path)}"
                return cand["how"]
            if cand["exists"]:
                break  # ld.so stops at the first it finds: this one came by another way
    return None


def brought_in_by(path: str, preloaded: dict[str, str], loads, mapped: list[str]) -> str:
    """Who asked for PATH: a preload (its how), dlopen("X") by Y, or the DT_NEEDED of the mapped file
    that needs its soname. PRELOADED: real path -> how; LOADS: the process's dlopen()s."""
    from .cudafiles import dynamic as dyn

    real = os.path.realpath(path)
    if real in preloaded:
        return preloaded[real]
    for l in loads:
        if l.ok and l.resolved and os.path.realpath(l.resolved) == real:
            return f"dlopen(\"{os.path.basename(l.path)}\") by {os.path.basename(l.caller or '?')}"
    d = dyn(path)
    soname = (d.soname if d is not None else None) or os.path.basename(path)
    for other in mapped:
        if other == path:
            continue
        od = dyn(other)
        if od is not None and soname in od.needed:
            return f"DT_NEEDED of {os.path.basename(other)}"
    return "loaded"


# ------------------------------------------------- a process on the timeline --
def process_env(tl, pid: int) -> tuple[dict, str | None]:
    """(environment, working directory) of PID as it started, else ({}, None)."""
    start = tl.process_start(pid) if tl is not None else None
    if start is None:
        return {}, None
    return dict(start.env or {}), start.cwd


def preloaded(tl, pid: int) -> list[tuple[str, str]]:
    """(path, how) of every file preloaded into PID: LD_PRELOAD at its start, then the preload file."""
    start = tl.process_start(pid)
    if start is None:
        return []
    return preloads(dict(start.env or {}), start.cwd)


def preloaded_files(tl, pid: int) -> set[str]:
    """The real paths of PID's preloads: what a mapped file is compared with."""
    return {os.path.realpath(path) for path, _ in preloaded(tl, pid)}
