"""The capture window and write capture: catch-init-error's syscall catchpoint.

Writes (write/writev, libc's and raw syscalls alike) are captured only inside a window: the
first run of an init entry point (ggml_cuda_info, ggml_backend_cuda_reg, cudaGetDeviceCount),
a fixed number of writes after a CUDA library failed to load, and after an init that failed
with no text yet (llama.cpp's log thread writes it later). So the stops never grow with the
program's log volume. The same catchpoint sees kill()s: a fatal signal from one traced
process to another is recorded with the victim's backtraces before it lands.
"""
from __future__ import annotations

import time

import gdb

from ..core.procfs import age, pidfd_target, thread_group
from ..core.timeline import Frame, Kill, Write
from . import memory

SYS_WRITE, SYS_WRITEV = 1, 20
# a process sending a signal: caught with the writes, so a parent's SIGKILL of its child is
# seen before it lands (x86-64 numbers; the catchpoint takes the names)
KILL_SYSCALLS = {62: "kill", 200: "tkill", 234: "tgkill", 424: "pidfd_send_signal"}
KILL_NUMBERS = {name: nr for nr, name in KILL_SYSCALLS.items()}
KILL_FUNCTIONS = ("kill", "tgkill", "pidfd_send_signal")  # the C library's, broken at (handlers.KillBreakpoint)
# Go's exit_group: ABI0 assembly, named so since Go 1.17 (a plain runtime.exit beside it is the
# register-ABI wrapper, whose argument is not on the stack: not broken at)
GO_EXITS = ("runtime.exit.abi0",)
EXIT_FUNCTIONS = ("_exit", *GO_EXITS)  # a process's end (handlers.ExitBreakpoint)
FATAL_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 6: "SIGABRT", 9: "SIGKILL", 15: "SIGTERM"}
ENOSYS = 38
WRITES_AFTER_FAILED_LOAD = 16  # the window after a CUDA library fails to load
KEPT_OUTPUT = 256  # the window's other writes kept as text, per run
WRITES_AFTER_FAILED_INIT = 64  # after a failed init with no error text yet: the log thread's writes
_CATCH_ARCH: dict[int, str] = {}
# The end of our breakpoints' command lists. gdb runs them after a gdb.execute() returns, with
# the UI async again: a 'continue' there resumes in the background, and cuda-run's next
# command found "the selected thread is running" (about 1 run in 20 with a Go server).
# While cuda-run drives ($_gdb_cudashim_driving = 1), its loop resumes instead.
RESUME = "if $_gdb_cudashim_driving == 0\ncontinue\nend"  # catchpoint number -> the architecture its syscall numbers are for


class Capture:
    """One tracer's syscall catchpoints (one per inferior) and the windows that enable them."""

    def __init__(self, tracer):
        self.tracer = tracer
        self.catches: dict[int, gdb.Breakpoint] = {}  # inferior num -> its catchpoint
        self.window_depth: dict[int, int] = {}  # pid -> init calls in progress
        self.writes_left: dict[int, int] = {}  # pid -> writes still captured after the window
        self.windows_done: set = set()  # (pid, function): each window opens once
        self.pending_writes: dict[int, Write] = {}  # tid -> the recorded write whose return is due
        self.pending_kill: dict | None = None  # a fatal signal caught on its way (see on_kill)
        self.landing: int | None = None  # the victim of the pending kill, when gdb lands it (land_kill)
        self.exiting: tuple[int, int] | None = None  # (pid, exit code) of a process let go at its exit
        self.kills_seen: set[tuple[int, int, int]] = set()  # (sender, victim, signal) already recorded
        self.kept_output = 0  # the window's writes that are not an error's, kept as text (KEPT_OUTPUT at most)
        self.closed_at: dict[int, int] = {}  # pid -> when its first init window closed (CLOCK_MONOTONIC ns)

    def after_failed_load(self, pid):
        self.writes_left[pid] = WRITES_AFTER_FAILED_LOAD
        self.set_enabled(True)

    def forget(self, pid):
        """PID is gone."""
        self.window_depth.pop(pid, None)
        self.writes_left.pop(pid, None)
        self.maybe_close()

    def delete(self):
        from .quiet import delete_quietly

        delete_quietly(self.catches.values())
        self.catches.clear()

    def ensure_catch(self):
        """gdb 13 ties a catchpoint to the program space current at its creation:
        each inferior gets its own (made from events, never inside a stop handler)."""
        num = gdb.selected_inferior().num
        # gdb numbers the syscalls for the architecture current now: armed before 'file', that is
        # i386's (write = 4), and an x86-64 program's writes would never match. Remake it then.
        arch = gdb.selected_inferior().architecture().name()
        existing = self.catches.get(num)
        if existing is not None and existing.is_valid():
            if _CATCH_ARCH.get(existing.number, arch) == arch:
                return
            existing.delete()
        before = {b.number for b in gdb.breakpoints()}
        gdb.execute("catch syscall write writev " + " ".join(KILL_SYSCALLS.values()), to_string=True)
        catch = next(b for b in gdb.breakpoints() if b.number not in before)
        _CATCH_ARCH[catch.number] = arch
        catch.enabled = self.window_open()
        # The work happens in the condition, which says "don't stop": no user-visible stop, so
        # gdb does not re-check FinishBreakpoints then (gdb 13 looks for their frames in the
        # thread that stopped, and deletes those of every other thread: a driver thread's
        # write() inside cuInit used to lose cuInit's return and leave the window open).
        _SyscallCondition.register()
        catch.condition = f"$_gdb_cudashim_syscall({num})"  # every inferior's catchpoint is asked: act once
        # ... it says "stop" only once the window has closed: disabling a syscall catchpoint
        # reaches ptrace from a command context, not from inside the condition.
        catch.commands = ("silent\npython __import__('gdb_cudashim.gdb.capture', fromlist=['x']).syscall_stop()\n"
                          + RESUME)
        self.catches[num] = catch

    def window_open(self) -> bool:
        return any(self.window_depth.values()) or any(self.writes_left.values())

    def capturing(self) -> bool:
        return any(c.is_valid() and c.enabled for c in self.catches.values())

    def set_enabled(self, on: bool):
        for catch in self.catches.values():
            if catch.is_valid() and catch.enabled != on:
                catch.enabled = on

    # ---------------------------------------------------------- windows --
    def open_window(self, pid):
        self.window_depth[pid] = self.window_depth.get(pid, 0) + 1
        self.set_enabled(True)
        self.tracer.arm_lookups()

    def close_window(self, pid, failed=False):
        self.tracer.recording.drain(pid)  # the calls it recorded itself in the window: did the init fail?
        depth = self.window_depth.get(pid, 0) - 1
        self.window_depth[pid] = max(depth, 0)
        if depth <= 0:
            self.closed_at.setdefault(pid, time.monotonic_ns())
            self.tracer.snapshot(pid, "after init")
        if depth <= 0 and self._failed_without_text(pid, failed):
            # The init failed and nobody has written why yet: llama.cpp's log thread (common_log)
            # writes ggml's line after the call returned. Keep the capture on for this process's
            # next writes, a fixed number, so the stops never grow with the log volume.
            self.writes_left[pid] = max(self.writes_left.get(pid, 0), WRITES_AFTER_FAILED_INIT)
            if not any(self.window_depth.values()):
                self.tracer.disarm_lookups()  # only the writes are wanted now
        self.maybe_close()

    def _failed_without_text(self, pid, failed=False) -> bool:
        tl = self.tracer.timeline
        if any(w.pid == pid for w in tl.errors):
            return False
        return failed or any(c.pid == pid and c.failed and c.spec.layer == "runtime" and not c.spec.first_use
                             for c in tl.calls)

    def maybe_close(self):
        if self.window_open():
            return
        # Disabling a syscall catchpoint from inside a stop() handler does not reach
        # ptrace in gdb 13 (it keeps resuming with PTRACE_SYSCALL and every later
        # write costs two hidden stops: 11x on a chatty program). The next syscall
        # stop, run from the catchpoint's commands, disables it instead.
        self.tracer.disarm_lookups()

    # --------------------------------------------------------- syscalls --
    def on_syscall(self) -> bool:
        """A write/writev entry or return, from the catchpoint's condition. True: stop, so that
        the catchpoint's commands can disable it (the window has closed)."""
        self.tracer.timeline.count_stop(gdb.selected_inferior().pid)
        if not self.window_open():
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
            return self.on_kill(pid, tid, nr, rdi, rsi, rdx)
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
                self.maybe_close()
        if not data:
            return False
        text = data.decode("utf-8", "replace")
        if not self.tracer.timeline.matches_error(text):
            if fd in (1, 2) and self.kept_output < KEPT_OUTPUT:
                # the program's own words inside the window ("Device 0: ..."): kept as text only
                # (no backtrace, no drain: no cost past the stop we are in), for the rules' evidence
                # and what-if's comparison of two runs
                self.kept_output += 1
                self.tracer.timeline.add(Write(seq=self.tracer.timeline.next_seq(), pid=pid, tid=tid, fd=fd,
                                               text=text[:4096], via=via))
            return False
        self.tracer.recording.drain(pid)  # what it recorded itself comes before the error text
        frames = [Frame(function=f, library=lib, pc=pc, where=where) for f, lib, pc, where in memory.backtrace()]
        self.pending_writes[tid] = self.tracer.timeline.add(Write(seq=self.tracer.timeline.next_seq(), pid=pid, tid=tid, fd=fd,
                                                           text=text, via=via, backtrace=frames))
        if not self.window_depth.get(pid) and self.writes_left.pop(pid, None) is not None:
            self.maybe_close()  # the text we waited for after the init: done
        self.tracer.seen_pid(pid)
        return False

    def on_kill(self, pid, tid, nr, rdi, rsi, rdx) -> bool:
        """A fatal signal on its way to another traced process: stop (True) so that the
        catchpoint's commands can take the victim's backtraces before it lands."""
        via = KILL_SYSCALLS[nr]
        if via == "tgkill":
            victim, sig = memory.as_int32(rdi), rdx & 0xFF
        elif via == "pidfd_send_signal":
            victim, sig = pidfd_target(pid, memory.as_int32(rdi)), rsi & 0xFF
        else:
            victim, sig = memory.as_int32(rdi), rsi & 0xFF
            if via == "tkill":
                victim = thread_group(victim)
        if sig not in FATAL_SIGNALS or victim is None or victim == pid or victim not in self.tracer.live_pids:
            return False
        if (pid, victim, sig) in self.kills_seen:
            return False  # the C library's kill() seen at its entry (KillBreakpoint), now its system call
        self.kills_seen.add((pid, victim, sig))
        self.pending_kill = dict(pid=pid, tid=tid, victim=victim, signal=FATAL_SIGNALS[sig], via=via)
        self.landing = victim if sig == 9 and self._landable(pid, victim, via, rdi, rsi) else None
        return True

    def _landable(self, sender, victim, via, rdi, rsi) -> bool:
        """gdb lands this SIGKILL itself (land_kill): only while cuda-run drives (a gdb the user
        drives sees the signal as it comes), only a kill of the whole process (not of one of its
        threads), and only from its parent: the victim is then a zombie until the sender reaps it,
        so the sender's own kill still succeeds. A root process (gdb's child: gdb would reap it),
        a sibling's or a stranger's victim, and one already on its way out are left to the kernel."""
        from ..core.procfs import all_ended, parent_pid, thread_states
        from .state import State

        if not State.driving:
            return False
        if via not in ("kill", "pidfd_send_signal") and memory.as_int32(rsi if via == "tgkill" else rdi) != victim:
            return False
        return parent_pid(victim) == sender and not all_ended(thread_states(victim))

    def record_kill_recorded(self) -> None:
        """The pending kill of a process that records in-process, taken where it is caught, with no
        real stop: the victim's threads from /proc, each with the CUDA call it is inside from its
        ring (the calls it entered and never left). A real stop there, with gdb then resuming every
        thread of a process the kill is about to end, made multi-process runs fail to continue."""
        import os

        from .threads import blocked_in

        k, self.pending_kill = self.pending_kill, None
        rec = self.tracer.recording
        rec.drain(k["pid"])
        rec.drain(k["victim"])
        inside: dict[int, list] = {}
        for c in self.tracer.timeline.calls:
            if c.pid == k["victim"] and not c.returned:
                inside.setdefault(c.tid, []).append(c)
        threads = []
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{k['victim']}/task"))
        except OSError:
            tids = sorted(inside)
        for tid in tids:
            try:
                with open(f"/proc/{k['victim']}/task/{tid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                name = None
            calls = inside.get(tid) or []
            where = (f"{calls[-1].function} ({os.path.basename(calls[-1].library or '?')})" if calls else None)
            threads.append({"pid": k["victim"], "tid": tid, "name": name, "waiting_in": where,
                            "blocked": blocked_in(k["victim"], tid), "frames": []})
        tl = self.tracer.timeline
        tl.add(Kill(seq=tl.next_seq(), victim_age_s=age(k["victim"]), threads=threads, **k))

    # Why gdb lands a SIGKILL itself. Left to the kernel, the victim dies while gdb runs every
    # process: its threads end one by one while gdb resumes, stops or steps them, or reads their
    # registers. gdb (13 and 18 alike) then loses track now and then (about 1 run in 200 of a
    # discovery parent killing its child on a loaded machine): a continue ends with the sender
    # marked running though stopped ("Cannot execute this command while the selected thread is
    # running"), or gdb waits forever for a stop of the sender that it already took. Here every
    # thread is stopped, at the sender's kill: gdb kills the victim the way it kills a program
    # ('kill inferiors'), which waits for each of its threads to end. The sender then sends its
    # SIGKILL to a zombie, which succeeds as it would have; the victim's parent reaps the same
    # status (killed by SIGKILL). Only SIGKILL, which nothing can catch, and only to a whole process.
    def land_kill(self, victim):
        """From the commands of a real stop at a SIGKILL's sender: end VICTIM (see above)."""
        tracer = self.tracer
        inferior = next((i for i in gdb.inferiors() if i.pid == victim), None)
        if inferior is None or victim not in tracer.live_pids:
            return
        failed = tracer.end_inferior(inferior, "kill", 9)  # its wait status: killed by SIGKILL
        if failed:
            tracer.note_internal(f"landing the SIGKILL of {victim}: {failed}")  # the kernel lands it then

    def record_kill(self):
        """From the catchpoint's commands: the pending kill, with the victim's threads as they are."""
        from .threads import thread_snapshot

        k, self.pending_kill = self.pending_kill, None
        self.tracer.recording.drain(k["pid"])
        self.tracer.snapshot(k["victim"], "before it was killed")
        threads = []
        for inferior in gdb.inferiors():
            if inferior.pid == k["victim"]:
                threads = thread_snapshot(inferior, 24)
        tl = self.tracer.timeline
        tl.add(Kill(seq=tl.next_seq(), victim_age_s=age(k["victim"]), threads=threads, **k))


def _errno_name(number: int) -> str:
    import errno

    return errno.errorcode.get(number, f"errno {number}")


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
        tracer = _active()
        if tracer is None:
            return 0
        here, owner = gdb.selected_inferior().num, int(owner)
        if owner != here and (here in tracer.capture.catches or owner != min(tracer.capture.catches)):
            return 0  # another catchpoint answers for this inferior
        try:
            return 1 if tracer.capture.on_syscall() else 0
        except Exception as exc:  # an error in a condition would stop the program
            tracer.note_internal(f"on_syscall: {type(exc).__name__}: {exc}")
            return 0


def syscall_stop():
    """The catchpoint's commands (a command context): record a kill caught on its way, and
    switch the capture off if the window closed."""
    tracer = _active()
    if tracer is None:
        return
    capture = tracer.capture
    landing, capture.landing = capture.landing, None  # belongs to this stop's kill only
    if capture.pending_kill is not None:
        victim = capture.pending_kill["victim"]
        try:
            if tracer.recorded(victim):
                capture.record_kill_recorded()  # its ring says where it is: no thread of it is read
            else:
                capture.record_kill()
        except Exception as exc:  # never leave the program stopped because of us
            capture.pending_kill = None
            tracer.note_internal(f"record_kill: {type(exc).__name__}: {exc}")
        if landing == victim:
            capture.land_kill(victim)
    if not capture.window_open():
        capture.set_enabled(False)


def let_go_exiting(tracer) -> None:
    """From cuda-run's loop, after the continue that ExitBreakpoint's real stop ended: let the
    exiting process go (gdb detaches it, every thread stopped) and record its exit with the code
    it passed, which is the status its parent reaps. Never from the breakpoint's own commands:
    gdb 13 runs them from the stopped thread's list of breakpoint hits, and detaching deletes that
    thread under it (gdb died of SIGSEGV)."""
    from . import control

    if tracer.capture.exiting is None:
        return
    (pid, code), tracer.capture.exiting = tracer.capture.exiting, None
    inferior = next((i for i in gdb.inferiors() if i.pid == pid), None)
    if inferior is None or pid not in tracer.live_pids or tracer.stop_reason is not None:
        return  # the run is ending (a timeout, an interrupt): cuda-run ends it with the rest
    with control.sigstop_not_passed():  # the watchdog's SIGSTOP, should it come now, is not handed on
        failed = tracer.end_inferior(inferior, "detach", code << 8,
                                     "let go at its exit call; the code is the one it passed")
    if failed:
        tracer.note_internal(f"letting {pid} go at its exit: {failed}")  # followed to its end then
        return
    control.continue_if_held(pid)  # a SIGSTOP queued before the detach would hold it short of its exit


def _active():
    """The armed tracer, from the session's one root object."""
    from .state import State

    return State.tracer
