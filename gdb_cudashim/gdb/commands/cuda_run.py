"""cuda-run: run the program to the end under catch-init-error, children included, then report.

The loop resumes every process until none is left, or until the watchdog (gdb/control.py)
stops them: the --timeout deadline, the CLI's control pipe (the user interrupted the run,
or the CLI went away). Then it tears down: a launched program is killed, an attached one
is detached untouched (--detach). Either way the report is written.
"""
from __future__ import annotations

import os
import time

import gdb

from ...core.procfs import state as proc_state
from ...core.report import EXIT_USAGE
from .. import control, session
from ..command import Command, check_json, check_seconds, register
from ..capture import let_go_exiting
from ..threads import live_inferiors as _live




@register
class CudaRun(Command):
    name = "cuda-run"
    summary = "Run (or continue) every process to its end under catch-init-error, then print the report."

    @classmethod
    def build(cls, p):
        p.epilog = "Arms catch-init-error with its defaults first if it is not armed. Used by commands/*.gdb."
        p.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE")
        p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds and report the hang")
        p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
        p.add_argument("--verbose", action="store_true", help="every call and lookup, full backtraces")
        p.add_argument("--no-report", action="store_true", help="do not print the report (with --json)")
        p.add_argument("--detach", action="store_true", help="attached use: at the end (or --timeout) remove everything "
                       "armed, delete cuda-patch patches, and detach, leaving the processes running")
        p.add_argument("--quit", action="store_true", help="quit gdb with the report's exit status: 0 no failure, "
                       "1 failure caught, 2 could not run, 3 timed out, 4 no CUDA library loaded (nothing to diagnose)")
        # the CLI's side of the run (gdb-cudashim run/attach)
        p.add_argument("--control-fd", type=int, metavar="FD", help="read 'stop REASON' / 'dump FILE' lines from FD; "
                       "its end of file (the caller died) stops and tears down the run")
        p.add_argument("--stdio", metavar="OUT,ERR", help="give the program these descriptors as its stdout and stderr "
                       "(gdb's own output then stays out of the program's)")
        p.add_argument("--owned-dir", metavar="DIR", help="remove DIR at the end if the caller is gone")
        p.add_argument("--settle", type=float, metavar="S", help="a program still running S seconds after CUDA init "
                       "settled in every process is a server: report then, and leave it running untraced (or end "
                       "it with --end-server)")
        p.add_argument("--end-server", action="store_true", help="with --settle: end the server instead of leaving it")
        p.add_argument("--was-stopped", metavar="PIDS", default="", help="attached use: these processes were stopped "
                       "(SIGSTOP) before the attach; they are left stopped at the detach")

    def run(self, args, from_tty):
        # before anything runs: --json (or catch-init-error's, which may have become a directory
        # since), --timeout, --settle
        check_json(self.name, args.json or session.State.json_path)
        check_seconds(self.name, "--timeout", args.timeout)
        check_seconds(self.name, "--settle", args.settle)
        if session.State.tracer is None:
            gdb.execute("catch-init-error", to_string=True)
        t = session.State.tracer
        if args.detach and not _live():
            raise gdb.GdbError("cuda-run: --detach needs an attached process (attach PID first)")
        if args.control_fd is not None:
            try:
                os.set_inheritable(args.control_fd, False)  # never into the program
            except OSError as exc:
                raise gdb.GdbError(f"cuda-run: --control-fd {args.control_fd}: {exc.strerror}")
        timeout = args.timeout if args.timeout is not None else t.timeout
        started = time.monotonic()
        t.stop_reason = None
        t.capture.exiting = t.capture.landing = None  # nothing left over from an earlier run's stops
        stopped_before = {i.pid for i in _live() if proc_state(i.pid) == "T"}
        stopped_before |= {int(p) for p in args.was_stopped.split(",") if p.strip().isdigit()}
        _before_watch(t)
        settle = (lambda: t.settled(args.settle)) if args.settle else None
        dog = control.Watchdog(t, deadline=started + timeout if timeout else None, control_fd=args.control_fd,
                               dump=lambda path: _dump(path, started), settled=settle)
        sampler = None if t.follow_children else control.ChildSampler(t)
        session.State.driving = True
        status = None
        stops = _StopWatch()
        try:
            dog.start()
            if sampler is not None:
                sampler.start()
            _set_driving(1)  # our loop resumes, not the breakpoints' commands (capture.RESUME)
            status = self._drive(t, args, dog, stops)
        finally:
            _set_driving(0)
            dog.close()
            stops.disconnect()
            session.State.driving = False
            if sampler is not None:
                sampler.stop()
                _note_unfollowed(t, sampler)
        reason = t.stop_reason
        left_running = []
        if _live():
            if args.detach or (reason == "settled" and not args.end_server):
                if reason == "timeout" and _still_inside(t):
                    t.hang = session.collect_hang("timeout")  # a thread in CUDA init since before the watch
                    t.hang["after_seconds"] = round(time.monotonic() - started, 1)
                left_running = _detach_all(t, stopped_before)
            else:
                _end_all(t, reason, started)
        report = session.build_report(meta={"command": _command_line(), "elapsed_s": round(time.monotonic() - started, 3),
                                             "gdb_version": gdb.VERSION})
        if status is not None:
            report["status"] = status
        if reason not in (None, "timeout", "settled"):
            report["partial"] = True
            report["interrupted"] = reason
            if report["status"] == 0:
                report["status"] = EXIT_USAGE  # not followed to its end: no "no failure seen"
        if left_running:
            report["left_running"] = left_running
        if reason == "cli-gone":
            _remove_owned(args.owned_dir)
            gdb.execute("quit 2")
            return
        json_path = args.json or session.State.json_path
        if json_path:
            try:
                session.write_json(report, json_path)
            except OSError as exc:
                gdb.write(f"cuda-run: cannot write {json_path}: {exc.strerror}\n", gdb.STDERR)
                report["status"] = EXIT_USAGE
        if not args.no_report:
            session.print_report(report, args.color, args.verbose)
        if args.quit:
            gdb.execute(f"quit {report['status']}")

    def _drive(self, t, args, dog, stops):
        """Resume every process until none is left or the watchdog stopped them; the status
        when the program could not be run at all."""
        if t.stop_reason is not None:  # interrupted before anything ran: run nothing
            dog.ack()
            return None
        if not _live():
            saved = _program_args()
            try:
                gdb.execute(_run_command(args.stdio), to_string=True)
            except gdb.error as exc:
                gdb.write(f"{exc}\n", gdb.STDERR)  # gdb's own words ("No executable file specified.")
                if not t.timeline.processes:
                    t.note(f"could not run the program: {exc}")
                    return EXIT_USAGE
            finally:
                gdb.execute(f"set args {saved}", to_string=True)
        while True:
            if stops.user_interrupt and t.stop_reason is None:
                t.stop_reason = "SIGINT"  # Ctrl-C in an interactive gdb: the user wants out
            if t.stop_reason is not None:
                dog.ack()
                return None
            let_go_exiting(t)
            _collect_ended(t)
            if not _live():
                return None
            _select_a_live_thread()
            _cache_registers()
            try:
                gdb.execute("continue", to_string=True)
            except gdb.error as exc:
                # nothing is retried: a continue that failed half-way leaves gdb with threads it
                # believes running and no wait to collect them (see _cache_registers)
                gdb.write(f"{exc}\n", gdb.STDERR)
                t.note(f"continue failed: {exc}")
                from ...core.procfs import thread_states

                t.note_internal("threads at the failed continue: " + "; ".join(
                    f"pid {i.pid}: " + " ".join(f"{tid}={st}" for tid, st in sorted(thread_states(i.pid).items()))
                    for i in _live()) + "; gdb's view: " + _gdb_thread_view())
                t.stop_reason = "gdb could not continue"  # the report is partial, never a clean bill
                return None


# Why a multi-process 'continue' used to fail ("Couldn't get registers: No such process", then
# "the selected thread is running"), and what prevents it.
#
# With schedule-multiple on, gdb's 'continue' (infrun's proceed) resumes every thread of every
# process, one thread at a time, and reads each thread's registers (its PC) just before resuming
# it. A thread resumed early in that loop runs at once, and can end threads that gdb has not
# reached yet: a parent's kill(SIGKILL) of its child (a discovery runner killed at its timeout),
# a Go server's exit_group, which kills its own other threads. gdb's register read on such a
# thread fails with ESRCH and the error leaves proceed half-way: the threads resumed before it
# run on, marked "running", and no wait ever collects their events or the exit (a Python command
# never returns to gdb's event loop). Every later continue fails the same way, or on "the selected
# thread is running". Seen in dumps of gdb's threads at the failure: every thread of the exiting
# process a zombie in /proc, the ones before the current thread marked running, the rest stopped;
# before the continue all of them were in ptrace stop. Retrying the continue (the old loop) could
# never succeed: nothing in between let gdb wait. A loaded machine widens the window (1 run in 2
# of the Go server with a CPU hog per core).
#
# The fix: before each continue every thread's registers are read, so gdb holds them in its
# register cache and proceed reads them from there; resuming a thread that has meanwhile died is
# something gdb's Linux target already tolerates (it finds the thread gone and reports its exit
# at the wait), so the continue goes through and gdb collects the exit as a normal event. A
# thread's cache is dropped only when that thread is resumed, so nothing in between undoes it.
# Where the death can be seen coming, it is taken out of the resume altogether: a SIGKILL from
# one traced process to another is landed by gdb at the sender's kill (capture.land_kill), and a
# process with several threads is let go at its exit call (handlers.ExitBreakpoint, then
# capture.let_go_exiting from this loop).

def _cache_registers() -> None:
    """Read every stopped thread's registers (see above). One PTRACE_GETREGS per thread per
    continue; a thread whose registers cannot be read is left to gdb."""
    try:
        threads = [th for inferior in _live() for th in inferior.threads()]
    except (gdb.error, RuntimeError):
        return
    if len(threads) < 2:
        return  # one thread in all: nothing else runs while gdb resumes it
    here = gdb.selected_thread()
    for thread in threads:
        try:
            if not thread.is_valid() or thread.is_running() or thread.is_exited():
                continue
            thread.switch()
            gdb.parse_and_eval("$pc")
        except (gdb.error, RuntimeError):
            continue
    if here is not None and here.is_valid():
        try:
            here.switch()
        except (gdb.error, RuntimeError):
            pass


def _gdb_thread_view() -> str:
    """Each thread as gdb holds it (running, stopped, exited, selected), for the note of a failed
    continue: which one gdb could not read is the one it holds as stopped that /proc has ended."""
    out = []
    try:
        here = gdb.selected_thread()
        for inferior in _live():
            for th in inferior.threads():
                try:
                    state = "running" if th.is_running() else "exited" if th.is_exited() else "stopped"
                    out.append(f"{th.ptid[1]}={state}" + ("*" if th == here else ""))
                except (gdb.error, RuntimeError):
                    out.append(f"{th.ptid[1]}=?")
    except (gdb.error, RuntimeError) as exc:
        out.append(f"({exc})")
    return " ".join(out)


def _collect_ended(tracer) -> None:
    """A process whose threads have all ended while gdb held it (SIGKILLed by its parent while
    gdb stopped everything for another process's event) is a zombie gdb has not collected yet:
    none of its threads' registers can be read, so the next 'continue' would fail on them (see
    above). Collected here first: its wait status from /proc, then gdb's kill, which reaps it
    (the exit event says what the kernel said, not that we ended it)."""
    import time

    from ...core.procfs import ENDED, all_ended, exit_status, settled, thread_states

    for inferior in _live():
        states = thread_states(inferior.pid)
        if any(st in ENDED for st in states.values()):
            # some threads ended: an exit_group (a Go program's end) or a SIGKILL may still be tearing
            # the process down, its last threads running their exit (state R or D, not a tracing stop
            # 't': gdb holds every thread). Wait until each thread has ended or sits stopped; a thread
            # that ended on its own while the rest live on leaves the others in 't' and costs no wait
            deadline = time.monotonic() + 2.0
            while not settled(states) and time.monotonic() < deadline:
                time.sleep(0.005)
                states = thread_states(inferior.pid)
        if not all_ended(states):
            # threads live on; or the process is gone from /proc altogether: then gdb's own wait
            # took its exit and holds it as a pending event, with the status, and the continue
            # reports it without touching the process (collecting it here lost that status: 20
            # children that exited 0 came out "exit code unknown")
            continue
        failed = tracer.end_inferior(inferior, "kill", exit_status(inferior.pid))  # gdb's kill reaps it
        if failed:
            tracer.note_internal(f"collecting ended process {inferior.pid}: {failed}")


def _select_a_live_thread() -> None:
    """The continue starts from the selected thread: it must belong to a process gdb still
    holds (after an exit gdb selects none, or one of a process that has gone), not be running,
    and be one the kernel still runs (not a zombie: a finished Go runtime thread). Of those, one
    of the oldest process gdb holds (the root of the tree): gdb resumes the selected thread last
    and reads its registers anew, and a child is what a parent resumed earlier in the same
    continue kills (a discovery runner ended at its timeout or at the end of the pass: "Couldn't
    get registers: No such process" with the child's leader selected, 1 run in ~150 of the Go
    server under load). A process whose threads are all gone still has its exit to report: one
    of its threads then."""
    try:
        here = gdb.selected_thread()
        candidates = [th for inferior in sorted(_live(), key=lambda i: i.num)
                      for th in inferior.threads() if th.is_valid() and not th.is_running()]
        if here is not None and here.inferior.pid and not here.is_running() and here not in candidates:
            candidates.append(here)
        best = next((th for th in candidates if _thread_alive(th)), candidates[0] if candidates else None)
        if best is not None and best != here:
            if gdb.selected_inferior().num != best.inferior.num:
                gdb.execute(f"inferior {best.inferior.num}", to_string=True)
            best.switch()
    except (gdb.error, RuntimeError):
        pass


def _thread_alive(thread) -> bool:
    pid, tid = thread.ptid[0], thread.ptid[1]
    return proc_state(tid) not in (None, "Z", "X") and os.path.isdir(f"/proc/{pid}/task/{tid}")


def _set_driving(value: int) -> None:
    """$_gdb_cudashim_driving. gdb may report an error of the moment here (a process that
    just went: "Couldn't get registers: No such process"); the value is set regardless."""
    for _ in range(3):
        try:
            gdb.set_convenience_variable("_gdb_cudashim_driving", value)
            return
        except gdb.error:
            continue


class _StopWatch:
    """Notices a SIGINT stop that the watchdog did not cause (Ctrl-C in an interactive gdb)."""

    def __init__(self):
        self.user_interrupt = False
        gdb.events.stop.connect(self._on_stop)

    def _on_stop(self, event):
        if isinstance(event, gdb.SignalEvent) and event.stop_signal == "SIGINT":
            self.user_interrupt = True

    def disconnect(self):
        try:
            gdb.events.stop.disconnect(self._on_stop)
        except (ValueError, RuntimeError):
            pass


def _note_unfollowed(tracer, sampler):
    """--no-follow-children: say which children were not traced, and which of them loaded CUDA."""
    for pid, seen in sorted(sampler.children.items()):
        if pid in tracer.pids or any(p.pid == pid for p in tracer.timeline.processes):
            continue
        prog = os.path.basename(seen["exe"] or "?")
        if seen["cuda"]:
            tracer.note(f"pid {pid} ({prog}, a child of {seen['parent']}) loaded {', '.join(seen['cuda'])} but was not "
                        "followed (--no-follow-children): its CUDA init is not in this report; run without "
                        "--no-follow-children to see it")
        else:
            tracer.note(f"pid {pid} ({prog}, a child of {seen['parent']}) was not followed (--no-follow-children)")


def _run_command(stdio: str | None) -> str:
    """'run', giving the program the caller's stdout/stderr descriptors (through the
    startup shell's redirections) instead of gdb's, which go to gdb's log."""
    if not stdio:
        return "run"
    out, err = (x.strip() for x in stdio.split(",", 1))
    redirect = []
    for target, fd in (("1", out), ("2", err)):
        redirect.append(f"{target}>&{fd}" if fd.isdigit() else f"{target}>&-")
    redirect += [f"{fd}>&-" for fd in (out, err) if fd.isdigit()]
    return f"run {_program_args()} {' '.join(redirect)}"


def _program_args() -> str:
    """The program's arguments as gdb holds them (gdb 13 has no Python API for them:
    gdb.parameter('args') is always empty)."""
    text = gdb.execute("show args", to_string=True).strip()
    start, end = text.find('"'), text.rfind('"')
    return text[start + 1:end] if 0 <= start < end else ""


def _before_watch(tracer):
    """An attach: what was there before the watch (#21): the CUDA files mapped and the shims'
    globals (what an init that already ran left), and the threads already inside CUDA."""
    for inferior in _live():
        tracer.snapshot(inferior.pid, "when the watch began")
        try:
            threads = session.thread_snapshot(inferior)
        except gdb.error:
            continue
        tracer.timeline.watch_began += [th for th in threads if th["waiting_in"]]


def _still_inside(tracer) -> bool:
    """A thread inside CUDA when the watch began is there still, in the same place."""
    if not tracer.timeline.watch_began:
        return False
    now = {}
    for inferior in _live():
        try:
            now.update({th["tid"]: th["waiting_in"] for th in session.thread_snapshot(inferior)})
        except gdb.error:
            continue
    return any(now.get(th["tid"]) == th["waiting_in"] for th in tracer.timeline.watch_began)


def _end_all(tracer, reason, started):
    """A launched program is ended. At the timeout, every thread's backtrace first."""
    if reason in ("timeout", "SIGINT", "SIGTERM", "SIGHUP", "cli-gone"):
        try:
            tracer.hang = session.collect_hang(reason)
            tracer.hang["after_seconds"] = round(time.monotonic() - started, 1)
        except gdb.error as exc:
            tracer.note(f"could not read the threads: {exc}")
    # the exit events say why the tool ended them: a settled server is ended only on request
    tracer.ending = "--end-server" if reason == "settled" else (reason or "the run ended")
    gdb.execute("kill inferiors " + " ".join(str(i.num) for i in _live()), to_string=True)


def _detach_all(tracer, stopped_before=()) -> list[int]:
    """Leave every process running and exactly as it was: no breakpoint, no patch, settings
    restored, no signal of ours delivered. Returns the pids left running."""
    for inferior in _live():  # an attached server's CUDA files and shim state (once: none seen at its init)
        tracer.snapshot(inferior.pid, "when it was left running")
    if session.State.patches:
        gdb.execute("cuda-patch delete all", to_string=True)
    tracer.disarm()  # restores gdb's own settings too: nothing the report needs to say
    session.State.tracer = None
    live = _live()
    pids = [i.pid for i in live]
    # a watchdog SIGSTOP is the last stop signal: never hand it to the program on detach
    with control.sigstop_not_passed():
        gdb.execute("detach inferiors " + " ".join(str(i.num) for i in live), to_string=True)
    for pid in pids:
        if pid not in stopped_before:
            control.continue_if_held(pid)
    # one that was already exiting when gdb let go is gone (or a zombie): never name a pid
    # to kill that may be someone else's by now
    pids = [p for p in pids if proc_state(p) not in (None, "Z", "X")]
    if not pids:
        return []
    names = ", ".join(f"{p} ({os.path.basename(tracer.exes.get(p) or '?')})" for p in pids)
    if tracer.stop_reason == "settled":
        tracer.note(f"CUDA init settled and the program went on running: left running untraced: {names}; "
                    f"stop it with: kill {' '.join(map(str, pids))}")
    else:
        tracer.note(f"detached from {names}; left running untraced")
    session.State.tracer = tracer  # build_report still reads its timeline
    return pids


def _dump(path, started):
    """The watchdog thread's partial report (the CLI asked: gdb may be stuck). No gdb calls."""
    from ...core.files import write_text
    from ...core.report import to_json

    report = session.build_report(meta={"command": [], "elapsed_s": round(time.monotonic() - started, 3),
                                     "gdb_version": gdb.VERSION})
    report["partial"] = True
    write_text(path, to_json(report))


def _remove_owned(folder):
    """The CLI that made FOLDER is gone: remove what it would have removed (its files, and the
    recorder's rings in their folder)."""
    if not folder or not os.path.basename(folder).startswith("gdb-cudashim-"):
        return
    import shutil

    if session.State.tracer is not None:
        session.State.tracer.recording.remove()
    shutil.rmtree(folder, ignore_errors=True)


def _command_line():
    try:
        prog = gdb.current_progspace().filename or ""
        extra = _program_args()
        return [prog] + ([extra] if extra else [])
    except gdb.error:
        return []
