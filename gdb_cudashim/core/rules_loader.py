"""Loader rules that need no CUDA call at all: what ld.so did to a process before main (its own
module: rules.py holds the families that read the calls). Rule signature: Timeline -> list[Finding].

Pure: never imports gdb.
"""
from __future__ import annotations

import os

from .loader import preloaded
from .timeline import Timeline

EM_X86_64 = 62


def _unloadable(path: str) -> str | None:
    """Why ld.so cannot preload PATH (its own words, as it prints them), None if it can."""
    if "/" not in path or not os.path.exists(path):
        return "cannot open shared object file: No such file or directory"
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as exc:
        return f"cannot open shared object file: {exc.strerror}"
    if len(head) < 20:
        return "file too short"
    if head[:4] != b"\x7fELF":
        return "invalid ELF header"
    if head[4] != 2 or int.from_bytes(head[18:20], "little") != EM_X86_64:
        return "wrong ELF class (not a 64-bit x86-64 library)"
    return None


def rule_preload_ignored(tl: Timeline) -> list:
    """An LD_PRELOAD (or /etc/ld.so.preload) entry ld.so could not load: it prints "ERROR: ld.so:
    object '...' from LD_PRELOAD cannot be preloaded (...): ignored." before main, where the tool
    sees no write, and runs the program without the shim the user meant it to have."""
    from .finding import Finding

    seen: dict[tuple[str, str], list] = {}
    for start in tl.processes:
        if start.what != "start":
            continue
        for path, source in preloaded(tl, start.pid):
            why = _unloadable(path)
            if why is not None:
                seen.setdefault((path, source), []).append(start)
    out = []
    for (path, source), starts in seen.items():
        progs = ", ".join(dict.fromkeys(f"{os.path.basename(s.detail or '?')} (pid {s.pid})" for s in starts[:4]))
        why = _unloadable(path)
        out.append(Finding(
            rule="preload-ignored", pid=starts[0].pid,
            summary=f"{source} names {path}, which ld.so could not preload ({why}): {progs} ran without it",
            evidence=[f"ld.so prints \"ERROR: ld.so: object '{path}' from {source} cannot be preloaded ({why}): "
                      "ignored.\" before main and goes on",
                      f"{len(starts)} process(es) started with it: {progs}"],
            fix=(f"give {source} the absolute path of a 64-bit x86-64 library that exists (a bare name is searched "
                 "in LD_LIBRARY_PATH and the default directories only)")))
    return out
