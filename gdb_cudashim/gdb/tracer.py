"""catch-init-error's machinery: gdb breakpoints and catchpoints -> typed timeline events.

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

from ..core import dynsym
from ..core.calls import KEY_LOOKUPS, SPECS, WINDOW_FUNCTIONS, ARG_REGISTERS, is_cuda_library, is_cuda_symbol
from ..core.procfs import ProcError, parent_pid, read_environ
from ..core.timeline import Call, Frame, Load, Lookup, ProcessEvent, Timeline, Write, relevant_env
from ..core.codes import uuid_str
from . import located, memory
from .events import Subscriptions

# every function catch-init-error breaks on
TRACED_FUNCTIONS = tuple(dict.fromkeys([*SPECS, "dlopen", "dlerror", "dlsym", "dlvsym", *WINDOW_FUNCTIONS]))

SYS_WRITE, SYS_WRITEV = 1, 20
# a process sending a signal: caught with the writes, so a parent's SIGKILL of its child is
# seen before it lands (x86-64 numbers; the catchpoint takes the names)
KILL_SYSCALLS = {62: "kill", 200: "tkill", 234: "tgkill", 424: "pidfd_send_signal"}
FATAL_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 6: "SIGABRT", 9: "SIGKILL", 15: "SIGTERM"}
ENOSYS = 38
WRITES_AFTER_FAILED_LOAD = 16  # the window after a CUDA library fails to load
WRITES_AFTER_FAILED_INIT = 64  # after a failed init with no error text yet: the log thread's writes
LOOKUP_CAP = 20000  # stop tracing lookups after this many (a pathological program)


class _Handler:
    """Mix-in: count the stop, never let an exception escape into gdb."""

    tracer: "Tracer"

    def stop(self):  # noqa: D401 - gdb's API
        tracer = self.tracer
        tracer.timeline.stops += 1
        try:
            return bool(self.handle())  # True only where a real stop is needed (see _WindowBreakpoint)
        except Exception as exc:  # a bug here must not stop the user's program
            tracer.note_internal(f"{type(self).__name__}: {type(exc).__name__}: {exc}")
        return False

    def handle(self):
        raise NotImplementedError


class _Return(_Handler, gdb.FinishBreakpoint):
    """The return of one traced call: reads the result and out-parameters."""

    def __init__(self, tracer, frame, on_return):
        self.tracer = tracer
        self.on_return = on_return
        super().__init__(frame, internal=True)
        self.silent = True

    def handle(self):
        self.on_return(memory.regs("rax")[0])

    def out_of_scope(self):
        pass  # longjmp/exception: the event keeps returned=False


class _FunctionBreakpoint(_Handler, gdb.Breakpoint):
    """An internal, silent breakpoint on a function: at ADDRESS (its first instruction, placed
    by located.Placer), or by name (pending until a library defines it) with --by-name."""

    def __init__(self, tracer, function, enabled=True, address=None):
        self.tracer = tracer
        if address is None:
            super().__init__(function=function, internal=True)
        else:
            super().__init__(f"*{address:#x}", internal=True)
        self.silent = True
        if not enabled:
            self.enabled = False

    def pc_and(self, *names: str) -> list[int]:
        """$pc followed by the registers NAMES. At a placed breakpoint $pc is its address,
        which saves a register read on the hottest stop."""
        at = getattr(self, "placed_at", None)
        if at is None:
            return memory.regs("pc", *names)
        return [at[1], *memory.regs(*names)]

    def caller(self, inferior, pc, rsp) -> str | None:
        """The library the call came from: a placed breakpoint sits at the function's first
        instruction, where the return address is at $rsp."""
        if getattr(self, "placed_at", None) is not None:
            ret = memory.read_u64(inferior, rsp)
            return memory.solib(ret) if ret else None
        return self.tracer.caller_library(inferior, pc, rsp)


def _finish(tracer, on_return) -> None:
    try:
        _Return(tracer, gdb.newest_frame(), on_return)
    except (ValueError, gdb.error, RuntimeError):
        pass  # outermost frame, or no return address: the event keeps returned=False


class _CallBreakpoint(_FunctionBreakpoint):
    def __init__(self, tracer, spec, address=None):
        self.spec = spec
        super().__init__(tracer, spec.name, address=address)

    def handle(self):
        tracer = self.tracer
        inferior = gdb.selected_inferior()
        pid, tid = memory.ptid()
        nargs = len(self.spec.args)
        pc, rsp, *raw = self.pc_and("rsp", *ARG_REGISTERS[:nargs])
        args = {}
        outs = []
        for (name, kind), value in zip(self.spec.args, raw):
            if kind == "str":
                args[name] = memory.read_cstring(inferior, value)
            elif kind == "uuid":
                data = memory.read_bytes(inferior, value, 16)
                args[name] = uuid_str(data) if data and len(data) == 16 else None
            elif kind == "int":
                args[name] = memory.as_int32(value)
            elif kind.startswith("out_"):
                outs.append((name, kind, value))
            else:
                args[name] = value
        caller = self.caller(inferior, pc, rsp)
        call = Call(seq=tracer.timeline.next_seq(), pid=pid, tid=tid, function=self.spec.name,
                    library=memory.solib(pc), caller=caller, args=args)
        tracer.timeline.add(call)
        tracer.seen_pid(pid)
        spec = self.spec

        def on_return(rax):
            call.returned = True
            if spec.result == "str":
                call.result = memory.read_cstring(inferior, rax)
            elif spec.result == "CUresult" or spec.result == "cudaError_t" or spec.result == "nvmlReturn_t":
                call.result = rax & 0xFFFFFFFF
            else:
                call.result = rax
            ok = call.result == 0 if isinstance(call.result, int) else True
            for name, kind, ptr in outs:
                if not ok and name != "symbolStatus":
                    continue  # out-parameters are undefined on failure
                if kind == "out_i32" or kind == "out_u32":
                    call.args[name] = memory.read_i32(inferior, ptr)
                elif kind == "out_u64":
                    call.args[name] = memory.read_u64(inferior, ptr)
                elif kind == "out_ptr":
                    call.args[name] = memory.read_u64(inferior, ptr)
                elif kind == "out_str":
                    call.args[name] = memory.read_cstring(inferior, ptr, 256)

        _finish(tracer, on_return)


class _DlopenBreakpoint(_FunctionBreakpoint):
    def __init__(self, tracer, address=None):
        super().__init__(tracer, "dlopen", address=address)

    def handle(self):
        tracer = self.tracer
        inferior = gdb.selected_inferior()
        path_ptr, flags = memory.regs("rdi", "rsi")
        path = memory.read_cstring(inferior, path_ptr) if path_ptr else None
        if path is None or not is_cuda_library(path):
            return  # dlopen(NULL) (the main program) or not a CUDA library
        pid, tid = memory.ptid()
        pc, rsp = self.pc_and("rsp")
        caller = self.caller(inferior, pc, rsp)
        load = Load(seq=tracer.timeline.next_seq(), pid=pid, tid=tid, path=path, flags=flags & 0xFFFFFFFF,
                    ok=None, caller=caller)
        tracer.timeline.add(load)
        tracer.seen_pid(pid)
        tracer.arm_lookups()

        def on_return(rax):
            load.ok = rax != 0
            if load.ok:
                name_ptr = memory.read_u64(inferior, rax + 8)  # struct link_map: l_addr, l_name
                load.resolved = memory.read_cstring(inferior, name_ptr) if name_ptr else None
            else:
                tracer.failed_load(pid, load)

        _finish(tracer, on_return)


class _DlerrorBreakpoint(_FunctionBreakpoint):
    """Armed only after a CUDA library failed to load: the loader's own words."""

    def __init__(self, tracer, address=None):
        super().__init__(tracer, "dlerror", enabled=bool(tracer.pending_dlerror), address=address)

    def handle(self):
        tracer = self.tracer
        pid, _ = memory.ptid()
        load = tracer.pending_dlerror.get(pid)
        if load is None:
            return
        inferior = gdb.selected_inferior()

        def on_return(rax):
            text = memory.read_cstring(inferior, rax) if rax else None
            if text and load.error is None:
                load.error = text
            tracer.pending_dlerror.pop(pid, None)
            if not tracer.pending_dlerror:
                tracer.set_dlerror_capture(False)

        _finish(tracer, on_return)


class _LookupBreakpoint(_FunctionBreakpoint):
    """dlsym/dlvsym inside the window. The hot path (cudart's fallback makes ~420): one
    stop at entry; found/NULL comes from the handle's symbol tables (core.dynsym) unless
    the lookup is one the rules read, one of the first few in its library, or the model
    cannot answer it: those are watched at their return (see Tracer.lookup_answer)."""

    def __init__(self, tracer, function, address=None):
        self.how = function
        super().__init__(tracer, function, enabled=tracer.lookups_armed, address=address)

    def handle(self):
        tracer = self.tracer
        inferior = gdb.selected_inferior()
        pc, handle, sym_ptr, rsp = self.pc_and("rdi", "rsi", "rsp")
        symbol = memory.read_cstring(inferior, sym_ptr, 512)
        pid, tid = memory.ptid()
        asked = tracer.handle_library(inferior, pid, handle)
        if not (is_cuda_symbol(symbol) or is_cuda_library(asked)):
            return
        version = None
        if self.how == "dlvsym":
            version = memory.read_cstring(inferior, memory.regs("rdx")[0], 128)
        lookup = Lookup(seq=tracer.timeline.next_seq(), pid=pid, tid=tid, how=self.how, symbol=symbol or "?",
                        handle_library=asked, version=version, found=None,
                        caller=self.caller(inferior, pc, rsp))
        tracer.timeline.add(lookup)
        tracer.lookup_count += 1
        if tracer.lookup_count >= LOOKUP_CAP:
            tracer.note(f"lookup tracing stopped after {LOOKUP_CAP} lookups")
            tracer.disarm_lookups()
        watch, compare = tracer.lookup_answer(inferior, lookup, pc)
        if not watch:
            return

        def on_return(rax):
            lookup.found = rax != 0
            lookup.address = rax
            lookup.found_by = "return"
            if rax:
                lookup.provider = memory.solib(rax)
            if compare:
                tracer.check_prediction(lookup)

        _finish(tracer, on_return)


WATCH_FIRST = 4  # lookups per library watched to their return, to check the symbol-table answers


class _WindowBreakpoint(_FunctionBreakpoint):
    """The first call of a ggml/cudart init entry point opens the capture window."""

    def __init__(self, tracer, function, address=None):
        self.function = function
        super().__init__(tracer, function, address=address)
        # A real stop when the window opens: gdb 13 resumes only the stopped thread after a
        # "don't stop" answer, so the other threads would go on without PTRACE_SYSCALL and
        # their writes (llama.cpp's log thread writes ggml's error) would never be seen.
        # The stop is silent and goes straight on.
        self.commands = "silent\ncontinue"

    def handle(self):
        tracer = self.tracer
        pid, _ = memory.ptid()
        key = (pid, self.function)
        if key in tracer.windows_done:
            return False
        tracer.windows_done.add(key)
        was_capturing = tracer.capturing()
        tracer.open_window(pid)
        failed = self.function.startswith("cuda")  # cudaGetDeviceCount: rax is its cudaError_t
        _finish(tracer, lambda rax: tracer.close_window(pid, failed and rax & 0xFFFFFFFF != 0))
        return not was_capturing


_CATCH_ARCH: dict[int, str] = {}  # syscall catchpoint number -> the architecture that named its syscalls


class Tracer:
    """One armed catch-init-error: its breakpoints, its timeline, the settings it changed."""

    def __init__(self, patterns, follow_children=True, by_name=False):
        self.timeline = Timeline(patterns=tuple(patterns))
        self.follow_children = follow_children
        self.by_name = by_name  # gdb's by-name breakpoints instead of located.Placer's
        self.placer: located.Placer | None = None
        self.breakpoints: list[gdb.Breakpoint] = []
        self.lookup_bps: list[_LookupBreakpoint] = []
        self.syscall_catches: dict[int, gdb.Breakpoint] = {}  # inferior num -> its catchpoint
        self.dlerror_bps: list[_DlerrorBreakpoint] = []
        self.window_depth: dict[int, int] = {}
        self.writes_left: dict[int, int] = {}
        self.windows_done: set = set()
        self.pending_dlerror: dict[int, Load] = {}
        self.lookup_count = 0
        self.lookups_armed = False
        self.every_return = False  # --every-return: watch every lookup's return
        self.returns = memory.ReturnAddresses()
        self.scopes: dict[tuple[int, str], list[dynsym.DynamicSymbols] | None] = {}  # (pid, handle library) -> search list
        self.checks: dict[tuple[int, str], list[Lookup]] = {}  # (pid, handle library) -> returns to compare
        self.unanswerable: set[tuple[int, str]] = set()  # the model disagreed once: watch them all
        self.libc_locations: dict[int, bool] = {}  # dlsym breakpoint pc -> inside the C library
        self.handle_names: dict[tuple[int, int], str] = {}  # (pid, dlopen handle) -> its l_name
        self.saved_settings: dict[str, str] = {}
        self.pids: dict[int, int] = {}  # pid -> inferior num
        self.exes: dict[int, str] = {}
        self.live_pids: set[int] = set()
        self.internal_errors: list[str] = []
        self.hang = None
        self.stop_reason = None  # set by the watchdog (gdb/control.py): why the run was stopped
        self.ending = None  # cuda-run is killing the processes, and why
        self.pending_writes: dict[int, Write] = {}  # tid -> the recorded write whose return is due
        self.pending_kill: dict | None = None  # a fatal signal caught on its way (see _on_kill)
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
        if self.by_name:
            for name in TRACED_FUNCTIONS:
                self._make(name)
        else:
            self.placer = located.Placer(TRACED_FUNCTIONS, self._make, self.note)
        self._ensure_syscall_catch()
        self._connect()
        if self.placer is not None:
            self.placer.start()
        for inferior in gdb.inferiors():
            if inferior.pid:
                self.seen_pid(inferior.pid, inferior.num)
        return messages

    def _make(self, name, address=None) -> list[gdb.Breakpoint]:
        """The breakpoints that trace function NAME (at ADDRESS, or by name)."""
        made = []
        if name in SPECS:
            made.append(_CallBreakpoint(self, SPECS[name], address))
        if name in WINDOW_FUNCTIONS:
            made.append(_WindowBreakpoint(self, name, address))
        if name == "dlopen":
            made.append(_DlopenBreakpoint(self, address))
        elif name == "dlerror":
            made.append(_DlerrorBreakpoint(self, address))
            self.dlerror_bps.append(made[-1])
        elif name in ("dlsym", "dlvsym"):
            made.append(_LookupBreakpoint(self, name, address))
            self.lookup_bps.append(made[-1])
        self.breakpoints.extend(made)
        return made

    def _ensure_syscall_catch(self):
        """gdb 13 ties a catchpoint to the program space current at its creation:
        each inferior gets its own (made from events, never inside a stop handler)."""
        num = gdb.selected_inferior().num
        # gdb numbers the syscalls for the architecture current now: armed before 'file', that is
        # i386's (write = 4), and an x86-64 program's writes would never match. Remake it then.
        arch = gdb.selected_inferior().architecture().name()
        existing = self.syscall_catches.get(num)
        if existing is not None and existing.is_valid():
            if _CATCH_ARCH.get(existing.number, arch) == arch:
                return
            existing.delete()
        before = {b.number for b in gdb.breakpoints()}
        gdb.execute("catch syscall write writev " + " ".join(KILL_SYSCALLS.values()), to_string=True)
        catch = next(b for b in gdb.breakpoints() if b.number not in before)
        _CATCH_ARCH[catch.number] = arch
        catch.enabled = self._window_open()
        # The work happens in the condition, which says "don't stop": no user-visible stop, so
        # gdb does not re-check FinishBreakpoints then (gdb 13 looks for their frames in the
        # thread that stopped, and deletes those of every other thread: a driver thread's
        # write() inside cuInit used to lose cuInit's return and leave the window open).
        _SyscallCondition.register()
        catch.condition = f"$_gdb_cudashim_syscall({num})"  # every inferior's catchpoint is asked: act once
        # ... it says "stop" only once the window has closed: disabling a syscall catchpoint
        # reaches ptrace from a command context, not from inside the condition.
        catch.commands = "silent\npython __import__('gdb_cudashim.gdb.tracer', fromlist=['x']).syscall_stop()\ncontinue"
        self.syscall_catches[num] = catch

    def _window_open(self) -> bool:
        return any(self.window_depth.values()) or any(self.writes_left.values())

    def capturing(self) -> bool:
        return any(c.is_valid() and c.enabled for c in self.syscall_catches.values())

    def _set_syscall_capture(self, on: bool):
        for catch in self.syscall_catches.values():
            if catch.is_valid() and catch.enabled != on:
                catch.enabled = on

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
        wanted = {"detach-on-fork": "off", "schedule-multiple": "on"}
        changed = []
        for name, value in wanted.items():
            current = gdb.parameter(name)
            current = "on" if current is True else "off" if current is False else str(current)
            if current != value:
                self.saved_settings[name] = current
                gdb.execute(f"set {name} {value}", to_string=True)
                changed.append(f"{name} {value} (was {current})")
        if changed:
            return ("catch-init-error: following children: set " + ", ".join(changed)
                    + "; 'catch-init-error --disarm' restores them")
        return "catch-init-error: following children (detach-on-fork off, schedule-multiple on already)"

    def _connect(self):
        self._events.connect((gdb.events.exited, self._on_exited),
                             (gdb.events.new_objfile, self._on_new_objfile),
                             (gdb.events.free_objfile, self._on_free_objfile))

    def disarm(self) -> list[str]:
        messages = []
        if self.placer is not None:
            self.placer.stop()
            self.placer = None
        self._events.disconnect_all()
        for bp in self.breakpoints + list(self.syscall_catches.values()):
            try:
                if bp.is_valid():
                    bp.delete()
            except (RuntimeError, gdb.error):
                pass
        for bp in list(gdb.breakpoints()):  # finish breakpoints still pending
            if isinstance(bp, _Return) and bp.is_valid():
                try:
                    bp.delete()
                except (RuntimeError, gdb.error):
                    pass
        self.breakpoints.clear()
        for name, value in self.saved_settings.items():
            gdb.execute(f"set {name} {value}", to_string=True)
            messages.append(f"restored {name} {value}")
        self.saved_settings.clear()
        return messages

    # ---------------------------------------------------------- windows --
    def open_window(self, pid):
        self.window_depth[pid] = self.window_depth.get(pid, 0) + 1
        self._set_syscall_capture(True)
        self.arm_lookups()

    def close_window(self, pid, failed=False):
        depth = self.window_depth.get(pid, 0) - 1
        self.window_depth[pid] = max(depth, 0)
        if depth <= 0 and self._failed_without_text(pid, failed):
            # The init failed and nobody has written why yet: llama.cpp's log thread (common_log)
            # writes ggml's line after the call returned. Keep the capture on for this process's
            # next writes, a fixed number, so the stops never grow with the log volume.
            self.writes_left[pid] = max(self.writes_left.get(pid, 0), WRITES_AFTER_FAILED_INIT)
            if not any(self.window_depth.values()):
                self.disarm_lookups()  # only the writes are wanted now
        self._maybe_close()

    def _failed_without_text(self, pid, failed=False) -> bool:
        tl = self.timeline
        if any(w.pid == pid for w in tl.errors):
            return False
        return failed or any(c.pid == pid and c.failed and c.spec.layer == "runtime" for c in tl.calls)

    def _maybe_close(self):
        if self._window_open():
            return
        # Disabling a syscall catchpoint from inside a stop() handler does not reach
        # ptrace in gdb 13 (it keeps resuming with PTRACE_SYSCALL and every later
        # write costs two hidden stops: 11x on a chatty program). The next syscall
        # stop, run from the catchpoint's commands, disables it instead.
        self.disarm_lookups()

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
        self.pending_dlerror[pid] = load
        self.set_dlerror_capture(True)
        self.writes_left[pid] = WRITES_AFTER_FAILED_LOAD
        self._set_syscall_capture(True)

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
        """(watch LOOKUP's return?, compare that return with the symbol tables?). When not
        watched, found/provider are set here from the handle's search list (core.dynsym).

        The model describes the C library's own dlsym() only: a lookup stopped in an
        interposed dlsym (HAMi-core style) may be answered anything, so it is watched and
        never held against the model. Of the rest, watched and compared: lookups the rules
        read, the first WATCH_FIRST per library, and every one after a disagreement."""
        if lookup.how != "dlsym" or not self._libc_dlsym(pc):
            return True, False
        key = (lookup.pid, lookup.handle_library or "")
        checks = self.checks.setdefault(key, [])
        if (self.every_return or lookup.symbol in KEY_LOOKUPS or len(checks) < WATCH_FIRST
                or self._scope(inferior, key) is None  # the first time, this checks the returns watched so far
                or key in self.unanswerable):
            checks.append(lookup)
            return True, True
        provider = dynsym.lookup(self.scopes[key], lookup.symbol)
        lookup.found = provider is not None
        lookup.provider = provider
        lookup.found_by = "symbol table"
        return False, False

    def _libc_dlsym(self, pc) -> bool:
        known = self.libc_locations.get(pc)
        if known is None:
            name = os.path.basename(memory.solib(pc) or "")
            known = self.libc_locations[pc] = name.startswith(("libc.so", "libdl.so", "ld-linux"))
        return known

    def _scope(self, inferior, key):
        """The handle's search list, built once per (pid, library); building it checks the
        model against every return watched so far in that library."""
        if key in self.scopes:
            return self.scopes[key]
        scope = None
        path = key[1]
        if path.startswith("/") and os.path.isfile(path):
            try:
                loaded = [o.filename for o in inferior.progspace.objfiles() if o.filename and o.filename.startswith("/")]
                scope = dynsym.search_list(path, loaded)
            except (dynsym.DynsymError, gdb.error, RuntimeError) as exc:
                self.note(f"lookups in {os.path.basename(path)} are watched at every return: {exc}")
        self.scopes[key] = scope
        if scope is not None:
            for earlier in self.checks.get(key, []):
                self.check_prediction(earlier)
        return scope

    def check_prediction(self, lookup):
        """A watched return vs the symbol tables' answer: on disagreement, watch that library's every lookup."""
        key = (lookup.pid, lookup.handle_library or "")
        scope = self.scopes.get(key)
        if scope is None or lookup.found is None or key in self.unanswerable:
            return
        said = dynsym.lookup(scope, lookup.symbol) is not None
        if said == lookup.found:
            return
        self.unanswerable.add(key)
        self.note(f"dlsym({os.path.basename(key[1])}, {lookup.symbol!r}) returned "
                  f"{'an address' if lookup.found else 'NULL'} where its symbol tables said "
                  f"{'found' if said else 'NULL'}; every later lookup in it is watched at its return")

    # --------------------------------------------------------- syscalls --
    def on_syscall(self) -> bool:
        """A write/writev entry or return, from the catchpoint's condition. True: stop, so that
        the catchpoint's commands can disable it (the window has closed)."""
        self.timeline.stops += 1
        if not self._window_open():
            return True
        rax, nr, rdi, rsi, rdx = memory.regs("rax", "orig_rax", "rdi", "rsi", "rdx")
        if memory.as_int64(rax) != -ENOSYS:
            if self.pending_writes:  # the return of a write we recorded: did it reach the file?
                write = self.pending_writes.pop(memory.ptid()[1], None)
                if write is not None and memory.as_int64(rax) < 0:
                    write.error = _errno_name(-memory.as_int64(rax))
            return False
        pid, tid = memory.ptid()
        if nr in KILL_SYSCALLS:
            return self._on_kill(pid, tid, nr, rdi, rsi, rdx)
        inferior = gdb.selected_inferior()
        fd = memory.as_int32(rdi)
        if nr == SYS_WRITE:
            data = memory.read_bytes(inferior, rsi, min(rdx, 1 << 20))
            via = "write"
        elif nr == SYS_WRITEV:
            iov, count = rsi, min(rdx, 1024)
            parts = []
            for i in range(count):
                base = memory.read_u64(inferior, iov + 16 * i)
                length = memory.read_u64(inferior, iov + 16 * i + 8)
                if base is None or length is None:
                    break
                parts.append(memory.read_bytes(inferior, base, min(length, 1 << 20)) or b"")
            data = b"".join(parts)
            via = "writev"
        else:
            return False
        if pid in self.writes_left and self.writes_left[pid] > 0:
            self.writes_left[pid] -= 1
            if self.writes_left[pid] == 0:
                del self.writes_left[pid]
                self._maybe_close()
        if not data:
            return False
        text = data.decode("utf-8", "replace")
        if not self.timeline.matches_error(text):
            return False
        frames = [Frame(function=f, library=lib, pc=pc, where=where) for f, lib, pc, where in memory.backtrace()]
        self.pending_writes[tid] = self.timeline.add(Write(seq=self.timeline.next_seq(), pid=pid, tid=tid, fd=fd,
                                                           text=text, via=via, backtrace=frames))
        if not self.window_depth.get(pid) and self.writes_left.pop(pid, None) is not None:
            self._maybe_close()  # the text we waited for after the init: done
        self.seen_pid(pid)
        return False

    def _on_kill(self, pid, tid, nr, rdi, rsi, rdx) -> bool:
        """A fatal signal on its way to another traced process: stop (True) so that the
        catchpoint's commands can take the victim's backtraces before it lands."""
        via = KILL_SYSCALLS[nr]
        if via == "tgkill":
            victim, sig = memory.as_int32(rdi), rdx & 0xFF
        elif via == "pidfd_send_signal":
            victim, sig = _pidfd_target(pid, memory.as_int32(rdi)), rsi & 0xFF
        else:
            victim, sig = memory.as_int32(rdi), rsi & 0xFF
            if via == "tkill":
                victim = _thread_group(victim)
        if sig not in FATAL_SIGNALS or victim is None or victim == pid or victim not in self.live_pids:
            return False
        self.pending_kill = dict(pid=pid, tid=tid, victim=victim, signal=FATAL_SIGNALS[sig], via=via)
        return True

    def record_kill(self):
        """From the catchpoint's commands: the pending kill, with the victim's threads as they are."""
        from ..core.timeline import Kill
        from .session import thread_snapshot

        k, self.pending_kill = self.pending_kill, None
        threads = []
        for inferior in gdb.inferiors():
            if inferior.pid == k["victim"]:
                threads = thread_snapshot(inferior, 24)
        self.timeline.add(Kill(seq=self.timeline.next_seq(), victim_age_s=_age(k["victim"]), threads=threads, **k))

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
        self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="start", detail=exe or "",
                                       parent=parent, env=relevant_env(env), cwd=cwd))

    def _on_free_objfile(self, _event):
        self.handle_names.clear()

    def _on_new_objfile(self, event):
        self.handle_names.clear()
        try:
            inferior = gdb.selected_inferior()
            if inferior.pid:
                self.seen_pid(inferior.pid, inferior.num)
                self._check_exec(inferior.pid)
            filename = getattr(event.new_objfile, "filename", None)
            if is_cuda_library(filename):
                self._ensure_syscall_catch()
                self._loaded(inferior.pid, filename)
        except gdb.error as exc:
            self.note_internal(f"new_objfile: {exc}")

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
        if self.exes.get(pid) not in (None, exe):
            self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="exec", detail=exe))
            start = self.timeline.process_start(pid)
            if start is not None:
                start.detail = exe
        self.exes[pid] = exe

    def _on_exited(self, event):
        inferior = getattr(event, "inferior", None)
        num = inferior.num if inferior is not None else None
        pid = next((p for p, n in self.pids.items() if n == num and p in self.live_pids), None)
        if pid is None:
            return
        self.live_pids.discard(pid)
        code = getattr(event, "exit_code", None)
        if self.ending is not None:  # we killed it (a timeout, an interrupt): $_exitsignal is not its
            self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="exit", signal="SIGKILL",
                                           detail=f"ended by gdb-cudashim ({self.ending})"))
        else:
            self.timeline.add(ProcessEvent(seq=self.timeline.next_seq(), pid=pid, what="exit",
                                           exit_code=int(code) if code is not None else None,
                                           signal=None if code is not None else _exit_signal()))
        # a pid may be reused by a later inferior
        del self.pids[pid]
        self.window_depth.pop(pid, None)
        self.writes_left.pop(pid, None)
        self._maybe_close()
        if not self.live_pids and self.on_all_exited is not None:
            self.on_all_exited()

    # --------------------------------------------------------- settling --
    def settled(self, quiet_s: float) -> str | None:
        """"settled" once CUDA init is over in every traced process and nothing CUDA has
        happened for QUIET_S seconds, while a process still runs (a server). Never while a
        thread is inside an init window: that is a hang. Called from the watchdog thread:
        reads only."""
        import time

        if not self.live_pids or not (self.windows_done or self.timeline.loads):
            return None
        now = time.monotonic()
        count = len(self.timeline.events)
        if any(self.window_depth.values()) or count != self._settle_count:
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


def _errno_name(number: int) -> str:
    import errno

    return errno.errorcode.get(number, f"errno {number}")


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
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


ACTIVE: Tracer | None = None


class _SyscallCondition(gdb.Function):
    """$_gdb_cudashim_syscall(N): the condition of inferior N's syscall catchpoint; records the
    write and says whether to stop (1 only when the capture should be switched off). gdb asks
    the condition of every inferior's catchpoint at a syscall stop: only inferior N's acts."""

    _registered = False

    def __init__(self):
        super().__init__("_gdb_cudashim_syscall")

    @classmethod
    def register(cls):
        if not cls._registered:
            cls()
            cls._registered = True

    def invoke(self, owner):
        tracer = ACTIVE
        if tracer is None:
            return 0
        here, owner = gdb.selected_inferior().num, int(owner)
        if owner != here and (here in tracer.syscall_catches or owner != min(tracer.syscall_catches)):
            return 0  # another catchpoint answers for this inferior
        try:
            return 1 if tracer.on_syscall() else 0
        except Exception as exc:  # an error in a condition would stop the program
            tracer.note_internal(f"on_syscall: {type(exc).__name__}: {exc}")
            return 0


def syscall_stop():
    """The catchpoint's commands (a command context): record a kill caught on its way, and
    switch the capture off if the window closed."""
    tracer = ACTIVE
    if tracer is None:
        return
    if tracer.pending_kill is not None:
        try:
            tracer.record_kill()
        except Exception as exc:  # never leave the program stopped because of us
            tracer.pending_kill = None
            tracer.note_internal(f"record_kill: {type(exc).__name__}: {exc}")
    if not tracer._window_open():
        tracer._set_syscall_capture(False)


def _pidfd_target(pid, fd) -> int | None:
    """The process a pidfd of PID refers to (its fdinfo's Pid: line)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _thread_group(tid) -> int | None:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _age(pid) -> float | None:
    """Seconds since PID started (from /proc: its start time and the system's uptime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None
