"""gdb-cudashim: the command outside gdb (batch runs, gdb launcher, set-up checks, audit).

Exit statuses: 0 no CUDA init failure seen, 1 failure found, 2 usage or environment error, 3 timed out,
4 no CUDA library was loaded (nothing to diagnose).
"""
from __future__ import annotations

import signal
import sys


def _interrupted_early(signo, _frame):
    """A stop signal before the command has set up its own handling: exit 128+N quietly,
    never a traceback out of an import."""
    raise SystemExit(128 + signo)


for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _interrupted_early)

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402

from . import cachedir, deps  # noqa: E402
from .core.term import help_width  # noqa: E402

EXIT_USAGE = 2
SYSTEM_DEBUG_ENV = "GDB_CUDASHIM_SYSTEM_DEBUG"  # 1: batch runs read /usr/lib/debug as gdb does by default
EXIT_TIMEOUT = 3
EVERY_RETURN_HELP = ("watch every symbol lookup to its return instead of answering found/NULL from the "
                     "library's symbol tables (slower; the default still watches the lookups the findings use)")
FORCE_HELP = ("let --json replace an existing file that is not a gdb-cudashim report (by default only an empty "
              "file or an earlier report is replaced)")
GDBINIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gdbinit.py")


class CliError(Exception):
    """One line for the user; exit status 2."""


# Everything before gdb starts delays the run: json, shutil, tempfile and sysconfig
# (~10 ms of imports) are not needed for it.
def _which(name: str) -> str | None:
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _gdb():
    """The gdb to run (gdbs.Gdb): GDB, else the system gdb, else the gdb-for-pwndbg wheel's."""
    from . import gdbs

    gdb = gdbs.pick()
    if gdb is None:
        if os.environ.get("GDB"):
            raise CliError(f"gdb not found (GDB={os.environ['GDB']}): set GDB=/path/to/gdb, or unset it to use "
                           "the system gdb or the gdb-for-pwndbg wheel's")
        raise CliError("gdb not found: install it (Debian/Ubuntu: apt-get install gdb; or pip install "
                       f"'{gdbs.WHEEL}=={gdbs.WHEEL_VERSION}' into this Python) or set GDB=/path/to/gdb")
    return gdb


def _gdb_env() -> dict:
    env = dict(os.environ)
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    env["GDB_CUDASHIM_SITE"] = os.pathsep.join(filter(None, [env.get("GDB_CUDASHIM_SITE"), site]))
    return env


def _color(flag: str) -> bool:
    if flag == "always":
        return True
    if flag == "never" or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout is not None and sys.stdout.isatty()


def _check_program(argv: list[str]) -> str:
    if not argv:
        raise CliError("no program given: gdb-cudashim run [OPTIONS] -- PROGRAM [ARGS...]")
    prog = argv[0]
    path = prog if os.sep in prog else _which(prog)
    if not path or not os.path.exists(path):
        raise CliError(f"no such program: {prog}")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CliError(f"not an executable program: {prog}")
    return path


def _gdb_base(env: dict, batch: bool = True) -> tuple[list[str], dict, object]:
    """gdb with the extension loaded; LD_PRELOAD moves from gdb itself to the program.
    A batch run prints no program values, so it skips auto-loading the libraries' gdb
    scripts (libstdc++'s pretty-printers alone are ~0.03 s of compiling per run)."""
    gdb = _gdb()
    cmd = [gdb.path, "-nx", "-q"]
    if batch:  # only catch-init-error and cuda-run are loaded (gdb/loader.py)
        cmd += ["-iex", "set auto-load python-scripts off", "-iex", "set $gdb_cudashim_batch = 1",
                # no libthread_db: gdb follows threads by their LWPs (names from /proc) all the same, and
                # its thread_db lookups in a process that is being killed made a continue fail ("Cannot
                # find user-level thread for LWP N"), 1 run in 50 under make stress
                "-iex", "set libthread-db-search-path /nonexistent-gdb-cudashim"]
        index = cachedir.gdb_index()
        if index:
            cmd += ["-iex", f'set $gdb_cudashim_index_cache = "{index}"']
        if env.get(SYSTEM_DEBUG_ENV) != "1":
            # The system's separate debug info (libc6-dbg and the like under /usr/lib/debug): a batch
            # run prints no libc source or locals, yet gdb would decompress and index it while the
            # program waits at its first library stop, and expand a libc unit at our first
            # breakpoint there (~0.1 s of each run on 2 cores). libc frames are named from its own
            # symbols. Debug files next to the user's own libraries (.debug/, debuglink) still load.
            cmd += ["-iex", "set debug-file-directory"]
    cmd += ["-iex", "set print inferior-events off", "-iex", "set print thread-events off", "-iex", f"source {GDBINIT}"]
    # the wheel's launcher set PYTHONHOME/PYTHONPATH for gdb's Python: the program gets the user's own
    for line in gdb.program_env_commands(env):
        cmd += ["-iex", line]
    preload = env.pop("LD_PRELOAD", None)
    if preload:
        cmd += ["-iex", f"set environment LD_PRELOAD={preload}"]
    return cmd, env, gdb


def _gdb_command(words: list[str]) -> str:
    """One of our gdb commands as a line its parser (shlex.split) reads back word for word:
    a path with a space or a quote ($TMPDIR='/tmp/a b') stays one argument."""
    return " ".join(shlex.quote(w) for w in words)


def _check_report_args(args) -> None:
    """--json and --timeout, shared by run and attach."""
    if args.json is not None:
        from .core.files import check_writable

        problem = check_writable(args.json, force=args.force)
        if problem:
            raise CliError(problem)


def _seconds(text: str) -> float:
    """--timeout: a finite positive number of seconds (inf, nan, 1e300, -1 are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (0 < value <= MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {text!r}")
    return value


MAX_TIMEOUT = 1e6  # 11 days: gdb's timers and ours stay exact
SETTLE_S = 5.0
GRACE_S = 15.0  # after the deadline (or a first interrupt), how long gdb gets to stop and report
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FROZEN_S = 2.0  # past the deadline, gdb held still from outside this long is ended
LOOK_S = 0.5  # how often the supervisor looks whether gdb was stopped from outside
DETACH_WAIT_S = 10.0  # an attach: how long a woken gdb gets to detach before it is ended


class _Supervisor:
    """gdb-cudashim's side of a gdb run. gdb runs in a session of its own, so the terminal's
    Ctrl-C (and a hangup) reaches only us: the first SIGINT/SIGTERM/SIGHUP asks gdb, on
    its control pipe, to stop the programs, tear down and report; a second one, or gdb not
    answering GRACE_S after the deadline, ends gdb from here: a launched program with it, an
    attached one is rescued (breakpoints taken out of its code) and left running."""

    def __init__(self, tmp: str, attach_pid: int | None, timeout: float | None):
        self.tmp = tmp
        self.attach_pid = attach_pid
        self.timeout = timeout
        self.signals: list[int] = []
        self.interrupted: int | None = None  # the first stop signal
        self.hard_stopped = False
        self.notes: list[str] = []
        self.was_stopped: set[int] = set()
        self.resumed = 0  # how many times gdb was found stopped (SIGSTOP) and resumed
        self.frozen_at: float | None = None  # since when gdb is held from outside past the deadline
        self.control_r, self.control_w = os.pipe()  # gdb reads, we write; its EOF = we are gone
        # our handlers from before gdb exists: a signal in between must neither kill us (and
        # orphan gdb, in a session of its own) nor be lost
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._old_wakeup = signal.set_wakeup_fd(self.wake_w)

    def spawn(self, cmd: list[str], env: dict, give_stdio: bool) -> int:
        """gdb, its output into the log; the program gets our stdout/stderr as 3/4 (cuda-run --stdio)."""
        import fcntl

        log = os.open(os.path.join(self.tmp, "gdb.log"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (log, self.control_r)]
        os.close(log)
        log_hi, control_hi = high
        actions = []
        if give_stdio:
            for src, dst in ((1, 3), (2, 4)):
                if _fd_open(src):
                    actions.append((os.POSIX_SPAWN_DUP2, src, dst))
            if not _fd_open(0):
                actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        else:
            actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        actions += [(os.POSIX_SPAWN_DUP2, log_hi, 1), (os.POSIX_SPAWN_DUP2, log_hi, 2),
                    (os.POSIX_SPAWN_DUP2, control_hi, CONTROL_FD)]
        try:
            pid = os.posix_spawn(cmd[0], cmd, env, file_actions=actions, setsid=True)
        finally:
            for fd in (log_hi, control_hi, self.control_r):
                os.close(fd)
        self.pid = pid
        return pid

    def _on_signal(self, signo, _frame):
        self.signals.append(signo)

    def wait(self) -> int:
        """Until gdb ends; its exit status (negative: killed by that signal)."""
        import select

        wake_r = self.wake_r
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None
        started = time.monotonic()
        give_up_at = started + self.timeout + GRACE_S if self.timeout else None
        nudged = False
        next_look = started + LOOK_S
        try:
            while True:
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    return os.waitstatus_to_exitcode(status)
                while self.signals:
                    signo = self.signals.pop(0)
                    if self.interrupted is None:
                        self.interrupted = signo
                        self._send(f"stop {signal.Signals(signo).name}\n")
                        give_up_at = time.monotonic() + GRACE_S
                    else:
                        self.notes.append(f"second {signal.Signals(signo).name}: gdb ended at once")
                        return self._hard_stop()
                now = time.monotonic()
                if now >= next_look:
                    next_look = now + LOOK_S
                    held = self._resume_if_stopped()
                    if held and give_up_at is not None and (self.interrupted is not None or (
                            self.timeout and now >= started + self.timeout)):
                        # gdb is held from outside (a stop, a tracer) past the deadline: it gets
                        # a short while to report, not the grace of a gdb still at work
                        if not self.frozen_at:
                            self.frozen_at = now
                        elif now - self.frozen_at >= FROZEN_S:
                            self.notes.append("gdb was held still from outside past the deadline; gdb-cudashim ended it")
                            return self._hard_stop()
                    else:
                        self.frozen_at = None
                if give_up_at is not None and now >= give_up_at:
                    if not nudged:
                        # gdb 13 can sleep in sigsuspend forever when its SIGCHLD went to another
                        # thread: one more SIGCHLD wakes it
                        nudged = True
                        os.kill(self.pid, signal.SIGCHLD)
                        give_up_at = now + 3.0
                        continue
                    self.notes.append("gdb stopped answering; gdb-cudashim ended it")
                    self.notes.append(f"internal: the threads gdb was tracing then: {_traced_threads(self.pid)}")
                    return self._hard_stop()
                wait = max(0.0, min(next_look, give_up_at or next_look) - now)
                if pidfd is None:
                    wait = min(wait, 0.05)
                try:
                    select.select([wake_r] + ([pidfd] if pidfd is not None else []), [], [], wait)
                except InterruptedError:
                    pass
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                except OSError:
                    pass
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _resume_if_stopped(self) -> bool:
        """gdb stopped by SIGSTOP (its own program's kill -STOP $PPID, say: gdb runs in a session of
        its own, so no terminal stops it) cannot watch, time out or answer: resume it, once said."""
        from .core.procfs import state

        st = state(self.pid)
        if st == "t":
            return True  # traced: another debugger holds it, and only that one can let it go
        if st == "T":
            if not self.resumed:
                self.notes.append("gdb was stopped (SIGSTOP or the like) by another process, one of its programs "
                                  "most likely; gdb-cudashim resumed it")
            self.resumed += 1
            try:
                os.kill(self.pid, signal.SIGCONT)
            except OSError:
                pass
            return True
        return False

    def _send(self, line: str) -> None:
        try:
            os.write(self.control_w, line.encode())
        except OSError:
            pass

    def _hard_stop(self) -> int:
        """gdb is not answering, or the user insisted. A run: ask gdb's watchdog thread for what
        it has, then end gdb and the programs it started (they share its process group). An
        attach: gdb is the only one that can take its breakpoints out of a thread stopped at
        one, so it is woken first (SIGCONT, SIGCHLD) and given time to detach; only if it still
        does not, it is ended and its breakpoints are taken out of the code from here."""
        self.hard_stopped = True
        partial = os.path.join(self.tmp, "partial.json")
        self._send(f"dump {partial}\n")
        for sig in (signal.SIGCONT, signal.SIGCHLD):  # a stopped or sleeping gdb can answer then
            try:
                os.kill(self.pid, sig)
            except OSError:
                pass
        if self.attach_pid is not None:
            end = time.monotonic() + DETACH_WAIT_S
            while time.monotonic() < end:
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    self.notes.append("gdb was woken and detached")
                    return os.waitstatus_to_exitcode(status)
                time.sleep(0.05)
        for _ in range(30):
            if os.path.exists(partial):
                break
            time.sleep(0.05)
        targets = self._hold_attached()
        if targets:
            self.notes.append("gdb did not detach; gdb-cudashim ended it and took its breakpoints out itself "
                              "(a thread stopped at one of them at that moment may die of SIGTRAP)")
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        self._rescue(targets)
        return os.waitstatus_to_exitcode(status)

    def after_gdb_died(self):
        """gdb died on its own: the programs it started go with it (its process group); an
        attached process gets its code back and runs on."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self._rescue(self._hold_attached())

    def _hold_attached(self) -> list[int]:
        """The attached process and its children, held still (SIGSTOP) while gdb goes and the
        code is put back; [] for a run."""
        from .core.procfs import descendants

        if self.attach_pid is None:
            return []
        targets = [self.attach_pid] + descendants(self.attach_pid)
        for p in targets:
            try:
                os.kill(p, signal.SIGSTOP)
            except OSError:
                pass
        return targets

    def _rescue(self, targets) -> None:
        from .core import rescue

        if targets:
            time.sleep(0.05)
            self.notes += rescue.rescue(targets, self.was_stopped)

    def close(self):
        signal.set_wakeup_fd(self._old_wakeup)
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        for fd in (self.control_w, self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


CONTROL_FD = 5  # gdb's descriptor for our control pipe (0-2 its stdio, 3-4 the program's)


def _traced_threads(pid: int) -> str:
    from .core.procfs import traced_threads

    try:
        return traced_threads(pid)
    except OSError as exc:
        return f"(/proc: {exc.strerror})"


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _gdb_report(make_cmd, env, no_report, attach_pid=None, timeout=None) -> dict:
    """Run the gdb command that make_cmd(report_path) builds, supervised; return the report
    it wrote (a partial one if the run was interrupted). no_report(log_text, status) raises
    the CliError that says why there is none."""
    where = os.environ.get("TMPDIR") or "/tmp"
    tmp = os.path.join(where, f"gdb-cudashim-{os.getpid()}-{os.urandom(6).hex()}")
    sup = _Supervisor(tmp, attach_pid, timeout)
    try:
        os.mkdir(tmp, 0o700)  # fails rather than reuse anything already there
    except OSError as exc:
        sup.close()
        raise CliError(f"cannot make a temporary directory in {where} (TMPDIR): {exc.strerror}") from None
    problem = _tmp_room(tmp)
    if problem:
        sup.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise CliError(f"the temporary folder {where} (TMPDIR) {problem}: gdb's log, the report and the "
                       f"recorder's rings go there; free some space or point TMPDIR at a folder with room")
    report_path = os.path.join(tmp, "report.json")
    try:
        if attach_pid is not None:
            from .core.procfs import descendants, state

            sup.was_stopped = {p for p in [attach_pid] + descendants(attach_pid) if state(p) == "T"}
        cmd = make_cmd(report_path, tmp)
        # the in-process recorder's rings go in here too (gdb/recording.py), so they go with it
        sup.spawn(cmd, dict(env, GDB_CUDASHIM_RING_PARENT=tmp), give_stdio=attach_pid is None)
        ooms = _oom_kills()
        _warm_up_renderer()  # while gdb runs: the imports cost ~0.1 s of a ~1 s run
        status = sup.wait()
        died = None
        if status < 0 and not sup.hard_stopped:  # gdb itself was killed (or crashed)
            programs = _session_members(sup.pid)  # gdb's programs, before they go with it
            sup.after_gdb_died()
        report = _load_report(report_path) or _load_report(os.path.join(tmp, "partial.json"))
        if status < 0 and not sup.hard_stopped:
            died = _gdb_death(-status, sup.pid, report, programs, ooms)
        if report is None:
            log = _read_log(tmp)
            if "No space left on device" in log or _tmp_room(tmp, probe=False, need=PROBE_BYTES):
                raise CliError(f"the report was lost: the temporary folder {where} (TMPDIR) filled up during the run "
                               f"(gdb ended with status {status}); free some space there or point TMPDIR at a "
                               "folder with room, and run again")
            if sup.interrupted is None and not sup.hard_stopped and status >= 0:
                no_report(log, status)
            report = _empty_report()
            if sup.hard_stopped and not died:
                died = ("gdb stopped answering and gdb-cudashim ended it before it could write any report; "
                        "nothing it saw is known")
        if sup.interrupted is None and (sup.hard_stopped or status < 0):
            report["status"] = EXIT_TIMEOUT if sup.hard_stopped else EXIT_USAGE
        if died:
            report["gdb_died"] = died
        if sup.interrupted is not None or sup.hard_stopped or status < 0:
            report["partial"] = True
            if sup.interrupted is not None:
                report["interrupted"] = signal.Signals(sup.interrupted).name
                report["exit_signal"] = sup.interrupted
        notes = report.setdefault("notes", [])
        notes += [n for n in sup.notes if n not in notes]
        return report
    finally:
        sup.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # our files, and the recorder's rings in their folder


SENT_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE}


def _gdb_death(signo: int, gdb_pid: int, report, programs: list[tuple[int, str]], ooms: int | None) -> str:
    """One line on how gdb went when it was not us who ended it: killed by another process
    (which one, when its kill was seen: the report's kills, the kernel's OOM count in
    /proc/vmstat) or crashed."""
    name = signal.Signals(signo).name
    kill = next((k for k in (report or {}).get("kills") or [] if k.get("victim") == gdb_pid), None)
    if kill:
        return f"gdb was killed ({name}) by pid {kill.get('pid')}, one of its programs ({kill.get('via', 'kill')})"
    after = _oom_kills()
    if signo == signal.SIGKILL and ooms is not None and after is not None and after > ooms:
        return f"gdb was killed ({name}), most likely by the kernel's OOM killer (/proc/vmstat oom_kill rose by " \
               f"{after - ooms} during the run)"
    if signo in SENT_SIGNALS:
        running = ", ".join(f"{p} ({c})" for p, c in programs[:4])
        return (f"gdb was killed ({name}) by another process, not by gdb-cudashim: one of its programs killing its "
                f"parent, a kill -9, a supervisor" + (f"; its programs then: {running}" if running else "")
                + "; nothing after that was watched")
    return f"gdb crashed ({name}); nothing after that was watched"


def _oom_kills() -> int | None:
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, comm) of the live processes in session SID (gdb's: the programs it started, each in
    a process group of its own)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == sid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and fields[0] != "Z" and fields[3] == str(sid):
            out.append((int(entry), stat[stat.find("(") + 1:stat.rfind(")")]))
    return sorted(out)


TMP_ROOM = 16 << 20  # gdb's log, the report, the recorder's rings (sparse, written as they fill)
PROBE_BYTES = 64 << 10


def _tmp_room(folder: str, probe: bool = True, need: int = TMP_ROOM) -> str | None:
    """Why FOLDER cannot take a run's files, or None: too little free space (a ring that cannot
    grow is a SIGBUS in the program), or a probe file that cannot be written and synced."""
    try:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if free < need:
        return f"has {free >> 10} KiB free, less than the {need >> 20} MiB a run needs"
    if not probe:
        return None
    path = os.path.join(folder, "probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError as exc:
        return f"cannot take a {PROBE_BYTES >> 10} KiB file ({exc.strerror})"
    return None


def _load_report(path):
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_log(tmp) -> str:
    try:
        with open(os.path.join(tmp, "gdb.log"), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _empty_report() -> dict:
    from .core.report import SCHEMA

    return {"schema": SCHEMA, "status": EXIT_USAGE, "meta": {}, "errors": [], "calls": [], "lookups": [], "loads": [],
            "findings": [], "processes": [], "hang": None, "stops": 0,
            "notes": ["gdb ended before it could write any report"]}


def _warm_up_renderer() -> None:
    """Import what rendering the report needs (tabulate, pygments) while gdb is busy."""
    import json  # noqa: F401

    try:
        import pygments.console  # noqa: F401
        import tabulate  # noqa: F401

        from .core import report  # noqa: F401
    except ImportError:
        pass  # reported when the report is rendered


def _emit(report: dict, args, command: list[str], gdb, ref: dict | None = None) -> int:
    """Write --json, print the report, and return the exit status: the report's, or
    128+N when the run was stopped by signal N. With REF (run --compare), the differences
    from it follow the report, and a clean run that differs from it exits 1."""
    from .core.report import render, to_json

    meta = report.setdefault("meta", {})
    meta["command"] = command
    meta["gdb"] = gdb.describe(meta.get("gdb_version"))  # which gdb ran it, in one line
    status = int(report.get("status", 1))
    if report.get("exit_signal"):
        status = 128 + int(report["exit_signal"])
    compared = _compare_with(ref, report, args.compare) if ref is not None else None
    if compared and compared[0] and status == 0:
        status = 1
    from .core.files import stream_fd

    stream = stream_fd(args.json) if args.json else None
    if args.json:
        from .core.files import write_text

        if status == EXIT_USAGE and not report.get("gdb_died") and stream is None and os.path.lexists(args.json):
            print(f"gdb-cudashim: the run did not start; {args.json} left as it was", file=sys.stderr)
        else:
            try:
                write_text(args.json, to_json(report))
            except OSError as exc:
                print(f"gdb-cudashim: cannot write --json {args.json}: {exc.strerror}", file=sys.stderr)
                status = EXIT_USAGE if status in (0, 1, 4) else status
    lines = render(report, color=_color(args.color), verbose=args.verbose)
    if report.get("walls") is not None:
        from .core import walls as walls_mod

        lines += walls_mod.render(report["walls"], report.get("walls_s") or 0.0, report.get("tested") or [])
    if compared:
        lines += [""] + compared[1]
    _print("\n".join(lines) + "\n", sys.stderr if stream == 1 else sys.stdout)
    return status


def _print(text: str, out) -> None:
    """TEXT to OUT, quietly when nobody reads: OUT closed (>&-: None) or a reader gone (| head -1)."""
    if out is None:
        return
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())  # no second error when Python flushes at exit
        os.close(devnull)


def cmd_run(args) -> int:
    program = _check_program(args.command)
    for pattern in args.pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CliError(f"bad --pattern {pattern!r}: {exc}")
    _check_report_args(args)
    if args.max_walls < 1:  # as cuda-whatif: a chain of no wall is a run that proves nothing
        raise CliError("--max-walls must be 1 or more")
    ref = _load_reference(args.compare) if args.compare else None
    base, env, gdb = _gdb_base(_gdb_env())
    arm = ["catch-init-error"] + [f"--pattern={shlex.quote(p)}" for p in args.pattern]
    if not args.follow:
        arm.append("--no-follow-children")
    if args.every_return:
        arm.append("--every-return")

    def make_cmd_with(patches, end_server=args.end_server):
        def make_cmd(report_path, tmp):
            drive = ["cuda-run", "--no-report", "--quit", "--json", report_path, "--control-fd", str(CONTROL_FD),
                     "--stdio", f"{3 if _fd_open(1) else '-'},{4 if _fd_open(2) else '-'}", "--owned-dir", tmp]
            if args.timeout:
                drive += ["--timeout", repr(args.timeout)]
            if args.settle:
                drive += ["--settle", repr(args.settle)] + (["--end-server"] if end_server else [])
            patch = [x for p in patches for x in ("-ex", "cuda-patch " + " ".join(shlex.quote(a) for a in p))]
            return base + ["-batch", "-ex", " ".join(arm), *patch, "-ex", _gdb_command(drive), "--args",
                           *program_argv]

        return make_cmd

    def no_report(log, status):
        last = _last_line(log)
        raise CliError(f"gdb ended (status {status}) without a report" + (f": {last}" if last else "")
                       + "; run the same under 'gdb-cudashim gdb --args ...' to see why")

    program_argv = _exec_argv(program, args.command[1:])
    if not _gdb_passes(program_argv):  # argv through the environment, read back by the start-up shell
        env[ARGV_VAR] = "set -- " + " ".join(shlex.quote(w) for w in [program] + args.command[1:])
        program_argv = ["/bin/sh", "-c", f'eval "${ARGV_VAR}"; unset {ARGV_VAR}; exec "$@"', "gdb-cudashim"]
    report = _gdb_report(make_cmd_with([]), env, no_report, timeout=args.timeout)
    if args.what_if and not report.get("partial"):
        report["walls"], report["tested"], report["walls_s"] = _what_if(report, make_cmd_with, env, no_report, args)
    return _emit(report, args, args.command, gdb, ref)


def _what_if(report: dict, make_cmd_with, env, no_report, args) -> tuple[list[dict], list[dict], float]:
    """run --what-if (core/walls.py's chain): each re-run is an ordinary run in a gdb of its own,
    the same timeout, children followed, a server ended rather than left running."""
    import time

    from .core import walls as walls_mod

    started = time.monotonic()

    stopped: list[dict] = []

    def rerun(patches):
        after = _gdb_report(make_cmd_with(patches, end_server=True), env, no_report, timeout=args.timeout)
        if after.get("interrupted"):  # the user's SIGINT/SIGTERM: no verdict from it, and no more runs
            stopped.append(after)
            raise walls_mod.Stop
        return after

    def announce(label, words):
        print(f"gdb-cudashim: what-if {label}: {words}", file=sys.stderr)

    walls, tested = walls_mod.prove(report, rerun, args.max_walls, announce)
    walls_mod.rank(report, walls, tested)
    if stopped:  # the what-if was stopped: a partial report, and the signal's exit status
        report.update(partial=True, interrupted=stopped[0]["interrupted"], exit_signal=stopped[0]["exit_signal"])
        report.setdefault("notes", []).append(f"what-if stopped by {stopped[0]['interrupted']} during a re-run: "
                                              "the walls above are those judged before it")
    return walls, tested, round(time.monotonic() - started, 1)


def _load_reference(path: str) -> dict:
    from .core import diff

    try:
        return diff.load(path, "REF")
    except diff.ReportError as exc:
        raise CliError(str(exc)) from None


def _compare_with(ref: dict, report: dict, ref_path: str) -> tuple[list, list[str]] | None:
    """run --compare: (the divergences, the lines that show them), and the reference's
    evidence added to the run's findings; None with a line on stderr when they cannot be compared."""
    from .core import diff

    try:
        diff.check(report, "this run's report")
    except diff.ReportError as exc:
        print(f"gdb-cudashim: not compared with the reference: {exc}", file=sys.stderr)
        return None
    if diff.program(ref) != diff.program(report):
        print(f"gdb-cudashim: not compared with the reference: it ran {diff.program(ref)}, this run "
              f"{diff.program(report)}", file=sys.stderr)
        return None
    divergences = diff.compare(ref, report)
    diff.reference_evidence(report.get("findings") or [], divergences)
    return divergences, diff.render(divergences, ref_path, "this run")


def cmd_diff(args) -> int:
    """gdb-cudashim diff REF.json RUN.json: 0 the same, 1 different, 2 cannot compare."""
    from .core import diff

    try:
        ref, run = diff.load(args.ref, "REF"), diff.load(args.run, "RUN")
    except diff.ReportError as exc:
        raise CliError(str(exc)) from None
    if diff.program(ref) != diff.program(run):
        raise CliError(f"not the same program: REF ran {diff.program(ref)}, RUN ran {diff.program(run)}; "
                       "diff compares two runs of one program")
    divergences = diff.compare(ref, run)
    if args.json:
        import json

        text = json.dumps(diff.to_dict(divergences, ref, run), indent=1) + "\n"
    else:
        text = "\n".join(diff.render(divergences, args.ref, args.run, color=_color(args.color))) + "\n"
    _print(text, sys.stdout)
    return 1 if divergences else 0


def _exec_argv(program: str, args: list[str]) -> list[str]:
    """How gdb starts PROGRAM ARGS as a shell would: an ELF file directly; a script (#!, a pyenv
    shim, a wrapper) through /bin/sh's exec, which the kernel turns into its interpreter.
    gdb follows the exec, so the script's own children are traced as usual."""
    try:
        with open(program, "rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""
    if magic == b"\x7fELF":
        return [program, *args]
    return ["/bin/sh", "-c", 'exec "$0" "$@"', program, *args]


ARGV_VAR = "GDB_CUDASHIM_ARGV"


def _gdb_passes(words: list[str]) -> bool:
    """Whether gdb's --args hands WORDS to the program unchanged: gdb reads its inferior's
    arguments back as one line of text, so a newline (or another control character) ends the
    line and the rest is taken for a gdb command, and a byte that is not UTF-8 stops its Python.
    Any other argument goes through the environment (ARGV_VAR), which carries every byte but NUL."""
    for w in words:
        for c in w:
            if (ord(c) < 32 and c != "\t") or ord(c) == 127 or "\ud800" <= c <= "\udfff":
                return False
    return True


def _last_line(text: str) -> str:
    return next((l.strip() for l in reversed(text.strip().splitlines()) if l.strip()), "")


def _processes() -> list[tuple[int, str, str]]:
    """(pid, comm, argv) of every readable process but this one."""
    out = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, os.getppid()):
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append((int(entry), comm, argv))
    return out


def _pick_target(target: str) -> int:
    target = target.strip()
    if not target:
        raise CliError("attach needs a PID or a program name (or its full path)")
    if re.fullmatch(r"[0-9]+", target):  # ASCII digits only: int() also reads '١' as 1
        pid = int(target)
        if not os.path.exists(f"/proc/{pid}"):
            raise CliError(f"no process {pid}")
        pid = _process_of(pid)
        if pid == os.getpid():
            raise CliError(f"{pid} is this gdb-cudashim itself; give the PID of the program to watch")
        return pid
    if os.sep in target:  # a program's path: every process running that file
        want = os.path.realpath(target)
        if not os.path.exists(want):
            raise CliError(f"no such program: {target}")
        matches = [(pid, comm, argv) for pid, comm, argv in _processes() if _exe(pid) == want]
    else:
        matches = [(pid, comm, argv) for pid, comm, argv in _processes()
                   if comm == target or os.path.basename(argv.split(" ", 1)[0]) == target]
    if not matches:
        raise CliError(f"no process named {target!r}")
    if len(matches) == 1:
        return matches[0][0]
    if sys.stdin.isatty() and sys.stdout.isatty():
        choice = _picker(target, matches)
        if choice is None:
            raise CliError("no process chosen")
        return int(choice)
    listing = "; ".join(f"{pid} ({argv[:60]})" for pid, _, argv in matches[:8])
    raise CliError(f"{len(matches)} processes match {target!r}: {listing}; give a PID")


def _process_of(pid: int) -> int:
    """PID, or the process it is a thread of (its Tgid), said in one line: gdb given a
    thread's id watched it as a process of its own while the other threads ran into its
    breakpoints and died of SIGTRAP."""
    from .core.procfs import thread_group

    tgid = thread_group(pid)
    if tgid and tgid != pid:
        name = _comm(tgid)
        print(f"gdb-cudashim: {pid} is a thread of process {tgid}{f' ({name})' if name else ''}; "
              f"attaching to the process", file=sys.stderr)
        return tgid
    return pid


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _check_alive(pid: int) -> None:
    """A zombie has exited: there is nothing to attach to, whatever ptrace says."""
    from .core.procfs import parent_pid, state

    st = state(pid)
    if st is None:
        raise CliError(f"no process {pid}")
    if st == "Z":
        parent = parent_pid(pid)
        by = f" (pid {parent}{f', {_comm(parent)}' if _comm(parent) else ''})" if parent else ""
        raise CliError(f"process {pid} is a zombie: it exited and its parent{by} has not reaped it; "
                       "there is nothing left to watch")


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _picker(target, matches):
    """A list to choose from: Enter attaches to the highlighted process (radiolist_dialog's Enter
    only marked it, and its Ok took the first one unless Space had marked another); Esc, q and
    Ctrl-C cancel (None). Tab reaches the Ok and Cancel buttons."""
    # only here: never at load time
    from prompt_toolkit.application import Application
    from prompt_toolkit.filters import has_focus
    from prompt_toolkit.key_binding import KeyBindings, merge_key_bindings
    from prompt_toolkit.key_binding.bindings.focus import focus_next, focus_previous
    from prompt_toolkit.key_binding.defaults import load_key_bindings
    from prompt_toolkit.layout import HSplit, Layout
    from prompt_toolkit.widgets import Button, Dialog, Label, RadioList

    values = [(pid, f"{pid}  {argv[:100]}") for pid, _, argv in matches]
    radio = RadioList(values=values)

    def highlighted():
        index = getattr(radio, "_selected_index", None)  # the cursor; current_value is only the marked one
        return values[index][0] if isinstance(index, int) and 0 <= index < len(values) else radio.current_value

    dialog = Dialog(title=f"Several processes match {target!r}",
                    body=HSplit([Label(text="Attach to which one? (Enter: attach, Esc or q: cancel)",
                                       dont_extend_height=True), radio], padding=1),
                    buttons=[Button(text="Ok", handler=lambda: app.exit(result=highlighted())),
                             Button(text="Cancel", handler=lambda: app.exit(result=None))],
                    with_background=True)
    keys = KeyBindings()
    keys.add("tab")(focus_next)
    keys.add("s-tab")(focus_previous)
    for key in ("escape", "q", "c-c"):
        keys.add(key, eager=True)(lambda event: event.app.exit(result=None))
    keys.add("enter", filter=has_focus(radio), eager=True)(lambda event: event.app.exit(result=highlighted()))
    app = Application(layout=Layout(dialog), key_bindings=merge_key_bindings([load_key_bindings(), keys]),
                      mouse_support=True, full_screen=True)
    try:
        return app.run()
    except (KeyboardInterrupt, EOFError):
        return None


def _check_ptrace(pid: int) -> None:
    from .core.procfs import int_field, status as proc_status

    try:
        status = proc_status(pid)
    except OSError:
        raise CliError(f"no process {pid}") from None
    tracer = int_field(status.get("TracerPid")) or 0
    if tracer:
        name = ""
        try:
            with open(f"/proc/{tracer}/comm") as f:
                name = f" ({f.read().strip()})"
        except OSError:
            pass
        raise CliError(f"process {pid} is already traced by pid {tracer}{name}; detach that debugger (or strace) first")
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read().strip())
    except (OSError, ValueError):
        scope = 0
    if os.geteuid() != 0:
        uid = int(status["Uid"].split()[1]) if status.get("Uid") else None
        if uid is not None and uid != os.geteuid():
            raise CliError(f"process {pid} belongs to uid {uid}: attach as that user or with sudo")
        if scope >= 1:
            raise CliError(f"kernel.yama.ptrace_scope is {scope}: only a parent may trace its child; run with sudo, "
                           "or 'sudo sysctl kernel.yama.ptrace_scope=0'")


def cmd_attach(args) -> int:
    _check_report_args(args)
    pid = _pick_target(args.target)
    _check_alive(pid)
    _check_ptrace(pid)
    base, env, gdb = _gdb_base(_gdb_env())

    def make_cmd(report_path, tmp):
        drive = ["cuda-run", "--no-report", "--detach", "--quit", "--json", report_path, "--timeout",
                 repr(args.timeout), "--control-fd", str(CONTROL_FD), "--owned-dir", tmp]
        arm = "catch-init-error --every-return" if args.every_return else "catch-init-error"
        # stopped (SIGSTOP, Ctrl-Z) before we came: gdb's attach shows it as 't' from then on, so
        # only now can it be told, and it must be left stopped
        from .core.procfs import descendants, state

        stopped = [p for p in [pid] + descendants(pid) if state(p) == "T"]
        if stopped:
            drive += ["--was-stopped", ",".join(map(str, stopped))]
        return base + ["-batch", "-p", str(pid), "-ex", arm, "-ex", _gdb_command(drive)]

    def no_report(log, status):
        from .core.procfs import state

        if state(pid) in (None, "Z"):
            raise CliError(f"process {pid} exited before it could be watched")
        if "Operation not permitted" in log:
            if os.geteuid() == 0:
                raise CliError(f"ptrace refused to attach to {pid} (Operation not permitted) even as root: check "
                               "kernel.yama.ptrace_scope (3 forbids it), and the container's seccomp profile and "
                               "CAP_SYS_PTRACE")
            raise CliError(f"ptrace refused to attach to {pid} (Operation not permitted): run as root (sudo), or "
                           "check kernel.yama.ptrace_scope and the container's seccomp profile and CAP_SYS_PTRACE")
        raise CliError(f"could not attach to {pid}: {_last_line(log) or 'no output'}")

    report = _gdb_report(make_cmd, env, no_report, attach_pid=pid, timeout=args.timeout)
    return _emit(report, args, [f"attach {pid}"], gdb)


def cmd_gdb(args) -> int:
    env = _gdb_env()
    base, env, gdb = _gdb_base(env, batch=False)
    import subprocess

    print(f"gdb-cudashim: {gdb.describe()}", file=sys.stderr)  # which gdb, in one line

    # an interactive gdb owns Ctrl-C (it interrupts the program): we only wait for it
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    return subprocess.call(base + args.gdb_args, env=env)


def cmd_gdbinit(args) -> int:
    print(f"source {GDBINIT}")
    return 0


def cmd_doctor(args) -> int:
    import subprocess

    print(f"gdb-cudashim in {deps.package_root()}; this Python: {sys.version.split()[0]} ({sys.executable})")
    gdb = _gdb()
    print(gdb.describe())  # which gdb, in one line; cuda-doctor below gives its version and Python
    env = _gdb_env()
    out = subprocess.run([gdb.path, "-nx", "-q", "-batch", "-iex", f"source {GDBINIT}", "-ex", "cuda-doctor"],
                         env=env, capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    sys.stdout.write(out.stderr)
    from . import stack

    s = stack.installed()
    print(f"real CUDA stack: {s.root if s else 'not fetched (make stack)'}")
    tools = {tool: _which(tool) for tool in ("cc", "make")}
    for tool, path in tools.items():
        print(f"{tool}: {path or 'MISSING (apt-get install build-essential)'}")
    # every line above must be fine for a zero: a missing stack or tool is not a healthy set-up
    return 0 if "all dependencies importable" in out.stdout and s and all(tools.values()) else 1


def cmd_stack(args) -> int:
    from . import stack

    if args.action == "fetch":
        s = stack.fetch(log=lambda m: print(f"gdb-cudashim: {m}", file=sys.stderr))
        print(s.root)
        return 0
    s = stack.require()
    what = {"root": s.root, "lib": s.lib, "include": s.include, "cudart": s.cudart, "ggml-cuda": s.ggml_cuda}
    print(what[args.what])
    return 0


def cmd_audit(args) -> int:
    from .core import audit

    return audit.main(args)


class _Parser(argparse.ArgumentParser):
    def _get_formatter(self):
        return self.formatter_class(prog=self.prog, width=help_width())  # see core/term.py

    def error(self, message):
        """One line, not argparse's usage block."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gdb-cudashim",
                description="Why does ggml/llama.cpp/ollama's CUDA backend fail to initialise under a CUDA shim?")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="run a program under gdb with catch-init-error armed and report",
                       description="Run PROGRAM under gdb with catch-init-error armed, children followed, and print "
                                   "the report. Exit: 0 no failure, 1 failure caught, 2 usage/environment, 3 timed out.")
    r.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    r.add_argument("--force", action="store_true", help=FORCE_HELP)
    r.add_argument("--timeout", type=_seconds, metavar="S", help="stop after S seconds and report every thread")
    r.add_argument("--settle", type=_seconds, default=SETTLE_S, metavar="S",
                   help=f"a program still running S seconds (default {SETTLE_S:g}) after CUDA init settled in every "
                        "process is a server (llama-server, ollama serve): report then and leave it running untraced")
    r.add_argument("--no-settle", dest="settle", action="store_const", const=None,
                   help="wait for every process to end, however long (up to --timeout)")
    r.add_argument("--end-server", action="store_true", help="end the server once init settled, instead of leaving it")
    r.add_argument("--pattern", action="append", default=[], metavar="REGEX", help="also capture writes matching REGEX")
    r.add_argument("--no-follow-children", dest="follow", action="store_false", help="do not follow child processes")
    r.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    r.add_argument("--verbose", action="store_true", help="every call and lookup, full backtraces")
    r.add_argument("--every-return", action="store_true", help=EVERY_RETURN_HELP)
    r.add_argument("--compare", metavar="REF.json",
                   help="then show where this run differs from REF (a run --json report of the same program on "
                        "the real driver or a shim that works) and use it as evidence; a clean run that differs exits 1")
    r.add_argument("--what-if", action="store_true",
                   help="then test each finding: simulate its fix (cuda-patch), run again, say whether the error went "
                        "away or changed (proven) or not (not the cause), and show the next wall")
    r.add_argument("--max-walls", type=int, default=5, metavar="N", help="with --what-if: at most N walls (default 5), and N other findings tested beside them")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("attach", help="attach to a running process (and its future children), report, detach",
                       description="Attach to PID or the process named NAME, arm catch-init-error for it and its future "
                                   "children, watch for --timeout seconds (or until it exits), report, and detach leaving "
                                   "it running and unpatched. Exit: 0 no failure, 1 failure caught, 2 usage/permission.")
    t.add_argument("target", metavar="PID|NAME")
    t.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    t.add_argument("--force", action="store_true", help=FORCE_HELP)
    t.add_argument("--timeout", type=_seconds, default=30.0, metavar="S", help="how long to watch (default 30)")
    t.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    t.add_argument("--verbose", action="store_true")
    t.add_argument("--every-return", action="store_true", help=EVERY_RETURN_HELP)
    t.set_defaults(func=cmd_attach)

    f = sub.add_parser("diff", help="where a run differs from a reference run of the same program, first divergence first",
                       description="Compare two 'run --json' reports of the same program (REF: the real driver or a shim "
                                   "that works; RUN: yours), by process role and call order; pids, pointers, timings "
                                   "and paths are ignored. Exit: 0 the same, 1 different, 2 cannot compare.")
    f.add_argument("ref", metavar="REF.json")
    f.add_argument("run", metavar="RUN.json")
    f.add_argument("--json", action="store_true", help="print the divergences as JSON")
    f.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    f.set_defaults(func=cmd_diff)

    g = sub.add_parser("gdb", help="start gdb with the extension loaded", add_help=False)
    g.add_argument("gdb_args", nargs=argparse.REMAINDER)
    g.set_defaults(func=cmd_gdb)

    i = sub.add_parser("gdbinit", help="print the line that loads the extension (for ~/.gdbinit)")
    i.set_defaults(func=cmd_gdbinit)

    d = sub.add_parser("doctor", help="check gdb's Python, the dependencies and the set-up")
    d.set_defaults(func=cmd_doctor)

    s = sub.add_parser("stack", help="fetch or locate the pinned real CUDA stack (cudart 12.9 + libggml-cuda)")
    s.add_argument("action", choices=("fetch", "path"))
    s.add_argument("what", nargs="?", default="root", choices=("root", "lib", "include", "cudart", "ggml-cuda"))
    s.set_defaults(func=cmd_stack)

    a = sub.add_parser("audit", help="check, without running, that shims give cudart and libggml-cuda what they need")
    # defined here, not in core.audit: importing that (pyelftools, the stack) cost every command ~35 ms
    a.add_argument("--shim", action="append", default=[], metavar="PATH", help="a shim library to check (repeatable)")
    a.add_argument("--consumer", action="append", default=[], metavar="PATH",
                   help="what uses it: libggml-cuda*, libcudart.so.12 (default: the pinned real stack)")
    a.add_argument("--env-from", type=int, metavar="PID", help="resolve with this process's environment")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_audit)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gdb"]:  # every gdb option passes through untouched (-nx, -batch, --args ...)
        return _guarded(cmd_gdb, argparse.Namespace(gdb_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return _guarded(args.func, args)


CWD_GONE = "the current directory was deleted: cd to a directory that exists (relative paths mean nothing here)"


def _cwd_gone() -> bool:
    try:
        os.getcwd()
        return False
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _guarded(func, args) -> int:
    """FUNC(ARGS) with every failure as one line on stderr, and a reader that went away
    (| head -1) as a quiet exit with the real status."""
    try:
        return func(args)
    except CliError as exc:
        print(f"gdb-cudashim: {exc}{' (' + CWD_GONE + ')' if _cwd_gone() else ''}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gdb-cudashim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .stack import StackError

        if isinstance(exc, OSError) and exc.filename is None and _cwd_gone():
            print(f"gdb-cudashim: {CWD_GONE}", file=sys.stderr)  # os.getcwd() said only '[Errno 2]'
            return EXIT_USAGE
        if isinstance(exc, StackError) or isinstance(exc, OSError):
            print(f"gdb-cudashim: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get("GDB_CUDASHIM_DEBUG"):
            raise
        print(f"gdb-cudashim: internal error: {type(exc).__name__}: {exc} (GDB_CUDASHIM_DEBUG=1 shows where)",
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
