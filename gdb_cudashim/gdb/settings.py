"""gdb-cudashim's settings, as gdb parameters (`set cudashim ...`, `show cudashim ...`): one home
for what more than one command reads, never the same option repeated on each command."""
from __future__ import annotations

import os

import gdb

RECORDER_OFF_ENV = "GDB_CUDASHIM_NO_RECORDER"  # 1: the recorder starts off (the CLI's --no-recorder, tests)


class _Prefix(gdb.Command):
    def __init__(self, verb: str):
        super().__init__(f"{verb} cudashim", gdb.COMMAND_SUPPORT, gdb.COMPLETE_NONE, True)


class Recorder(gdb.Parameter):
    """Record lookups and CUDA calls inside the program (an rtld-audit library in its LD_AUDIT).
On (the default): gdb stops only for what is rare (the init window's writes, dlopen, crashes,
kills, hangs). Off: every dlsym and every traced CUDA call is a debugger stop, as for a process
that cannot record (attached, setuid, static). Takes effect at the next catch-init-error."""

    set_doc = "Set whether lookups and CUDA calls are recorded inside the program."
    show_doc = "Show whether lookups and CUDA calls are recorded inside the program."

    def __init__(self):
        super().__init__("cudashim recorder", gdb.COMMAND_SUPPORT, gdb.PARAM_BOOLEAN)
        self.value = os.environ.get(RECORDER_OFF_ENV) != "1"

    def get_show_string(self, svalue):
        return f"Recording lookups and CUDA calls inside the program is {svalue}."


_made = False


def register() -> None:
    global _made
    if not _made:
        _Prefix("set")
        _Prefix("show")
        Recorder()
        _made = True


def recorder_on() -> bool:
    try:
        return bool(gdb.parameter("cudashim recorder"))
    except (gdb.error, RuntimeError):
        return os.environ.get(RECORDER_OFF_ENV) != "1"
