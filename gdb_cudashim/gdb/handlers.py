"""catch-init-error's breakpoints: gdb stops -> typed timeline events.

Each class is one kind of stop; its handler records and returns (never prints). The state
they feed lives in the Tracer (gdb/tracer.py), the capture window and write capture in
gdb/capture.py, the dlsym model in core/lookups.py.
"""
from __future__ import annotations

import time

import gdb

from ..core.calls import ARG_REGISTERS, decode_struct, is_cuda_library, is_cuda_symbol, struct_size
from ..core.codes import uuid_str
from ..core.timeline import Call, Load, Lookup
from . import memory

LOOKUP_CAP = 20000  # stop tracing lookups after this many (a pathological program)


class Handler:
    """Mix-in: count the stop, never let an exception escape into gdb."""

    tracer: object  # the Tracer (gdb/tracer.py) that made this handler; it is not imported here: it imports us

    def stop(self):  # noqa: D401 - gdb's API
        tracer = self.tracer
        started = time.perf_counter()
        try:
            return bool(self.handle())  # True only where a real stop is needed (see WindowBreakpoint)
        except Exception as exc:  # a bug here must not stop the user's program
            tracer.note_internal(f"{type(self).__name__}: {type(exc).__name__}: {exc}")
        finally:
            tracer.timeline.count_stop(gdb.selected_inferior().pid, time.perf_counter() - started)
        return False

    def handle(self):
        raise NotImplementedError


class Return(Handler, gdb.FinishBreakpoint):
    """The return of one traced call: reads the result and out-parameters."""

    def __init__(self, tracer, frame, on_return):
        self.tracer = tracer
        self.on_return = on_return
        self.home = gdb.selected_inferior().num
        super().__init__(frame, internal=True)
        self.silent = True
        self.pin_locations()

    def pin_locations(self):
        """gdb gives the return address a location in every program space: where another
        process has nothing mapped there, inserting it fails and aborts the whole 'continue'
        (20 children at once did). Only the calling process's location stays enabled."""
        try:
            for loc in self.locations:
                want = self.home in loc.thread_groups
                if loc.enabled != want:
                    loc.enabled = want
        except (gdb.error, RuntimeError):
            pass

    def handle(self):
        self.on_return(memory.regs("rax")[0])

    def out_of_scope(self):
        pass  # longjmp/exception: the event keeps returned=False


class FunctionBreakpoint(Handler, gdb.Breakpoint):
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
        Return(tracer, gdb.newest_frame(), on_return)
    except (ValueError, gdb.error, RuntimeError):
        pass  # outermost frame, or no return address: the event keeps returned=False


class CallBreakpoint(FunctionBreakpoint):
    def _in_a_library(self) -> bool:
        try:
            return gdb.solib_name(memory.regs("pc")[0]) is not None
        except gdb.error:
            return True

    def __init__(self, tracer, spec, address=None):
        self.spec = spec
        super().__init__(tracer, spec.name, address=address)
        from .capture import RESUME

        self.commands = "silent\n" + RESUME  # run only at the one real stop of tracer.past_cap

    def handle(self):
        tracer = self.tracer
        inferior = gdb.selected_inferior()
        pid, tid = memory.ptid()
        if tracer.by_name and tracer.recorded(pid) and self._in_a_library():
            return False  # the process records the calls between its files itself (tracer._wanted)
        skip, real_stop = tracer.past_cap(pid, self.spec.name, self)
        if skip:
            return real_stop
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
            else:  # every status type is a 32-bit enum: rax's upper half is whatever was there
                call.result = rax & 0xFFFFFFFF
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
                elif kind.startswith("out_struct:"):
                    call.args[name] = decode_struct(kind, memory.read_bytes(inferior, ptr, struct_size(kind) or 0))

        _finish(tracer, on_return)


class DlopenBreakpoint(FunctionBreakpoint):
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


class DlerrorBreakpoint(FunctionBreakpoint):
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


class LookupBreakpoint(FunctionBreakpoint):
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
        pid, tid = memory.ptid()
        if tracer.recorded(pid):
            return  # the process records its lookups itself
        symbol = memory.read_cstring(inferior, sym_ptr, 512)
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
                tracer.lookups.check(lookup)

        _finish(tracer, on_return)


class WindowBreakpoint(FunctionBreakpoint):
    """The first call of a ggml/cudart init entry point opens the capture window."""

    def __init__(self, tracer, function, address=None):
        self.function = function
        super().__init__(tracer, function, address=address)
        # A real stop when the window opens: gdb 13 resumes only the stopped thread after a
        # "don't stop" answer, so the other threads would go on without PTRACE_SYSCALL and
        # their writes (llama.cpp's log thread writes ggml's error) would never be seen.
        # The stop is silent and goes straight on.
        from .capture import RESUME

        self.commands = "silent\n" + RESUME

    def handle(self):
        tracer = self.tracer
        pid, _ = memory.ptid()
        key = (pid, self.function)
        if key in tracer.capture.windows_done:
            return False
        tracer.capture.windows_done.add(key)
        tracer.recording.drain(pid)  # what the process recorded before its init, in order
        was_capturing = tracer.capture.capturing()
        tracer.capture.open_window(pid)
        failed = self.function.startswith("cuda")  # cudaGetDeviceCount: rax is its cudaError_t
        _finish(tracer, lambda rax: tracer.capture.close_window(pid, failed and rax & 0xFFFFFFFF != 0))
        # each window opens once per process: this breakpoint is done there (ggml_cuda_info() is
        # called again by every CUDA operation of a working backend: a stop each otherwise)
        needs_stop = tracer.retire(self)
        # the real stop is needed only where other threads run (a single thread is resumed
        # with the capture on anyway): a log thread, a driver's threads. Not for other processes:
        # a real stop at every child's window made 20 children at once crash one of them in ld.so
        # (a discovery parent's kill() is caught by KillBreakpoint instead)
        return (not was_capturing or needs_stop) and len(gdb.selected_inferior().threads()) > 1


_CATCH_ARCH: dict[int, str] = {}  # syscall catchpoint number -> the architecture that named its syscalls


class ExitBreakpoint(FunctionBreakpoint):
    """_exit in the C library, runtime.exit in a Go program: a process about to end, every one of
    its threads still there. While cuda-run drives, a process with more than one thread stops here
    for real and is let go (capture.let_go_exiting): its exit_group then ends its other threads with no
    debugger in between. Traced to the end, those threads die one by one while gdb resumes and
    reads them, and gdb now and then lost the run ("Couldn't get registers: No such process", the
    Go server's exiting runner, about 1 run in 1,000 under load). A single thread races nothing:
    it goes on, at the cost of this hidden stop."""

    def __init__(self, tracer, function, address=None):
        self.function = function
        super().__init__(tracer, function, address=address)
        from .capture import RESUME

        self.commands = "silent\n" + RESUME  # cuda-run's loop lets it go (capture.let_go_exiting)

    def handle(self):
        import os

        from .capture import GO_EXITS
        from .state import State

        if not State.driving:
            return False  # a gdb the user drives keeps every process to its end
        pid, _tid = memory.ptid()
        try:
            if len(os.listdir(f"/proc/{pid}/task")) < 2:
                return False
        except OSError:
            return False
        if self.function in GO_EXITS:  # ABI0: the code is the argument on the stack
            (rsp,) = memory.regs("rsp")
            code = memory.read_u64(gdb.selected_inferior(), rsp + 8)
            if code is None:
                return False
        else:
            (code,) = memory.regs("rdi")
        self.tracer.capture.exiting = (pid, code & 0xFF)  # what the kernel keeps of it
        return True


class _WordsBreakpoint(FunctionBreakpoint):
    """A rare stop that keeps what ggml says as it gives up, read from the call's own arguments at a
    hidden stop (never a real one): always armed, recorder or not. HANDLE reads the arguments of the
    function it is named for and returns the event to add."""

    def handle(self):
        inferior = gdb.selected_inferior()
        pid, tid = memory.ptid()

        def text(address, limit=512):
            return (memory.read_cstring(inferior, address, limit) or "") if address else ""

        self.tracer.timeline.add(self.event(inferior, pid, tid, text))
        return False


class CheckBreakpoint(_WordsBreakpoint):
    """ggml_cuda_error (calls.CHECK_FUNCTIONS): a CUDA_CHECK / CU_CHECK / CUBLAS_CHECK that failed:
    its statement, ggml's function, file and line, and the error text. ggml aborts right after."""

    def __init__(self, tracer, address=None):
        from ..core.calls import CHECK_FUNCTIONS

        super().__init__(tracer, CHECK_FUNCTIONS[0], address=address)

    def event(self, inferior, pid, tid, text):
        from ..core.timeline import Check

        stmt, func, file, line, msg = memory.regs("rdi", "rsi", "rdx", "rcx", "r8")
        return Check(seq=self.tracer.timeline.next_seq(), pid=pid, tid=tid, statement=text(stmt), function=text(func),
                     file=text(file), line=memory.as_int32(line), message=text(msg))


class AbortBreakpoint(_WordsBreakpoint):
    """ggml_abort (calls.ABORT_FUNCTIONS): GGML_ABORT / GGML_ASSERT, ggml's own words: the file, the
    line, and the format filled from its first integer-class arguments."""

    def __init__(self, tracer, address=None):
        from ..core.calls import ABORT_FUNCTIONS

        super().__init__(tracer, ABORT_FUNCTIONS[0], address=address)

    def event(self, inferior, pid, tid, text):
        from ..core.timeline import Abort, format_printf

        file, line, fmt, a, b, c, rsp = memory.regs("rdi", "rsi", "rdx", "rcx", "r8", "r9", "rsp")
        # the 7th.. integer arguments are on the stack from rsp+8 at the first instruction, where a placed
        # breakpoint stops; a by-name one may sit after the prologue, where rsp has moved: none read then
        stacked = ([memory.read_u64(inferior, rsp + 8 * (1 + i)) or 0 for i in range(3)]
                   if getattr(self, "placed_at", None) is not None else [])
        message = format_printf(text(fmt), [a, b, c, *stacked],
                                lambda address: memory.read_cstring(inferior, address, 512))
        return Abort(seq=self.tracer.timeline.next_seq(), pid=pid, tid=tid, file=text(file),
                     line=memory.as_int32(line), message=message[:1000])


class KillBreakpoint(FunctionBreakpoint):
    """kill / tgkill / pidfd_send_signal in the C library: a traced process sending a fatal signal
    to another (a discovery parent giving up on its child). Always armed, since a program calls
    them rarely; a stop at the call, real only when the signal is fatal to a traced process, so
    that the victim's threads are read before it lands (capture.record_kill, from the commands).
    The syscall catchpoint of the init window still sees raw kill syscalls (Go's)."""

    def __init__(self, tracer, function, address=None):
        self.function = function
        super().__init__(tracer, function, address=address)
        from .capture import RESUME

        self.commands = ("silent\npython __import__('gdb_cudashim.gdb.capture', fromlist=['x']).syscall_stop()\n"
                         + RESUME)

    def handle(self):
        from .capture import KILL_NUMBERS

        tracer = self.tracer
        pid, tid = memory.ptid()
        rdi, rsi, rdx = memory.regs("rdi", "rsi", "rdx")
        if not tracer.capture.on_kill(pid, tid, KILL_NUMBERS[self.function], rdi, rsi, rdx):
            return False
        if tracer.capture.landing is not None:
            return True  # a SIGKILL: gdb lands it at a real stop (capture.land_kill), after recording it
        if tracer.recorded(tracer.capture.pending_kill["victim"]):
            tracer.capture.record_kill_recorded()  # no real stop: its ring says where it is
            return False
        return True  # the victim's threads are read from the commands, at a real stop
