"""Interposing shims: HAMi-core's libvgpu.so, vGPU limiters, API-remoting clients.

They are preloaded under their own soname (LD_PRELOAD or /etc/ld.so.preload), hook dlsym and
cu*/nvml*, and forward to the libcuda.so.1 the loader finds: one call lands in the interposer,
then (same thread, next call) the same function lands in the driver, called from the interposer.
That is a design, not the LD_PRELOAD soname accident of rules.rule_two_drivers.
Pure: never imports gdb.
"""
from __future__ import annotations

import os

from . import loader
from .calls import role_of
from .timeline import Call, Timeline

LOOP_ROUNDS = 4  # a dlsym hook and the driver asking each other this many times in a row is a loop


def _base(path: str | None) -> str:
    return os.path.basename(path) if path else "?"


def _same(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.basename(a) == os.path.basename(b)


def _forwards(tl: Timeline, pid: int) -> dict[str, list[tuple[Call, Call]]]:
    """For each library that is not a driver by name: (its call, the driver's call it made next on
    that thread), the pairs that show a call followed through both."""
    by_thread: dict[int, list[Call]] = {}
    for c in tl.calls:
        if c.pid == pid:
            by_thread.setdefault(c.tid, []).append(c)
    out: dict[str, list[tuple[Call, Call]]] = {}
    for calls in by_thread.values():
        for outer, inner in zip(calls, calls[1:]):
            if (outer.library and role_of(outer.library) is None and inner.function == outer.function
                    and role_of(inner.library) == "driver" and _same(inner.caller, outer.library)):
                out.setdefault(outer.library, []).append((outer, inner))
    return out


def interposers(tl: Timeline, pid: int) -> list[dict]:
    """Each preloaded file of PID that is not named libcuda.so.1, exports CUDA driver entry points
    and forwards the calls landing in it to the driver: {path, source, soname, hooks_dlsym, driver, pairs}."""
    from .dynsym import DynsymError, read_cached  # the dynamic symbols only: no pyelftools

    forwards = _forwards(tl, pid)
    out = []
    for path, source in loader.preloaded(tl, pid):
        try:
            info = read_cached(path)
        except DynsymError:
            continue
        pairs = next((p for lib, p in forwards.items() if _same(lib, path)), [])
        # no call got through (the driver behind it lacks what it forwards to): the file looking up
        # driver entry points in the driver's own handle is the interposer at work all the same
        asks = [l for l in tl.lookups if l.pid == pid and _same(l.caller, path) and l.handle_library
                and role_of(l.handle_library) == "driver" and not _same(l.handle_library, path)]
        if info.soname == "libcuda.so.1" or not (pairs or asks) or not info.dlsym_finds("cuInit"):
            continue
        out.append({"path": path, "source": source, "soname": info.soname or os.path.basename(path),
                    "hooks_dlsym": info.dlsym_finds("dlsym"),
                    "driver": pairs[0][1].library if pairs else asks[0].handle_library, "pairs": pairs, "asks": asks})
    return out


def chains(tl: Timeline) -> list[dict]:
    """The report's view: per process, interposer -> driver and a call followed through both."""
    out = []
    for pid in sorted({c.pid for c in tl.calls}):
        for ip in interposers(tl, pid):
            if ip["pairs"]:
                outer, inner = next(((o, i) for o, i in ip["pairs"] if o.function == "cuInit"), ip["pairs"][0])
                example = (f"{outer.function} from {_base(outer.caller)} landed in {_base(outer.library)}, "
                           f"which called {inner.function} in {_base(inner.library)}: "
                           f"{inner.result_name} -> {outer.result_name}")
            else:
                ask = ip["asks"][0]
                example = (f"{_base(ip['path'])} looked up {ask.symbol} in {_base(ask.handle_library)} to forward "
                           f"to it: {'found' if ask.found else 'NULL' if ask.found is False else 'no answer seen'}; "
                           "no call got through")
            out.append({"pid": pid, "interposer": ip["path"], "soname": ip["soname"], "source": ip["source"],
                        "hooks_dlsym": ip["hooks_dlsym"], "driver": ip["driver"], "forwarded": len(ip["pairs"]),
                        "example": example,
                        "functions": list(dict.fromkeys(o.function for o, _ in ip["pairs"]))})
    return out


def lookup_loops(tl: Timeline) -> list[dict]:
    """A dlsym hook and the driver asking each other: on one thread, the driver's own dlsym lookup,
    then a call into the driver made by another library, again and again (LOOP_ROUNDS or more)."""
    by_thread: dict[tuple[int, int], list] = {}
    for e in sorted(tl.calls + tl.lookups, key=lambda e: e.seq):
        by_thread.setdefault((e.pid, e.tid), []).append(e)
    out = []
    for (pid, tid), events in by_thread.items():
        best: list = []
        run: list = []
        for e in events:
            want_lookup = not run or run[-1].kind == "call"
            if want_lookup and e.kind == "lookup" and role_of(e.caller) == "driver":
                run.append(e)
            elif (not want_lookup and e.kind == "call" and role_of(e.library) == "driver"
                  and e.caller and role_of(e.caller) is None):
                run.append(e)
            else:
                run = [e] if e.kind == "lookup" and role_of(e.caller) == "driver" else []
            if len(run) > len(best):
                best = list(run)
        rounds = len(best) // 2
        if rounds >= LOOP_ROUNDS:
            hook = next(e.caller for e in best if e.kind == "call")
            out.append({"pid": pid, "tid": tid, "rounds": rounds, "hook": hook, "driver": best[0].caller,
                        "symbol": best[0].symbol, "first": best[0].seq, "last": best[-1].seq})
    return out
