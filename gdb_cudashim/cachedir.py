"""Where gdb-cudashim keeps what it makes once and reads on later runs: the CUDA stack, the real
programs, and gdb's index of the debug info it reads. One home for the path, cheap to import
(the CLI asks for it before every run).

GDB_CUDASHIM_CACHE names the folder; else $XDG_CACHE_HOME/gdb-cudashim, else ~/.cache/gdb-cudashim.
"""
from __future__ import annotations

import os

GDB_INDEX = "gdb-index-1"  # bump when what is kept there changes
GDB_INDEX_KEEP = 256  # index files kept: past it, the least recently written go (each rebuilt shim adds one)


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
    if not os.access(path, os.W_OK | os.X_OK):
        return None
    _prune(path)
    return path


def _prune(path: str) -> None:
    """gdb never removes an index: keep the newest GDB_INDEX_KEEP/2 once there are more than
    GDB_INDEX_KEEP (a shim rebuilt a hundred times a day leaves a hundred build-ids)."""
    try:
        entries = [e for e in os.scandir(path) if e.name.endswith(".gdb-index") and e.is_file(follow_symlinks=False)]
        if len(entries) <= GDB_INDEX_KEEP:
            return
        entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime)
        for e in entries[:len(entries) - GDB_INDEX_KEEP // 2]:
            os.unlink(e.path)
    except OSError:
        pass
