"""The one root object of this gdb's gdb-cudashim. A module of its own, importing nothing of
ours, so that every part (the tracer's breakpoints included) can reach it without a circle."""
from __future__ import annotations


class State:
    """The one root object of this gdb's gdb-cudashim (GEF's way): the armed tracer, the live
    cuda-patch patches, and how the report is delivered. Nothing else holds module state."""
    tracer = None  # the armed gdb.tracer.Tracer, or None
    patches: dict = {}  # cuda-patch id -> Patch
    json_path: str | None = None
    auto_report = True
    driving = False  # cuda-run prints the report itself
