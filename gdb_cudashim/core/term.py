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


# What a terminal acts on instead of showing: C0 controls but tab and newline, DEL, the C1
# controls (U+0080-U+009F: 0x9b is CSI on some terminals), and the bidirectional overrides
# and isolates (U+202E makes "exe.txt" read "txt.exe").
_UNPRINTABLE = None


def printable(text: str) -> str:
    """TEXT safe to put on a terminal: each control character written as an escape (\\x1b,
    \\u202e), everything else unchanged. The one place this is done: every screen that shows
    text from a program or a report goes through it; JSON keeps the text as it was."""
    global _UNPRINTABLE
    if _UNPRINTABLE is None:
        import re

        _UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
    if not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)


def printable_tree(value):
    """VALUE (a report: dicts, lists, strings) with every string, keys included, made
    printable; the parts with nothing to escape are the same objects, not copies."""
    if isinstance(value, (dict, list)) and _clean(value):
        return value  # the common case, checked in one pass of C code instead of ~13,000 calls
    return _printable_tree(value)


def _clean(value) -> bool:
    """Nothing in VALUE needs escaping, judged from its JSON text: json writes the C0 controls as
    \\u00XX or \\b \\f \\r (a literal backslash before one of those letters only costs the slow
    path) and leaves DEL, the C1 controls and the bidi marks as they are."""
    import json
    import re

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return False
    return not re.search("\\\\(?:u00[01]|[bfr])|[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]", text)


def _printable_tree(value):
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        items = [(_printable_tree(k), _printable_tree(v)) for k, v in value.items()]
        if all(a is k and b is v for (a, b), (k, v) in zip(items, value.items())):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        items = [_printable_tree(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items)
    return value
