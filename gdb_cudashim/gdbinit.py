# Load gdb-cudashim into gdb:   source /path/to/gdb_cudashim/gdbinit.py
# Loading twice is harmless. A missing dependency gives one line, never a traceback.
import os as _os
import sys as _sys

# This file's own path. Not __file__: gdb runs sourced .py files in __main__, and when the
# source comes from another Python script (a ~/.gdbinit.py, a test harness) __main__
# already has that script's __file__, which gdb leaves in place.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(_sys._getframe(0).f_code.co_filename)))
if _root not in _sys.path:
    _sys.path.insert(0, _root)
try:
    if "gdb_cudashim" in _sys.modules:  # sourced again, or after 'python import gdb_cudashim'
        _sys.modules["gdb_cudashim"].load_in_gdb()
    else:
        import gdb_cudashim  # noqa: F401 - importing it inside gdb loads it
except Exception as _exc:  # never a traceback at load time
    import gdb as _gdb

    _gdb.write(f"gdb-cudashim: failed to load: {type(_exc).__name__}: {_exc} (set GDB_CUDASHIM_DEBUG=1 and report it)\n",
               _gdb.STDERR)
    if _os.environ.get("GDB_CUDASHIM_DEBUG"):
        raise
