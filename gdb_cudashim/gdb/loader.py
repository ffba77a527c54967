"""Registers the commands once per gdb; a second load only says it is loaded."""
from __future__ import annotations

import os

import gdb

from .. import deps

_loaded = False


# What a batch run (gdb-cudashim run / attach) uses: it sets $gdb_cudashim_batch before
# sourcing gdbinit.py and skips importing and registering the rest (~20 ms of each run).
BATCH_MODULES = ("catch_init_error", "cuda_run", "cuda_patch")  # cuda_patch: run --what-if's simulations


def _program_env_without_launcher():
    """In the gdb-for-pwndbg wheel's gdb, started by its launcher: PYTHONHOME, PYTHONPATH and
    PYTHONNOUSERSITE are gdb's own Python's, not the program's (a Python program that inherits them
    cannot start a subprocess). The user's values are gone by now; gdb-cudashim's CLI restores them
    after this runs."""
    from .. import gdbs

    if gdbs.set_by_launcher():
        for name in gdbs.LAUNCHER_ENV:
            gdb.execute(f"unset environment {name}", to_string=True)


def _index_cache():
    """A batch run's gdb keeps its DWARF index in gdb-cudashim's cache (cachedir.gdb_index, named by
    the CLI in $gdb_cudashim_index_cache): never the user's own gdb's setting."""
    where = gdb.convenience_variable("gdb_cudashim_index_cache")
    if where is None:
        return
    try:
        gdb.execute(f"set index-cache directory {where.string()}", to_string=True)
        try:
            gdb.execute("set index-cache enabled on", to_string=True)  # gdb 13 and later
        except gdb.error:
            gdb.execute("set index-cache on", to_string=True)
    except gdb.error:
        pass  # a gdb without an index cache reads debug info as it always did


def load():
    global _loaded
    if _loaded:
        return
    batch = gdb.convenience_variable("gdb_cudashim_batch") is not None
    _program_env_without_launcher()
    if batch:
        _index_cache()
    if gdb.convenience_variable("_gdb_cudashim_driving") is None:
        gdb.set_convenience_variable("_gdb_cudashim_driving", 0)  # our breakpoints' commands read it (capture.RESUME)
    if batch and os.environ.get("GDB_CUDASHIM_SITE"):
        deps.add_site_dirs()
        still_missing = []
    else:
        still_missing = deps.ensure_path()
    if not batch:
        from .commands import cuda_doctor  # needs nothing but gdb

        cuda_doctor.CudaDoctor()
    if still_missing:
        gdb.write(f"gdb-cudashim: missing Python packages for gdb's Python: {', '.join(still_missing)}; "
                  f"{deps.fix_hint(still_missing)} (details: cuda-doctor)\n", gdb.STDERR)
        _loaded = True
        return
    import importlib

    from . import settings
    from .command import REGISTRY

    settings.register()
    from .commands import MODULES

    for module in BATCH_MODULES if batch else MODULES:
        importlib.import_module(f"{__package__}.commands.{module}")
    for name, cls in REGISTRY.items():
        if name != "cuda-doctor":
            cls(full_help=not batch)
    _loaded = True
