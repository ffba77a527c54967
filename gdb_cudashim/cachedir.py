"""Where gdb-cudashim keeps what it makes once and reads on later runs: the CUDA stack, the real
programs, and gdb's index of the debug info it reads. One home for the path, cheap to import
(the CLI asks for it before every run).

GDB_CUDASHIM_CACHE names the folder; else $XDG_CACHE_HOME/gdb-cudashim, else ~/.cache/gdb-cudashim.
"""
from __future__ import annotations

import os

GDB_INDEX = "gdb-index-1"  # bump when what is kept there changes
GDB_INDEX_KEEP = 256  # index files kept: past it, the least recently written go (each rebuilt shim adds one)
GDB_INDEX_BYTES = 512 << 20  # and past this many bytes (a -g build of llama.cpp's libraries is tens of MB)


def root() -> str:
    env = os.environ.get("GDB_CUDASHIM_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gdb-cudashim")


def gdb_index() -> str | None:
    """The folder for gdb's index cache (`set index-cache directory`), made if missing (mode 0700,
    only ours); None when it cannot be made or used, and then gdb reads debug info as it always does.

    Why: a batch run's gdb spends most of its own time indexing the DWARF of the program's
    libraries (libc6-dbg's alone ~0.1 s on this 2-core machine) while the program waits at its
    first library stop. gdb keys each index by the file's build-id, so a later run of the same
    files reads a ready index instead. A path gdb's command line cannot say is not used."""
    path = os.path.join(root(), GDB_INDEX)
    if any(c in path for c in '"\\\n'):
        return None
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    # gdb reads what it finds there as its own index: never a folder another user can write to
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.access(path, os.W_OK | os.X_OK):
        return None
    _prune(path)
    return path


def _prune(path: str) -> None:
    """gdb never removes an index: keep the newest half once there are more than GDB_INDEX_KEEP
    files or GDB_INDEX_BYTES (a shim rebuilt a hundred times a day leaves a hundred build-ids).
    gdb writes an index once and then only reads it, so "newest" is by when it was written: a
    pruned index that is still used is written again at its next run."""
    try:
        entries = [(e, e.stat(follow_symlinks=False)) for e in os.scandir(path)
                   if e.name.endswith(".gdb-index") and e.is_file(follow_symlinks=False)]
        total = sum(st.st_size for _e, st in entries)
        if len(entries) <= GDB_INDEX_KEEP and total <= GDB_INDEX_BYTES:
            return
        entries.sort(key=lambda x: x[1].st_mtime)
        while entries and (len(entries) > GDB_INDEX_KEEP // 2 or total > GDB_INDEX_BYTES // 2):
            e, st = entries.pop(0)
            os.unlink(e.path)
            total -= st.st_size
    except OSError:
        pass
