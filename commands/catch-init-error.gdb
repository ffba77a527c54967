# Scripted batch run:  gdb -batch -x commands/catch-init-error.gdb --args PROGRAM [ARGS...]
# Loads gdb-cudashim (found next to this file, via $GDB_CUDASHIM_HOME, or the current
# directory), arms catch-init-error, runs every process to its end, prints the report
# and quits with its status: 0 no failure, 1 failure caught, 2 could not run, 3 timed out.
python
import os, sys
def _gdb_cudashim_home():
    cands = [os.environ.get("GDB_CUDASHIM_HOME", "")]
    try:
        argv = open("/proc/self/cmdline", "rb").read().split(b"\0")
        for i, a in enumerate(argv):
            a = a.decode(errors="replace")
            script = argv[i + 1].decode(errors="replace") if a in ("-x", "--x", "-command", "--command") and i + 1 < len(argv) else None
            if a.startswith(("--command=", "-command=")):
                script = a.split("=", 1)[1]
            if script and script.endswith("catch-init-error.gdb"):
                cands.append(os.path.dirname(os.path.dirname(os.path.abspath(script))))
    except OSError:
        pass
    cands.append(os.getcwd())
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "gdb_cudashim", "gdbinit.py")):
            return os.path.join(c, "gdb_cudashim", "gdbinit.py")
    return None
_init = _gdb_cudashim_home()
if _init is None:
    gdb.write("catch-init-error.gdb: cannot find gdb_cudashim/gdbinit.py; set GDB_CUDASHIM_HOME to the checkout\n", gdb.STDERR)
    gdb.execute("quit 2")
gdb.execute("source " + _init)
end
set print inferior-events off
set print thread-events off
catch-init-error
cuda-run --quit
