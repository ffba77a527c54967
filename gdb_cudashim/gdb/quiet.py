"""Run Python with gdb's own output captured (pending-breakpoint chatter, set messages)."""
from __future__ import annotations

import gdb

_job = None


def _call():
    global _job
    fn, _job = _job, None
    try:
        fn[1] = fn[0]()
    except BaseException as exc:  # handed back to quietly()
        fn[2] = exc


def quietly(fn):
    global _job
    box = [fn, None, None]
    _job = box
    gdb.execute("python __import__('gdb_cudashim.gdb.quiet', fromlist=['_call'])._call()", to_string=True)
    if box[2] is not None:
        raise box[2]
    return box[1]


def delete_quietly(breakpoints) -> None:
    """Delete each breakpoint still valid; one gdb already dropped (its program gone) is no error."""
    for bp in breakpoints:
        try:
            if bp.is_valid():
                bp.delete()
        except (RuntimeError, gdb.error):
            pass
