"""Every thread of a stopped process as the reports show it: its backtrace, the CUDA driver or
shim frame it waits in, and the system call it is blocked in (none: it was running its own code).
Read at a hang, at a kill and at a crash; needs nothing of ours but memory's backtrace."""
from __future__ import annotations

import os

import gdb

from ..core.timeline import Frame
from . import memory


def live_inferiors() -> list:
    """The inferiors with a process (gdb keeps one without a pid after its process ended)."""
    return [i for i in gdb.inferiors() if i.pid]


def thread_snapshot(inferior, limit=48) -> list[dict]:
    """Each thread of INFERIOR: its backtrace and the CUDA driver/shim frame it waits in. The
    selected thread is restored afterwards."""
    from ..core.timeline import waiting_in

    here = gdb.selected_thread()
    threads = []
    shims = _shim_files(inferior.pid)
    try:
        for thread in inferior.threads():
            try:
                thread.switch()
            except gdb.error:
                continue
            frames = [Frame(function=f, library=lib, pc=pc, where=where) for f, lib, pc, where in memory.backtrace(limit)]
            threads.append({"pid": inferior.pid, "tid": thread.ptid[1], "name": thread.name,
                            "waiting_in": waiting_in(frames, shims), "blocked": blocked_in(inferior.pid, thread.ptid[1]),
                            "frames": [f.__dict__ for f in frames]})
    finally:
        if here is not None and here.is_valid():
            here.switch()
    return threads


def _shim_files(pid: int) -> set[str]:
    """The names of PID's files in a driver or NVML role, those their names do not tell included: an
    interposer under its own soname (HAMi-core's libvgpu.so), whose lock waits are shim waits."""
    from ..core import cudafiles
    from ..core.procfs import ProcError, mapped_files

    try:
        paths = mapped_files(pid)
    except (OSError, ProcError):
        return set()
    return {os.path.basename(p) for p in paths if cudafiles.role(p) in (cudafiles.DRIVER, cudafiles.NVML)}


def blocked_in(pid: int, tid: int) -> str | None:
    """The system call TID sat in when it was stopped (a thread that waits: futex, poll...),
    None when it was running its own code (runnable: slowed down, or spinning)."""
    from ..core.procfs import syscall_name

    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            number = f.read().split()[0]
    except (OSError, IndexError):
        return None
    return None if number in ("-1", "running") else syscall_name(int(number))
