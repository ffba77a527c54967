"""gdb-cudashim. Imported inside gdb (`python import gdb_cudashim`) it loads the extension, once,
as gdbinit.py does; imported anywhere else (the CLI, the tests) it does nothing more."""
import sys as _sys


def load_in_gdb():
    """Register the gdb commands (a no-op once loaded); a failure is one line, never a traceback."""
    import os

    import gdb

    try:
        from .gdb import loader

        loader.load()
    except Exception as exc:  # never a traceback at load time
        gdb.write(f"gdb-cudashim: failed to load: {type(exc).__name__}: {exc} (set GDB_CUDASHIM_DEBUG=1 and report it)\n",
                  gdb.STDERR)
        if os.environ.get("GDB_CUDASHIM_DEBUG"):
            raise


if "gdb" in _sys.modules:  # gdb's own Python has imported its gdb module before any script runs
    load_in_gdb()
