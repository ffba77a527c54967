"""Rules over a hang: a thread waiting on a mutex (its owner read from the mutex: itself, gone,
a constructor, a cycle, another thread) and a thread spinning out of any syscall, from the
hang data the gdb layer collected at the timeout. Timeline -> list[Finding]. Pure: never
imports gdb.
"""
from __future__ import annotations

from .finding import Finding
from .timeline import Timeline


def _lock_name(w: dict) -> str:
    name = w.get("symbol") or f"the mutex at {w['mutex']}"
    return f"{name} ({w['library']})" if w.get("symbol") and w.get("library") else name


def rule_deadlock_or_spin(tl: Timeline) -> list[Finding]:
    """At a hang: a thread waiting on a mutex (its owner read from the mutex: itself, gone, a
    constructor, a cycle, another thread) and a thread spinning out of any syscall."""
    hang = tl.hang or {}
    out, seen_cycles = [], set()
    for w in hang.get("locks") or []:
        lock, waiter, owner = _lock_name(w), w["waiter"], w.get("owner")
        entry = w.get("entry") or w.get("waiter_where") or "?"
        ev = [f"thread {waiter} waits in {w.get('waiter_where') or '?'} (entered through {entry}) on {lock} at "
              f"{w['mutex']}; its __owner field says thread {owner}"]
        kind = w.get("kind")
        if kind == "self":
            ev.append(f"this same thread took it in {w.get('taken_in') or 'a caller on its stack'}, and then called "
                      f"down into code that locks it again: a plain (non-recursive) mutex never wakes")
            out.append(Finding(
                rule="self-deadlock", summary=f"{entry} waits on {lock}, which this same thread already holds", evidence=ev,
                fix=f"do not take {w.get('symbol') or 'the lock'} again while holding it (a helper that expects it held, "
                "or no lock in the helper), or make it a recursive mutex (PTHREAD_MUTEX_RECURSIVE)", pid=w["pid"]))
        elif kind == "never-unlocked":
            if not w.get("owner_alive", True):
                ev.append(f"thread {owner} no longer exists: it returned or exited holding the lock")
                by = f"thread {owner}, which has exited"
            elif w.get("taken_in"):
                ev.append(f"no frame on thread {owner}'s stack took it: {w['taken_in']} refers to it, and ran when the "
                          f"library was loaded, on this thread")
                by = w["taken_in"]
            else:
                ev.append(f"no frame on thread {owner}'s stack took it: a call that already returned left it locked")
                by = f"thread {owner} earlier"
            out.append(Finding(
                rule="lock-never-unlocked", summary=f"{entry} waits on {lock}, locked by {by} and never unlocked", evidence=ev,
                fix=f"unlock {w.get('symbol') or 'it'} on every path out of the function that takes it"
                + (" (a constructor must not return holding a lock)" if w.get("taken_in") else ""), pid=w["pid"]))
        elif kind == "cycle":
            key = (w["pid"], frozenset(w.get("cycle") or ()))
            if key in seen_cycles:
                continue
            seen_cycles.add(key)
            ring = [x for x in hang["locks"] if x["pid"] == w["pid"] and x["waiter"] in key[1]]
            ev = [f"thread {x['waiter']} at {x.get('waiter_where') or '?'} waits on {_lock_name(x)}, held by thread "
                  f"{x['owner']}" for x in ring]
            names = sorted({_lock_name(x) for x in ring})
            out.append(Finding(
                rule="lock-cycle", summary=f"threads {', '.join(str(x['waiter']) for x in ring)} deadlock: each waits on a lock "
                f"the other holds ({' and '.join(names)})", evidence=ev,
                fix=f"take {' and '.join(sorted({x.get('symbol') or x['mutex'] for x in ring}))} in one order in every "
                "thread (or hold only one at a time)", pid=w["pid"]))
        elif w.get("locked") and owner:
            ev.append(f"thread {owner} holds it and is at {w.get('owner_where') or '?'}")
            out.append(Finding(
                rule="lock-held", summary=f"{entry} waits on {lock}, held by thread {owner} at {w.get('owner_where') or '?'}", evidence=ev,
                fix=f"see why thread {owner} does not release it (its backtrace is in the hang section)", pid=w["pid"]))
    for sp in hang.get("spins") or []:
        where = sp.get("lines") or sp.get("where") or "?"
        fns = ", ".join(sp.get("functions") or []) or "?"
        ev = [f"thread {sp['tid']}: {round(100 * sp.get('cpu', 0))}% CPU, not in a syscall; {sp.get('samples')} pc "
              f"samples ({', '.join(sorted(set(sp.get('pcs') or [])))}) all in {fns} ({sp.get('library') or '?'})"]
        if sp.get("entry"):
            ev.append(f"entered through {sp['entry']}")
        out.append(Finding(
            rule="spin", summary=f"thread {sp['tid']} spins in {fns} at {where}" + (f", inside {sp['entry']}" if sp.get("entry") else ""),
            evidence=ev, fix="a busy loop that never ends: wait on a condition variable or futex instead, or bound the loop; if "
            "it waits for state another thread sets, see why that thread never sets it", pid=sp["pid"]))
    return out


