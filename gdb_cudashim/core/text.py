"""How values and styles are written in the text reports (run's report, cuda-state, diff): one home,
below every module that renders. Pure: never imports gdb.
"""
from __future__ import annotations


class Style:
    """ANSI styling through pygments' terminal colour names; a no-op when colour is off."""

    def __init__(self, color: bool):
        self.color = color
        if color:
            from pygments.console import colorize
            self._colorize = colorize

    def __call__(self, name: str, text: str) -> str:
        return self._colorize(name, text) if self.color else text


class More:
    """Stands at the end of an array cut short: how many elements were left out.
    JSON (default=str) and the table both show it as "(N more)"."""

    def __init__(self, count: int):
        self.count = count

    def __str__(self):
        return f"({self.count} more)"

    __repr__ = __str__


CELL_WIDTH = 100  # a table cell longer than this is cut, with a marker saying how much


def cell(text: str, width: int = CELL_WIDTH) -> str:
    text = str(text)
    if len(text) <= width:
        return text
    return f"{text[:width]}... ({len(text) - width} more characters)"


def format_value(value) -> str:
    """A global's value as the text report shows it (cuda-state and the run report's shim state)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, More):
        return f"... {value}"
    if isinstance(value, str):
        return repr(value) if not value.startswith("0x") else value
    return str(value)
