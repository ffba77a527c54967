"""Leave a process as it was when its debugger died without detaching cleanly.

gdb plants int3 (0xcc) bytes in the code of the processes it traces. If gdb is killed
while attached, the kernel detaches the process with those bytes still in place and
the next one it reaches kills it with SIGTRAP. A debugger's writes to code land in
private copies of the file's pages: /proc/PID/pagemap shows those pages as present but
no longer file-backed. Every 0xcc there that the file does not have is put back from
the file, through /proc/PID/mem. Pure: never imports gdb.
"""
from __future__ import annotations

import os
import signal
import struct

from .procfs import state, tracer_of

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63
FILE_OR_SHARED = 1 << 61


def _code_mappings(pid: int):
    """(start, end, file offset, path) of each executable file mapping."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
                continue
            path = parts[5].strip()
            if path.endswith(" (deleted)"):
                continue  # the file on disk is not what was mapped
            start, end = (int(x, 16) for x in parts[0].split("-"))
            yield start, end, int(parts[2], 16), path


def _private_pages(pagemap, start: int, end: int):
    """The pages of [start, end) that are present and no longer the file's own."""
    first = start // PAGE
    count = (end - start) // PAGE
    pagemap.seek(first * 8)
    raw = pagemap.read(count * 8)
    for i, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
        if entry & PRESENT and not entry & FILE_OR_SHARED:
            yield (first + i) * PAGE


def restore_code(pid: int) -> int:
    """Put back every byte a debugger replaced with int3 in PID's file-backed code.
    Returns how many bytes were restored. OSError when /proc/PID cannot be read."""
    restored = 0
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap, open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        for start, end, offset, path in list(_code_mappings(pid)):
            pages = list(_private_pages(pagemap, start, end))
            if not pages:
                continue
            try:
                source = open(path, "rb")
            except OSError:
                continue
            with source:
                for page in pages:
                    source.seek(offset + (page - start))
                    original = source.read(PAGE)
                    mem.seek(page)
                    try:
                        current = mem.read(len(original))
                    except OSError:
                        continue
                    for i, (now, was) in enumerate(zip(current, original)):
                        if now == 0xCC and was != 0xCC:
                            mem.seek(page + i)
                            mem.write(bytes((was,)))
                            restored += 1
    return restored


def rescue(pids, was_stopped=()) -> list[str]:
    """After gdb died attached to PIDS (stopped first with SIGSTOP by the caller): put the
    code back, then let each one run again unless it was stopped before we came. Returns
    one line per process for the report."""
    lines = []
    for pid in pids:
        if state(pid) in (None, "Z", "X"):
            continue
        try:
            n = restore_code(pid)
            what = f"restored {n} code byte(s) gdb had replaced" if n else "no breakpoint left in its code"
        except OSError as exc:
            what = f"could not check its code for breakpoints left behind: {exc.strerror}"
        if pid not in was_stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        lines.append(f"pid {pid}: {what}; running untraced" if tracer_of(pid) == 0 else
                     f"pid {pid}: {what}; still traced by pid {tracer_of(pid)}")
    return lines
