"""Colour decisions inside gdb: on when gdb styles output, off under NO_COLOR."""
from __future__ import annotations

import os

import gdb


def color_enabled(flag: str = "auto") -> bool:
    if flag == "always":
        return True
    if flag == "never" or os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(gdb.parameter("style enabled"))
    except (gdb.error, RuntimeError):
        return False


def write_lines(lines):
    gdb.write("\n".join(lines) + "\n")
