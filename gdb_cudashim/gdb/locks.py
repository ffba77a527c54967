"""At a hang (timeout or interrupt, never on a traced stop): which mutex each blocked thread
waits on, who owns it and where that owner is, and which threads spin.

Needs no libc debug info: the futex address comes from /proc/PID/task/TID/syscall (the
futex syscall's first argument; else $rdi in the innermost frame), and the owner is read
from the mutex itself (glibc x86-64 pthread_mutex_t: int __lock at 0, unsigned __count at
4, int __owner at 8, the owner's TID).
"""
from __future__ import annotations

import os
import re
import time
import types

import gdb

from ..core.timeline import role_of

SYS_FUTEX = 202
LOCK_FRAMES = ("lll_lock_wait", "pthread_mutex_lock", "pthread_mutex_timedlock", "pthread_mutex_clocklock")
SPIN_SHARE = 0.25  # a thread out of any syscall that used at least this CPU share is sampled
SAMPLES, SAMPLE_S = 5, 0.05


def examine(threads: list[dict]) -> dict:
    """{"locks": [...], "spins": [...]} for THREADS (collect_hang's snapshot); empty lists when none."""
    locks = [w for w in (_lock_wait(t) for t in threads) if w]
    by_tid = {(t["pid"], t["tid"]): t for t in threads}
    for w in locks:
        _judge(w, by_tid, locks)
    return {"locks": locks, "spins": _spins(threads)}


# -- locks --

def _syscall(pid, tid) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            return f.read().split()
    except OSError:
        return None


def _lock_wait(t) -> dict | None:
    names = [f["function"] or "" for f in t["frames"][:8]]
    if not any(k in n for n in names for k in LOCK_FRAMES):
        return None
    sc = _syscall(t["pid"], t["tid"])
    addr = int(sc[1], 16) if sc and sc[0] == str(SYS_FUTEX) else _rdi(t)
    if not addr:
        return None
    lock = _read_int(t["pid"], addr, 0)
    owner = _read_int(t["pid"], addr, 8)
    caller = next((f for f in t["frames"] if not _in_libc(f)), None)
    sym, lib = _symbol(addr)
    return {"pid": t["pid"], "waiter": t["tid"], "mutex": hex(addr), "symbol": sym, "library": lib,
            "locked": bool(lock), "owner": owner, "waiter_where": _describe(caller), "entry": _describe(_entry(t["frames"])),
            "kind": "other"}


def _rdi(t) -> int | None:
    thread = _thread(t["pid"], t["tid"])
    if thread is None:
        return None
    here = gdb.selected_thread()
    try:
        thread.switch()
        return int(gdb.newest_frame().read_register("rdi")) & (2 ** 64 - 1)
    except (gdb.error, ValueError):
        return None
    finally:
        if here is not None and here.is_valid():
            here.switch()


def _read_int(pid, addr, offset) -> int | None:
    inf = next((i for i in gdb.inferiors() if i.pid == pid), None)
    try:
        return int.from_bytes(bytes(inf.read_memory(addr + offset, 4)), "little", signed=True)
    except (gdb.error, gdb.MemoryError, AttributeError):
        return None


def _symbol(addr) -> tuple[str | None, str | None]:
    """('g_lock', 'libcuda.so.1') from gdb's info symbol (the ELF symbol table is enough)."""
    try:
        text = gdb.execute(f"info symbol {addr:#x}", to_string=True).strip()
    except gdb.error:
        return None, None
    m = re.match(r"(\S+)(?: \+ \d+)? in section \S+(?: of (\S+))?", text)
    if not m:
        return None, None
    return m.group(1), os.path.basename(m.group(2)) if m.group(2) else None


def _judge(w, by_tid, locks):
    """Set W's kind: self (the waiter owns it), never-unlocked (owner gone, or held with no
    frame of its stack having taken it: a constructor's or a returned call's lock), cycle."""
    owner = by_tid.get((w["pid"], w["owner"])) if w["owner"] else None
    w["owner_where"] = _describe(_innermost_shim(owner["frames"])) if owner else None
    w["owner_alive"] = owner is not None
    if not w["locked"] or not w["owner"]:
        return
    if owner is None:
        w["kind"] = "never-unlocked"
        return
    if w["owner"] == w["waiter"]:
        taker = _frame_taking(owner["frames"], int(w["mutex"], 16))
        if taker is not None:
            w["kind"], w["taken_in"] = "self", _describe(taker)
            return
        w["kind"] = "never-unlocked"
        ctor = _constructor_taking(int(w["mutex"], 16))
        if ctor:
            w["taken_in"] = f"{ctor} (a constructor of {w['library'] or 'its library'})"
        return
    chain, tid = [w["waiter"]], w["owner"]
    waits = {(x["pid"], x["waiter"]): x for x in locks}
    while (w["pid"], tid) in waits and tid not in chain:
        chain.append(tid)
        tid = waits[(w["pid"], tid)]["owner"]
    if tid == w["waiter"] and len(chain) > 1:
        w["kind"], w["cycle"] = "cycle", chain


def _frame_taking(frames, addr):
    """The caller frame (above the one that waits) whose function refers to the mutex: it took
    the lock and then called down into code that takes it again."""
    outside = [f for f in frames if not _in_libc(f)]
    for f in outside[1:8]:
        if _refers_to(f["pc"], addr):
            return f
    return None


def _refers_to(pc, addr) -> bool:
    try:
        text = gdb.execute(f"disassemble {pc:#x}", to_string=True)
    except gdb.error:
        return False
    return f"{addr:#x}" in text


def _constructor_taking(addr) -> str | None:
    """The name of an .init_array function that refers to the mutex (from `info files`)."""
    try:
        text = gdb.execute("info files", to_string=True)
    except gdb.error:
        return None
    inf = gdb.selected_inferior()
    for start, end in re.findall(r"(0x[0-9a-f]+) - (0x[0-9a-f]+) is \.init_array", text):
        start, end = int(start, 16), int(end, 16)
        try:
            data = bytes(inf.read_memory(start, min(end - start, 256)))
        except (gdb.error, gdb.MemoryError):
            continue
        for i in range(0, len(data) - 7, 8):
            fn = int.from_bytes(data[i:i + 8], "little")
            if fn and _refers_to(fn, addr):
                return _symbol(fn)[0] or hex(fn)
    return None


# -- spins --

def _cpu_ticks(pid, tid) -> tuple[str, int, float] | None:
    """(state, utime+stime ticks, seconds since the thread started) from /proc."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return fields[0], int(fields[11]) + int(fields[12]), uptime - int(fields[19]) / hz


def _spins(threads) -> list[dict]:
    hz = os.sysconf("SC_CLK_TCK")
    candidates = []
    for t in threads:
        sc, cpu = _syscall(t["pid"], t["tid"]), _cpu_ticks(t["pid"], t["tid"])
        if not sc or sc[0] != "-1" or not cpu or cpu[2] <= 0:
            continue  # in a syscall (or unreadable): not spinning
        share = cpu[1] / hz / cpu[2]
        if share >= SPIN_SHARE and t["frames"]:
            candidates.append({"pid": t["pid"], "tid": t["tid"], "ticks": cpu[1], "cpu": round(share, 2),
                               "pcs": [t["frames"][0]["pc"]], "frames": t["frames"]})
    if not candidates:
        return []
    ran = _sample(candidates)
    spins = []
    for c in candidates:
        cpu = _cpu_ticks(c["pid"], c["tid"])
        if ran and cpu:
            c["cpu"] = round(min(1.0, (cpu[1] - c["ticks"]) / hz / ran), 2)
        spins.append(_loop_of(c))
    return spins


def _sample(candidates) -> float:
    """Let every process run SAMPLE_S seconds, SAMPLES - 1 times, reading each candidate's pc
    after each stop; the seconds it ran in all. A stop is the watchdog's SIGSTOP (never passed on)."""
    from . import control

    ran = 0.0
    try:
        with control.sigstop_not_passed():
            ran = _sample_rounds(candidates, control)
    except gdb.error:
        pass
    return ran


def _sample_rounds(candidates, control) -> float:
    ran = 0.0
    for _ in range(SAMPLES - 1):
        target = types.SimpleNamespace(live_pids={c["pid"] for c in candidates[:1]}, stop_reason=None)
        dog = control.Watchdog(target, deadline=time.monotonic() + SAMPLE_S)
        began = time.monotonic()
        dog.start()
        try:
            gdb.execute("continue", to_string=True)
        finally:
            dog.ack()
            dog.close()
        ran += time.monotonic() - began
        for c in candidates:
            pc = _pc(c["pid"], c["tid"])
            if pc is None:
                return ran
            c["pcs"].append(pc)
    return ran


def _thread(pid, tid):
    inf = next((i for i in gdb.inferiors() if i.pid == pid), None)
    return next((th for th in inf.threads() if th.ptid[1] == tid), None) if inf else None


def _pc(pid, tid) -> int | None:
    thread = _thread(pid, tid)
    if thread is None or not thread.is_valid():
        return None
    here = gdb.selected_thread()
    try:
        thread.switch()
        return gdb.newest_frame().pc()
    except gdb.error:
        return None
    finally:
        if here is not None and here.is_valid():
            here.switch()


def _loop_of(c) -> dict:
    """Where the samples fall: the function(s), and the line range when there are lines."""
    functions, lines, files = [], [], set()
    for pc in c["pcs"]:
        sym = _symbol(pc)[0]
        block_fn = None
        try:
            block_fn = gdb.block_for_pc(pc).function
        except (RuntimeError, AttributeError):
            pass
        name = block_fn.name if block_fn is not None else sym or hex(pc)
        if name not in functions:
            functions.append(name)
        sal = gdb.find_pc_line(pc)
        if sal.symtab is not None and sal.line:
            lines.append(sal.line)
            files.add(os.path.basename(sal.symtab.filename))
    where = None
    if lines and len(files) == 1:
        lo, hi = min(lines), max(lines)
        where = f"{files.pop()}:{lo}" + (f"-{hi}" if hi != lo else "")
    shim = _innermost_shim(c["frames"])
    return {"pid": c["pid"], "tid": c["tid"], "cpu": c["cpu"], "samples": len(c["pcs"]),
            "pcs": [hex(p) for p in c["pcs"]], "functions": functions, "lines": where,
            "library": _solib(c["pcs"][0]), "entry": _describe(_entry(c["frames"])), "where": _describe(shim)}


# -- frames --

def _solib(pc):
    from .memory import solib

    name = solib(pc)
    return os.path.basename(name) if name else None


def _in_libc(f) -> bool:
    lib = os.path.basename(f.get("library") or "")
    return lib.startswith(("libc.so", "libpthread", "ld-linux"))


def _innermost_shim(frames):
    return next((f for f in frames if role_of(f["library"]) in ("driver", "nvml")),
                next((f for f in frames if not _in_libc(f)), None))


def _entry(frames):
    """The outermost shim frame: the CUDA entry point the thread came in through."""
    shim = [f for f in frames if role_of(f["library"]) in ("driver", "nvml")]
    return shim[-1] if shim else None


def _describe(f) -> str | None:
    if not f:
        return None
    lib = os.path.basename(f["library"]) if f.get("library") else "?"
    return f"{f['function']} ({lib})" + (f" at {f['where']}" if f.get("where") else "")
