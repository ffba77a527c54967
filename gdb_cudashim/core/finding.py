"""A finding: what the rules conclude, with its evidence and its fix. Every rule family builds
these (with keywords) and the report reads them; it sits below both. Pure: never imports gdb.
"""
from __future__ import annotations

import os

from .record import factory, record


@record
class Finding:
    rule: str
    summary: str
    evidence: list[str] = factory(list)
    fix: str = ""
    pid: int | None = None
    explains: int | None = None  # the cudaError this cause produces: ranked first when ggml printed it


def base(path: str | None) -> str:
    """A file's name for a sentence; "?" where none is known."""
    return os.path.basename(path) if path else "?"
