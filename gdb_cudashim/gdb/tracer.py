"""catch-init-error's tracer: the one object that holds an armed capture's state.

Its parts: the breakpoint handlers (gdb/handlers.py) turn stops into typed events on the
timeline; the capture window and write capture (gdb/capture.py) own the syscall catchpoint;
the dlsym model (core/lookups.py, pure) answers found/NULL from the symbol tables. The
tracer arms and disarms them, follows processes, and says when a run has settled.

Cost model: a ptrace stop costs ~0.1-0.3 ms here. Always armed: the traced CUDA
entry points (called a few hundred times at init at most), dlopen, and the
ggml-init window entry points. Armed only inside a window (the first run of
ggml_cuda_info / ggml_backend_cuda_reg / cudaGetDeviceCount, and a few writes
after a CUDA library fails to load): write/writev syscall capture and dlsym
tracing. Stop handlers record and return; they never print.
"""
from __future__ import annotations

import os

import gdb

from ..core.calls import ABORT_FUNCTIONS, CHECK_FUNCTIONS, SPECS, WINDOW_FUNCTIONS, is_cuda_library
from ..core.lookups import LookupModel
from ..core.procfs import ProcError, parent_pid, read_environ
from ..core.timeline import Load, ProcessEvent, Timeline, relevant_env
from . import located, memory
from .capture import EXIT_FUNCTIONS, KILL_FUNCTIONS, Capture
from .quiet import delete_quietly
from .recording import CALLS_KEPT, UNCAPPED, Recording
from .events import Subscriptions
from .handlers import (LOOKUP_CAP, AbortBreakpoint, CallBreakpoint, CheckBreakpoint, DlerrorBreakpoint,
                       DlopenBreakpoint, ExitBreakpoint, KillBreakpoint, LookupBreakpoint, Return, WindowBreakpoint)

FATAL_STOPS = ("SIGABRT", "SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE")
# every function catch-init-error breaks on
TRACED_FUNCTIONS = tuple(dict.fromkeys([*SPECS, "dlopen", "dlerror", "dlsym", "dlvsym", *WINDOW_FUNCTIONS,
                                        *KILL_FUNCTIONS, *EXIT_FUNCTIONS, *CHECK_FUNCTIONS, *ABORT_FUNCTIONS]))


class Tracer:
    """One armed catch-init-error: its breakpoints, its timeline, the settings it changed."""

    def __init__(self, patterns, follow_children=True, by_name=False):
        self.timeline = Timeline(patterns=tuple(patterns))
        self.follow_children = follow_children
        self.by_name = by_name  # gdb's by-name breakpoints instead of located.Placer's
        self.placer: located.Placer | None = None
        self.breakpoints: list[gdb.Breakpoint] = []
        self.lookup_bps: list[LookupBreakpoint] = []
        self.dlerror_bps: list[DlerrorBreakpoint] = []
        self.capture = Capture(self)
        self.recording = Recording(self)  # lookups and calls recorded inside the process (gdb/recording.py)
        self.lookups = LookupModel(self.note)
        self.pending_dlerror: dict[int, Load] = {}
        self.lookup_count = 0
        self.lookups_armed = False
        self.returns = memory.ReturnAddresses()
        self.libc_locations: dict[int, bool] = {}  # dlsym breakpoint pc -> inside the C library
        self.handle_names: dict[tuple[int, int], str] = {}  # (pid, dlopen handle) -> its l_name
        self.saved_settings: dict[str, str] = {}
        self.pids: dict[int, int] = {}  # pid -> inferior num
        self.exes: dict[int, str] = {}
        # pid -> (wait status or None: unknown, how it is known) of a process gdb ended itself (end_inferior)
        self.collected: dict[int, tuple[int | None, str]] = {}
        self.exec_pending: set[int] = set()  # processes whose program space emptied: an exec (or a re-run)
        self.live_pids: set[int] = set()
        self.internal_errors: list[str] = []
        self.call_counts: dict[tuple[int, str], int] = {}
        self.capped: set[tuple[int, str]] = set()  # (pid, function) no longer traced: past_cap
        self.hang = None
        self.stop_reason = None  # set by the watchdog (gdb/control.py): why the run was stopped
        self.ending = None  # cuda-run is killing the processes, and why
        self._settle_count, self._settle_since = -1, 0.0
        self.timeout = None
        self.on_all_exited = None
        self._events = Subscriptions()

    # ------------------------------------------------------------ arming --
    def arm(self) -> list[str]:
        messages = []
        if self.follow_children:
            messages.append(self._follow_children())
        sigurg = self._sigurg_warning()
        if sigurg:
            messages.append(sigurg)
        recorder = self.recording.arm()
        if recorder:
            messages.append(recorder)
        if self.by_name:
            for name in TRACED_FUNCTIONS:
                self._make(name)
        else:
            self.placer = located.Placer(TRACED_FUNCTIONS, self._make, self.note, wanted=self._wanted)
        self.capture.ensure_catch()
        self._connect()
        if self.placer is not None:
            self.placer.start()
        for inferior in gdb.inferiors():
            if inferior.pid:
                self.seen_pid(inferior.pid, inferior.num)
        return messages

    def _make(self, name, address=None, full=True, more=False) -> list[gdb.Breakpoint]:
        """The breakpoints that trace function NAME (at ADDRESS, or by name). FULL: the calls and
        lookups too (a process that records them itself needs none); MORE: only those, the rest
        exists at ADDRESS already."""
        made = []
        if full and name in SPECS:
            made.append(CallBreakpoint(self, SPECS[name], address))
        if full and name in ("dlsym", "dlvsym"):
            made.append(LookupBreakpoint(self, name, address))
            self.lookup_bps.append(made[-1])
        if not more:
            if name in WINDOW_FUNCTIONS:
                made.append(WindowBreakpoint(self, name, address))
            if name == "dlopen":
                made.append(DlopenBreakpoint(self, address))
            elif name == "dlerror":
                made.append(DlerrorBreakpoint(self, address))
                self.dlerror_bps.append(made[-1])
            elif name in KILL_FUNCTIONS:
                made.append(KillBreakpoint(self, name, address))
            elif name in EXIT_FUNCTIONS:
                made.append(ExitBreakpoint(self, name, address))
            elif name in CHECK_FUNCTIONS:
                made.append(CheckBreakpoint(self, address))
            elif name in ABORT_FUNCTIONS:
                made.append(AbortBreakpoint(self, address))
        self.breakpoints.extend(made)
        return made

    @staticmethod
    def _sigurg_warning() -> str | None:
        """Go (ollama) preempts goroutines with SIGURG: stopping on it makes every run crawl."""
        try:
            row = next(l for l in gdb.execute("info signals SIGURG", to_string=True).splitlines()
                       if l.startswith("SIGURG"))
        except (gdb.error, StopIteration):
            return None
        stop, _print, _pass = row.split()[1:4]
        if stop == "Yes" or _pass == "No":
            return ("catch-init-error: warning: SIGURG is set to stop or not pass; Go programs (ollama) use it "
                    "constantly: 'handle SIGURG nostop noprint pass' (not changed for you)")
        return None

    def _follow_children(self) -> str:
        # displaced-stepping off: with it, gdb steps a thread over a breakpoint out of line while
        # the other processes run; a parent that kills its child then (a discovery runner ended at
        # the end of its pass) left gdb 13 reading a dead thread's registers in the middle of
        # 'continue' ("Couldn't get registers: No such process", the run unfollowable): 4 runs in
        # ~810 of the Go server with three runs and two busy loops at once, 0 in 733 without it.
        # In-line step-overs stop the other threads for the one step instead.
        wanted = {"detach-on-fork": "off", "schedule-multiple": "on", "displaced-stepping": "off"}
        changed = []
        for name, value in wanted.items():
            current = gdb.parameter(name)
            # an auto-boolean (displaced-stepping) reads None for auto
            current = "on" if current is True else "off" if current is False else "auto" if current is None else str(current)
            if current != value:
                self.saved_settings[name] = current
                gdb.execute(f"set {name} {value}", to_string=True)
                changed.append(f"{name} {value} (was {current})")
        if changed:
            return ("catch-init-error: following children: set " + ", ".join(changed)
                    + "; 'catch-init-error --disarm' restores them")
        return ("catch-init-error: following children (detach-on-fork off, schedule-multiple on, displaced-stepping off "
                "already)")

    def _connect(self):
        self._events.connect((gdb.events.exited, self._on_exited),
                             (gdb.events.new_objfile, self._on_new_objfile),
                             (gdb.events.free_objfile, self._on_free_objfile),
                             (gdb.events.clear_objfiles, self._on_clear_objfiles),
                             (gdb.events.stop, self._on_stop))

    # A process that records its own lookups and calls (gdb/recording.py) needs no breakpoint on
    # them: those locations stay disabled in its program space, and gdb stops only for the rare.
    RECORDED_KINDS = (CallBreakpoint, LookupBreakpoint)

    def _wanted(self, progspace, what) -> bool:
        """located.Placer asks: should breakpoint WHAT stop in PROGSPACE's process (or, WHAT a
        (function, address), are call and lookup breakpoints needed there at all)? The recorder
        sees calls that cross from one file to another (PLT bindings, dlsym, cuGetProcAddress);
        an entry point defined in the program itself (a statically linked cudart) is called from
        within it, which only a breakpoint sees."""
        if not isinstance(what, tuple) and not isinstance(what, self.RECORDED_KINDS):
            return True
        pid = next((i.pid for i in gdb.inferiors() if i.pid and i.progspace == progspace), 0)
        if not (pid and self.recording.recorded(pid)):
            return True
        where = what if isinstance(what, tuple) else getattr(what, "placed_at", None)
        if where is None or where[0] in ("dlsym", "dlvsym") or isinstance(what, LookupBreakpoint):
            return False
        return progspace.solib_name(where[1]) is None

    def recorded(self, pid) -> bool:
        return self.recording.recorded(pid)

    def _on_stop(self, event):
        """A fatal signal stop (SIGABRT from ggml's CUDA_CHECK, a SIGSEGV inside cudart): the
        process is still there, so its CUDA files and shim state are read before it dies."""
        if isinstance(event, gdb.SignalEvent) and event.stop_signal in FATAL_STOPS:
            inferior = gdb.selected_inferior()
            if inferior.pid:
                self._record_crash(inferior.pid, event.stop_signal)
                self.snapshot(inferior.pid, f"at its {event.stop_signal}")

    def _record_crash(self, pid, signal_name):
        """Where the thread that got SIGNAL_NAME is: its frames and the faulting address."""
        from ..core.timeline import Crash, Frame

        self.recording.drain(pid)  # what it recorded before it faulted comes first
        earlier = [c for c in self.timeline.crashes if c.pid == pid and c.signal == signal_name]
        if len(earlier) >= 8:
            return  # a program that handles its own SIGSEGVs (a JVM): enough of them
        # each one is kept: the rules read the last before the process died of it
        address = sender = code = None
        try:
            code = int(gdb.parse_and_eval("$_siginfo.si_code"))
            if code <= 0:  # SI_USER, SI_TKILL...: sent, not a fault
                sender = int(gdb.parse_and_eval("$_siginfo._sifields._kill.si_pid"))
            elif signal_name in ("SIGSEGV", "SIGBUS") and code < 0x80:  # SI_KERNEL (a wild, non-canonical
                address = int(gdb.parse_and_eval("$_siginfo._sifields._sigfault.si_addr"))  # pointer) has none
        except (gdb.error, ValueError):
            pass
        frames = [Frame(function=f, library=lib, pc=pc, where=where) for f, lib, pc, where in memory.backtrace(24)]
        tl = self.timeline
        tl.add(Crash(seq=tl.next_seq(), pid=pid, tid=memory.ptid()[1], signal=signal_name, address=address,
                     sender=sender, code=code, backtrace=frames))

    def disarm(self) -> list[str]:
        messages = []
        if self.placer is not None:
            self.placer.stop()
            self.placer = None
        self._events.disconnect_all()
        delete_quietly(self.breakpoints)
        self.capture.delete()
        delete_quietly([bp for bp in gdb.breakpoints() if isinstance(bp, Return)])  # returns still pending
        self.breakpoints.clear()
        self.recording.disarm()
        for name, value in self.saved_settings.items():
            gdb.execute(f"set {name} {value}", to_string=True)
            messages.append(f"restored {name} {value}")
        self.saved_settings.clear()
        return messages

    def arm_lookups(self):
        if not self.lookups_armed and self.lookup_count < LOOKUP_CAP:
            self.lookups_armed = True
            for bp in self.lookup_bps:
                bp.enabled = True

    def disarm_lookups(self):
        if self.lookups_armed:
            self.lookups_armed = False
            for bp in self.lookup_bps:
                if bp.is_valid():
                    bp.enabled = False

    def set_dlerror_capture(self, on: bool):
        for bp in self.dlerror_bps:
            if bp.is_valid() and bp.enabled != on:
                bp.enabled = on

    def failed_load(self, pid, load):
        self.snapshot(pid, "at a failed load")
        self.pending_dlerror[pid] = load
        self.set_dlerror_capture(True)
        self.capture.after_failed_load(pid)

    def past_cap(self, pid, function, bp) -> tuple[bool, bool]:
        """(skip this call, make a real stop): skip when PID has made more than CALLS_KEPT calls
        of FUNCTION outside its init window. The first time, BP's location in this process goes;
        gdb 13 applies that to the other threads only at a real stop (it resumes just the
        stopped thread after a "don't stop"), so that once the stop is real."""
        key = (pid, function)
        count = self.call_counts[key] = self.call_counts.get(key, 0) + 1
        if count <= CALLS_KEPT or function in UNCAPPED or self.capture.window_depth.get(pid):
            return False, False
        if key in self.capped:
            return True, False
        self.capped.add(key)
        self.note(f"pid {pid} called {function} more than {CALLS_KEPT} times after its CUDA init: the first "
                  f"{CALLS_KEPT} are in the report, the later ones were not traced")
        return True, self.retire(bp)

    def retire(self, bp) -> bool:
        """BP no longer stops in the selected process (located.Placer.retire); True when a real
        stop is needed for that to reach its other threads (gdb 13 resumes only the stopped
        thread after a "don't stop")."""
        if getattr(bp, "placed_at", None) is None or self.placer is None:
            return False  # placed by name (--by-name): it stays
        inferior = gdb.selected_inferior()
        self.placer.retire(inferior.progspace, bp)
        return len(inferior.threads()) > 1

    def snapshot(self, pid, when):
        """PID's CUDA files and its shims' g_* globals, once (gdb/shimstate.py)."""
        from . import shimstate

        self.recording.drain(pid)
        try:
            shimstate.snapshot(self, pid, when)
        except Exception as exc:  # a bonus: never let it break the trace
            self.note_internal(f"snapshot: {type(exc).__name__}: {exc}")

    # ---------------------------------------------------------- lookups --
    def handle_library(self, inferior, pid, handle) -> str | None:
        """The library a dlsym handle names (struct link_map's l_name), cached until the
        next library load or unload (a freed handle's address may be reused)."""
        if handle == 0:
            return "RTLD_DEFAULT"
        if handle == memory.MASK64:
            return "RTLD_NEXT"
        key = (pid, handle)
        name = self.handle_names.get(key)
        if name is None:
            name_ptr = memory.read_u64(inferior, handle + 8)
            name = memory.read_cstring(inferior, name_ptr) if name_ptr else None
            if name is not None:
                self.handle_names[key] = name
        return name

    def caller_library(self, inferior, pc, rsp) -> str | None:
        ret = self.returns.caller_pc(inferior, pc, rsp)
        return memory.solib(ret) if ret else None

    def lookup_answer(self, inferior, lookup, pc) -> tuple[bool, bool]:
        """(watch LOOKUP's return?, compare it with the symbol tables?): core/lookups.py."""
        def loaded():
            return [o.filename for o in inferior.progspace.objfiles() if o.filename and o.filename.startswith("/")]

        return self.lookups.answer(lookup, self._libc_dlsym(pc), loaded)

    def _libc_dlsym(self, pc) -> bool:
        known = self.libc_locations.get(pc)
        if known is None:
            name = os.path.basename(memory.solib(pc) or "")
            known = self.libc_locations[pc] = name.startswith(("libc.so", "libdl.so", "ld-linux"))
        return known

    # ------------------------------------------------------- processes --
    def seen_pid(self, pid, num=None):
        if not pid or pid in self.pids:
            return
        if num is None:
            inf = gdb.selected_inferior()
            num = inf.num
        self.pids[pid] = num
        self.live_pids.add(pid)
        parent = parent_pid(pid)
        exe = cwd = None
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            cwd = os.readlink(f"/proc/{pid}/cwd")
            env = read_environ(pid)
        except (OSError, ProcError):
            env = {}
        if exe:
            self.exes[pid] = exe
        else:  # gone already (killed right after its start): the program gdb knows it ran
            inf = next((i for i in gdb.inferiors() if i.num == num), None)
            try:
                exe = inf.progspace.filename if inf is not None else None
            except (gdb.error, RuntimeError):
                exe = None
        self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="start", detail=exe or "",
                                       parent=parent, env=relevant_env(env), cwd=cwd))

    def _on_free_objfile(self, _event):
        self.handle_names.clear()
        memory.forget_maps()

    def _on_clear_objfiles(self, event):
        """A program space emptied (an exec, a re-run): its process is classified anew."""
        self.recording.forget_space(event.progspace)
        for inferior in gdb.inferiors():
            if inferior.pid and inferior.progspace == event.progspace:
                self.recording.exec_seen(inferior.pid)
                self.exec_pending.add(inferior.pid)  # the same program again counts: ollama re-executes itself

    def _on_new_objfile(self, event):
        self.handle_names.clear()
        memory.forget_maps()
        try:
            inferior = gdb.selected_inferior()
            if inferior.pid:
                self.seen_pid(inferior.pid, inferior.num)
                self._check_exec(inferior.pid)
            filename = getattr(event.new_objfile, "filename", None)
            if inferior.pid and self.recording.library:
                self._classify(inferior)
            if is_cuda_library(filename):
                self.capture.ensure_catch()
                self._loaded(inferior.pid, filename)
        except gdb.error as exc:
            self.note_internal(f"new_objfile: {exc}")

    def _classify(self, inferior):
        """Once ld.so has loaded the process's libraries, whether it records in-process; the
        breakpoints it no longer needs are then disabled there, and gdb gets the recorder's
        symbols (to unwind through its wrappers)."""
        rec = self.recording
        decided = inferior.pid in rec.how
        if rec.recorded(inferior.pid):
            rec.add_symbols(inferior.progspace, inferior.pid)
        if not decided and inferior.pid in rec.how and self.placer is not None:
            self.placer.reconcile()

    def _loaded(self, pid, filename):
        """A CUDA library mapped: a dlopen of it whose return was not seen (a call through
        cgo, a longjmp) did succeed."""
        name = os.path.basename(filename)
        for load in self.timeline.loads:
            if load.pid == pid and load.ok is None and os.path.basename(load.path) == name:
                load.ok, load.resolved = True, filename

    def _check_exec(self, pid):
        """A followed child that exec'd: record the new program once."""
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return
        pending = pid in self.exec_pending
        self.exec_pending.discard(pid)
        if self.exes.get(pid) is not None and (pending or self.exes[pid] != exe):
            from .commands.cuda_patch import apply_env

            apply_env(pid, self.note)  # run --what-if's env: patches, before the new program runs
            self.recording.exec_seen(pid)
            self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="exec", detail=exe))
            start = self.timeline.process_start(pid)
            if start is not None:
                start.detail = exe
                try:  # a wrapper (sh -c 'LD_PRELOAD=... exec prog', an entrypoint) set it for the new program
                    start.env = relevant_env(read_environ(pid))
                    start.cwd = os.readlink(f"/proc/{pid}/cwd")
                except (OSError, ProcError):
                    pass
        self.exes[pid] = exe

    def _on_exited(self, event):
        inferior = getattr(event, "inferior", None)
        num = inferior.num if inferior is not None else None
        pid = next((p for p, n in self.pids.items() if n == num and p in self.live_pids), None)
        if pid is None:
            return
        self.record_exit(pid, getattr(event, "exit_code", None))

    def end_inferior(self, inferior, how: str, status: int | None, detail: str = "") -> str | None:
        """gdb ends INFERIOR itself ('kill' or 'detach' inferiors N), and its exit is recorded with
        wait STATUS (the one its parent reaps; None: unknown) and DETAIL: gdb reports a kill or a
        detach as an exit with no code, its exited event possibly first, which reads them here.
        None, or gdb's error (nothing recorded then: gdb follows the process to its end)."""
        pid = inferior.pid
        self.collected[pid] = (status, detail)
        try:
            # 'kill|detach inferiors N': no confirmation query, and no frame printed (that reads registers)
            gdb.execute(f"{how} inferiors {inferior.num}", to_string=True)
        except (gdb.error, RuntimeError) as exc:
            self.collected.pop(pid, None)
            return str(exc)
        if pid in self.live_pids:  # the exited event did not come: recorded here
            self.record_exit(pid)
        return None

    def record_exit(self, pid, code=None):
        """PID ended: its last records, its exit event, and the run ends with the last process."""
        self.live_pids.discard(pid)
        memory.forget_maps(pid)
        self.recording.drain(pid, final=True)  # its last records, before its exit
        if pid in self.collected:  # gdb ended it, knowing the status its parent reaps (end_inferior)
            status, detail = self.collected.pop(pid)
            sig = status & 0x7F if status is not None else 0
            self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="exit",
                                           exit_code=status >> 8 if status is not None and not sig else None,
                                           signal=_signal_name(sig) if sig else None, detail=detail))
        elif self.ending is not None:  # we killed it (a timeout, an interrupt): $_exitsignal is not its
            self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="exit", signal="SIGKILL",
                                           detail=f"ended by gdb-cudashim ({self.ending})"))
        else:
            self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="exit",
                                           exit_code=int(code) if code is not None else None,
                                           signal=None if code is not None else _exit_signal()))
        # a pid may be reused by a later inferior
        del self.pids[pid]
        self.capture.forget(pid)
        if not self.live_pids and self.on_all_exited is not None:
            self.on_all_exited()

    # --------------------------------------------------------- settling --
    def settled(self, quiet_s: float) -> str | None:
        """"settled" once CUDA init is over in every traced process and nothing CUDA has
        happened for QUIET_S seconds, while a process still runs (a server). Never while a
        thread is inside an init window: that is a hang. Called from the watchdog thread:
        reads only."""
        import time

        if not self.live_pids or not (self.capture.windows_done or self.timeline.loads):
            return None
        now = time.monotonic()
        count = len(self.timeline.events) + self.recording.activity()  # what processes record themselves too
        if any(self.capture.window_depth.values()) or count != self._settle_count:
            self._settle_count, self._settle_since = count, now
            return None
        return "settled" if now - self._settle_since >= quiet_s else None

    # ------------------------------------------------------------ notes --
    def note(self, text):
        if text not in self.timeline.notes:
            self.timeline.notes.append(text)

    def note_internal(self, text):
        if len(self.internal_errors) < 20:
            self.internal_errors.append(text)


def _exit_signal() -> str | None:
    """The signal that ended the process gdb just saw go ($_exitsignal; gdb sets it when a
    process is killed, instead of $_exitcode)."""
    try:
        value = gdb.parse_and_eval("$_exitsignal")
        if value.type.code == gdb.TYPE_CODE_VOID:
            return None
        number = int(value)
    except (gdb.error, ValueError):
        return None
    return _signal_name(number)


def _signal_name(number: int) -> str:
    """SIGKILL for 9; "signal N" for a number Python has no name for."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
