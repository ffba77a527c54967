"""The in-process recorder, from gdb's side: put shim/audit.c into the program's LD_AUDIT, tell
which processes record their own lookups and calls (and so need no breakpoint on them), and
bring their records onto the timeline (core/recorder.py reads the rings).

Why: a debugger stop costs ~0.1-0.3 ms plus its handler. One per dlsym and two per CUDA call
made a real interposer 1,800x slower and cudart's ~440 cuGetProcAddress_v2 queries 2,300+
stops. In the process a record costs ~0.1-0.3 us. gdb still stops for what is rare and needs a
debugger: the init window and the writes in it, dlopen, crashes, kills, hangs, cuda-patch.

Where the recorder cannot go, the breakpoints of before stay, per process: an attached process
(started without it), a setuid program (ld.so ignores LD_AUDIT), a static program, a child whose
parent stripped LD_AUDIT from its environment. The report says which way each process was seen.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import gdb

from ..core import recorder
from ..core.procfs import ProcError, read_environ

# Calls of one CUDA function by one process after its init that are recorded; later ones are not
# traced there (ggml's memory fitting asks cudaMemGetInfo and the device properties thousands
# of times: a stop each, with every thread of a server stopped). Inside an init window, and for
# cudart's own entry-point lookups (~440 per init, bounded), every call counts.
CALLS_KEPT = 64
UNCAPPED = ("cuGetProcAddress_v2", "cuGetProcAddress")
IN_PROCESS = "in-process"
LIBRARY_ENV = "GDB_CUDASHIM_AUDIT_LIB"  # another build of the recorder (tests)
PARENT_ENV = "GDB_CUDASHIM_RING_PARENT"  # where the CLI wants the rings (its own temporary directory)


def library_path() -> str | None:
    path = os.environ.get(LIBRARY_ENV)
    if path:
        return path if os.path.isfile(path) else None
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(here, "shim", "build", recorder.AUDIT_LIBRARY)
    return path if os.path.isfile(path) else None


def show_env(name: str) -> str | None:
    """The program's NAME as gdb will give it (`show environment`), None when unset."""
    try:
        text = gdb.execute(f"show environment {name}", to_string=True).strip()
    except gdb.error:
        return None
    prefix = f"{name} = "
    return text[len(prefix):] if text.startswith(prefix) else None


def set_env(name: str, value: str | None) -> None:
    if value is None:
        gdb.execute(f"unset environment {name}", to_string=True)
    else:
        gdb.execute(f"set environment {name}={value}", to_string=True)


class Recording:
    """One tracer's recorder: the ring directory, what it set in the program's environment, the
    readers of every ring, and how each process is recorded."""

    def __init__(self, tracer):
        self.tracer = tracer
        self.library: str | None = None
        self.dir: str | None = None
        self.saved_env: dict[str, str | None] = {}
        self.readers: dict[str, recorder.Reader] = {}
        self.how: dict[int, str] = {}  # pid -> IN_PROCESS, or why it is traced by breakpoints
        self.symbols_added: set = set()  # program spaces given the recorder's symbols
        self.finished: set[str] = set()  # rings read to their end (the process image is gone)
        self.rings: dict[int, list[str]] = {}  # pid -> the rings it writes (mapped)
        self.users: dict[str, set[int]] = {}  # ring -> the pids that write it
        self.counts: dict[tuple[int, str], int] = {}  # (pid, function) -> calls after its init
        self._exit_hook = False
        self.attached: set[int] = set()
        self.searches_taken: dict[str, int] = {}  # ring -> its ld.so searches already on the timeline

    # ------------------------------------------------------------- arming --
    def arm(self) -> str | None:
        from .settings import recorder_on

        if not recorder_on():
            return ("catch-init-error: the in-process recorder is off (set cudashim recorder): every lookup and "
                    "CUDA call is a debugger stop")
        self.library = library_path()
        if self.library is None:
            return ("catch-init-error: the in-process recorder is not built (make shim): every lookup and call "
                    "is a debugger stop")
        if ":" in self.library:
            self.library = None
            return "catch-init-error: the recorder's path holds ':' (LD_AUDIT cannot name it): breakpoints only"
        self.attached = {i.pid for i in gdb.inferiors() if i.pid}  # running before we came: no LD_AUDIT for them
        parent = os.environ.get(PARENT_ENV)
        try:
            self.dir = tempfile.mkdtemp(prefix="gdb-cudashim-rings-", dir=parent if parent and os.path.isdir(parent)
                                        else None)
        except OSError as exc:
            self.library = None
            return f"catch-init-error: no directory for the recorder ({exc.strerror}): breakpoints only"
        for name in ("LD_AUDIT", recorder.RING_DIR_ENV):
            self.saved_env[name] = show_env(name)
        theirs = self.saved_env["LD_AUDIT"]
        set_env("LD_AUDIT", self.library + (":" + theirs if theirs else ""))
        set_env(recorder.RING_DIR_ENV, self.dir)
        exiting = getattr(gdb.events, "gdb_exiting", None)  # gdb 12+: a batch run ends with quit, never a disarm
        if exiting is not None and not self._exit_hook:
            exiting.connect(lambda _event: self.remove())
            self._exit_hook = True
        import atexit

        atexit.register(self.remove)
        return ("catch-init-error: lookups and CUDA calls are recorded inside the program (LD_AUDIT="
                f"{os.path.basename(self.library)}); 'catch-init-error --disarm' takes it out")

    def disarm(self) -> None:
        for name, value in self.saved_env.items():
            try:
                set_env(name, value)
            except gdb.error:
                pass
        self.saved_env.clear()
        self.remove()

    def remove(self) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    # ---------------------------------------------------------- processes --
    def recorded(self, pid: int) -> bool:
        """PID records its own lookups and calls: the recorder is mapped and its ring exists."""
        how = self.how.get(pid)
        if how is None:
            how = self._classify(pid)
            if how is None:
                return False  # ld.so has not loaded its libraries yet: asked again at the next load
            self.how[pid] = how
            if how != IN_PROCESS and self.library:
                self.tracer.note(f"pid {pid}: {how}; its lookups and CUDA calls were seen with debugger stops")
        return how == IN_PROCESS

    def _classify(self, pid: int) -> str | None:
        if not self.library or not self.dir:
            return "no in-process recorder"
        try:
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
        except OSError:
            return "its memory map could not be read"
        mapped = recorder.AUDIT_LIBRARY in maps
        # the ring a process writes is the one it maps: its own, or its parent's after a fork
        # without exec (both write into it; every record carries its pid)
        rings = sorted({line.split(maxsplit=5)[5].strip() for line in maps.splitlines()
                        if self.dir in line and line.rstrip().endswith(".ring")} & set(recorder.ring_paths(self.dir)))
        if mapped and rings:
            for path in rings:
                self.users.setdefault(path, set()).add(pid)
            self.rings[pid] = rings
            return IN_PROCESS
        if pid in self.attached:
            return "attached while running (only a program gdb starts can take the recorder)"
        if "/libc.so" not in maps and "/libc-" not in maps:
            return None  # just exec'd: ld.so (which loads an audit library first) has not run yet
        try:
            env = read_environ(pid)
        except (OSError, ProcError):
            env = {}
        if self.library not in env.get("LD_AUDIT", ""):
            return "started without the recorder in LD_AUDIT (its parent set its environment)"
        if mapped:
            return "the recorder is loaded but made no ring"
        return "ld.so did not load the recorder (a static or setuid program)"

    def exec_seen(self, pid: int) -> None:
        """PID exec'd: a new image, classified anew; the rings of its old image are complete once
        no other process writes them."""
        self.how.pop(pid, None)
        for path in self.rings.pop(pid, ()):
            users = self.users.get(path, set())
            users.discard(pid)
            if not users:
                self._drain_one(path, True)

    def add_symbols(self, progspace, pid: int) -> None:
        """A gdb that does not list the objects of an audit namespace: give it the recorder's symbols
        (and so its unwind tables) in PID's program space, so that a backtrace through a wrapped
        call walks through the wrapper (memory.backtrace then hides its frames)."""
        if progspace in self.symbols_added or not self.library:
            return
        self.symbols_added.add(progspace)
        if any(o.filename == self.library for o in progspace.objfiles()):
            return  # gdb lists the audit namespace itself (glibc's r_debug_extended; Debian's gdb 13 does)
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip() == self.library and int(parts[2], 16) == 0:
                        base = int(parts[0].split("-")[0], 16)
                        gdb.execute(f"with confirm off -- add-symbol-file {self.library} -o {base:#x}", to_string=True)
                        return
        except (OSError, gdb.error, ValueError) as exc:
            self.tracer.note_internal(f"recorder symbols: {exc}")

    def forget_space(self, progspace) -> None:
        self.symbols_added.discard(progspace)

    # ------------------------------------------------------------ records --
    def drain(self, pid: int | None = None, final: bool = False) -> None:
        """Bring what the rings (PID's, or all) hold onto the timeline. FINAL: PID is gone; a
        ring no live process writes any more is read to its end."""
        if not self.dir:
            return
        paths = recorder.ring_paths(self.dir) if pid is None else sorted(
            set(recorder.ring_paths(self.dir, pid)) | set(self.rings.get(pid, ())))
        if final and pid is not None:
            self.rings.pop(pid, None)
        for path in paths:
            users = self.users.get(path)
            if final and users is not None:
                users.discard(pid)
            self._drain_one(path, final and not users)

    def _drain_one(self, path: str, final: bool) -> None:
        if path in self.finished:
            return
        reader = self.readers.get(path)
        try:
            if reader is None:
                reader = self.readers[path] = recorder.Reader(recorder.Ring(path))
            events = reader.read(final)
        except (OSError, recorder.RingError) as exc:
            self.tracer.note_internal(f"ring {os.path.basename(path)}: {exc}")
            return
        tl = self.tracer.timeline
        taken = self.searches_taken.get(path, 0)
        tl.searches.extend(reader.searches[taken:])
        self.searches_taken[path] = len(reader.searches)
        inferiors = {i.pid: i.num for i in gdb.inferiors() if i.pid}
        for t_ns, event in events:
            if event.pid not in self.tracer.pids and event.pid not in inferiors:
                continue  # a process gdb does not follow (--no-follow-children) still records: not ours to report
            if event.kind == "call" and self._past_cap(event, t_ns):
                continue
            self.tracer.seen_pid(event.pid, inferiors.get(event.pid))
            event.seq = tl.next_seq()
            tl.add(event, t_ns)
        if final:
            self.finished.add(path)
            self._notes(reader)

    def _past_cap(self, call, t_ns: int) -> bool:
        """The tracer's rule for calls after init (tracer.CALLS_KEPT): ggml's memory fitting asks
        the same device queries thousands of times; the first are kept, the rest counted."""

        key = (call.pid, call.function)
        count = self.counts[key] = self.counts.get(key, 0) + 1
        closed = self.tracer.capture.closed_at.get(call.pid)
        if count <= CALLS_KEPT or closed is None or t_ns < closed or call.function in UNCAPPED:
            return False
        if (call.pid, call.function, "noted") not in self.counts:
            self.counts[(call.pid, call.function, "noted")] = 1
            self.tracer.note(f"pid {call.pid} called {call.function} more than {CALLS_KEPT} times after its CUDA "
                             f"init: the first {CALLS_KEPT} are in the report, the later ones were counted only")
        return count > CALLS_KEPT

    def _notes(self, reader: recorder.Reader) -> None:
        pid = reader.ring.pid
        try:
            head = reader.ring.header()
        except OSError:
            return
        for name, (made, kept) in reader.calls_made().items():
            self.tracer.note(f"pid {pid} called {name} {made} times: the first {kept} are in the report")
        if head["dropped"]:
            self.tracer.note(f"pid {pid}: {head['dropped']} records did not fit the recorder's ring and are missing")
        if head["unwrapped"]:
            self.tracer.note(f"pid {pid}: {head['unwrapped']} bindings were left unrecorded (no free wrapper)")

    def activity(self) -> int:
        """How much all rings hold: grows while any recorded process makes CUDA calls or lookups.
        Read by the watchdog thread: files only, no gdb."""
        total = 0
        for reader in list(self.readers.values()):
            try:
                total += reader.ring.header()["cursor"]
            except OSError:
                pass
        if self.dir:
            total += len(recorder.ring_paths(self.dir))
        return total

    def finish(self) -> None:
        """Every ring read as far as it goes (the report is being built): to its end where its
        process image is gone (exited, or exec'd since: a newer ring of the same pid)."""
        if not self.dir:
            return
        paths = recorder.ring_paths(self.dir)
        newest = {recorder.ring_pid(p): p for p in paths}
        live = set(self.tracer.live_pids)
        for path in paths:
            pid = recorder.ring_pid(path)
            self._drain_one(path, final=pid not in live or newest.get(pid) != path)
