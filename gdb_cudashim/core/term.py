"""The terminal width for argparse help, without argparse asking shutil.

argparse's HelpFormatter imports shutil (and with it bz2, lzma and zlib: ~4 ms) the
first time any parser adds an argument, only to read the width. Pure: never imports gdb.
"""
from __future__ import annotations

import os
import sys


def help_width() -> int:
    """What argparse would use: $COLUMNS, else the terminal's width, else 80; minus 2."""
    try:
        columns = int(os.environ.get("COLUMNS", "") or 0)
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 80
    return max(columns, 40) - 2
