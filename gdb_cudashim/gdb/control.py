"""The watchdog inside gdb: one thread that stops the traced programs when it is time.

It stops them when the CLI asks on its control pipe ("stop REASON"), when the CLI goes
away (end of file on that pipe: the CLI was killed), at the --timeout deadline, or when
a condition the driver gives says so (a server whose CUDA init has settled). "Stopping"
is a SIGSTOP to one traced process: gdb sees it as a signal stop in all-stop mode, so
every process stops and cuda-run's loop regains control. SIGSTOP cannot be blocked,
caught or sigwait()ed: a program that blocks SIGINT still stops, and never receives the
tool's own signal (cuda-run does not pass it on).

gdb 13's threads must never receive gdb's signals: a SIGCHLD handed to this thread
leaves gdb in sigsuspend forever. The thread is started with them all blocked.

Nothing here calls gdb's API: it is not safe off gdb's main thread. It also writes the
partial report when the CLI asks ("dump PATH"), which works even while gdb's main
thread is stuck.
"""
from __future__ import annotations

import os
import select
import signal
import threading
import time

from ..core.procfs import children

# every signal gdb handles itself; the thread blocks them all
_GDB_SIGNALS = {signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH,
                signal.SIGCONT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGALRM, signal.SIGIO,
                signal.SIGPIPE, signal.SIGUSR1, signal.SIGUSR2}

RESEND_S = 1.0  # a SIGSTOP that gdb absorbed as one of its own is sent again
SETTLE_POLL_S = 1.0  # how often a settle condition is asked: each wake takes the GIL from gdb's handlers


def start_thread(target, name: str) -> threading.Thread:
    """A daemon thread that can never receive gdb's signals."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _GDB_SIGNALS)
    try:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return t


class Watchdog:
    """See the module's doc. TRACER gives live_pids; REASON is set on it (stop_reason)."""

    def __init__(self, tracer, deadline: float | None = None, control_fd: int | None = None,
                 dump=None, settled=None):
        self.tracer = tracer
        self.deadline = deadline  # time.monotonic() value, or None
        self.control_fd = control_fd
        self.dump = dump  # dump(path): write the partial report (pure Python, no gdb calls)
        self.settled = settled  # settled() -> reason or None, polled
        self.lock = threading.Lock()
        self.closed = False
        self.acked = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._buf = b""  # a control line not complete yet
        self._thread = None

    def start(self):
        self._thread = start_thread(self._run, "gdb-cudashim-watchdog")

    # -- the main thread's side --
    def ack(self):
        """cuda-run's loop saw the stop: no more SIGSTOPs."""
        self.acked.set()

    def close(self):
        """Teardown begins: from now on nothing is sent to any process."""
        with self.lock:
            self.closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the thread --
    def _run(self):
        fds = [self._wake_r] + ([self.control_fd] if self.control_fd is not None else [])
        reason = None
        while reason is None:
            if self.closed:
                return
            wait = SETTLE_POLL_S if self.settled is not None else None
            if self.deadline is not None:
                left = max(0.0, self.deadline - time.monotonic())
                wait = left if wait is None else min(wait, left)
            try:
                ready, _, _ = select.select(fds, [], [], wait)
            except (OSError, ValueError):
                ready = []
            if self.closed:
                return
            if self.control_fd is not None and self.control_fd in ready:
                commands = self._commands()
                if commands is None:
                    reason = "cli-gone"
                    break
                for word, arg in commands:
                    if word == "stop":
                        reason = arg or "interrupted"
                continue
            if self.deadline is not None and time.monotonic() >= self.deadline:
                reason = "timeout"
            elif self.settled is not None:
                reason = self.settled()
        self._stop(reason)
        # keep serving dumps while the main thread tears down
        while reason != "cli-gone" and not self.closed and self.control_fd is not None:
            try:
                ready, _, _ = select.select(fds, [], [], None)
            except (OSError, ValueError):
                return
            if self.control_fd in ready and self._commands() is None:
                return

    def _commands(self):
        """The complete lines the CLI sent, as (word, argument); dumps are served here. None:
        the CLI is gone (end of file)."""
        try:
            data = os.read(self.control_fd, 4096)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            return None
        self._buf += data
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            word, _, arg = line.decode(errors="replace").partition(" ")
            if word == "dump" and self.dump is not None:
                self._dump(arg)
            out.append((word, arg))
        return out

    def _dump(self, path):
        try:
            self.dump(path)
        except Exception:  # a partial report is best effort; the CLI says it has none
            pass

    def _stop(self, reason):
        with self.lock:
            if self.closed:
                return
            if getattr(self.tracer, "stop_reason", None) is None:
                self.tracer.stop_reason = reason
        # one SIGSTOP at a time, to one process: in all-stop mode one stop stops them all
        tried = set()
        while not self.acked.is_set():
            with self.lock:
                if self.closed:
                    return
                live = [p for p in sorted(self.tracer.live_pids) if p not in tried] or sorted(self.tracer.live_pids)
                if not live:  # asked before the program started: stop it as soon as it has
                    pid = None
                else:
                    pid = live[0]
            if pid is None:
                self.acked.wait(0.05)
                continue
            with self.lock:
                if self.closed:
                    return
                tried.add(pid)
                try:
                    os.kill(pid, signal.SIGSTOP)
                except OSError:
                    pass
            self.acked.wait(RESEND_S)


class ChildSampler:
    """With --no-follow-children gdb lets children go untraced: this thread looks at them
    from /proc (every INTERVAL_S) so that the report can say which ones loaded a CUDA
    library, whose init it therefore did not see. No gdb calls."""

    INTERVAL_S = 0.005
    CUDA_MARKS = ("libcuda.so", "libcudart.so", "libggml-cuda", "libnvidia-ml.so")

    def __init__(self, tracer):
        self.tracer = tracer
        self.children: dict[int, dict] = {}  # pid -> {"parent", "exe", "cuda": [libraries]}
        self._done = threading.Event()

    def start(self):
        start_thread(self._run, "gdb-cudashim-children")

    def stop(self):
        self._done.set()

    YOUNG_S = 2.0  # a new child is looked at every FAST_S for this long: a ggml init can take 20 ms
    FAST_S = 0.002

    def _run(self):
        while not self._done.wait(self.FAST_S if self._young() else self.INTERVAL_S):
            for parent in list(self.tracer.live_pids):
                for pid in children(parent):
                    self._look(pid, parent)
            for pid, seen in list(self.children.items()):
                if seen["alive"]:
                    self._look(pid, seen["parent"])
                    for grandchild in children(pid):
                        self._look(grandchild, pid)

    def _young(self) -> bool:
        now = time.monotonic()
        return any(s["alive"] and now - s["since"] < self.YOUNG_S for s in self.children.values())

    def _look(self, pid, parent):
        seen = self.children.setdefault(pid, {"parent": parent, "exe": None, "cuda": [], "alive": True,
                                              "since": time.monotonic()})
        try:
            seen["exe"] = os.readlink(f"/proc/{pid}/exe")
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    path = line.rsplit(" ", 1)[-1].strip()
                    name = os.path.basename(path)
                    if name.startswith(self.CUDA_MARKS) and name not in seen["cuda"]:
                        seen["cuda"].append(name)
        except OSError:
            seen["alive"] = False


def continue_if_held(pid: int) -> None:
    """A SIGSTOP still queued when gdb let PID go (the watchdog's) stops it: let it run, as it was."""
    from ..core.procfs import state

    if state(pid) != "T":
        return
    try:
        time.sleep(0.05)
        if state(pid) == "T":
            os.kill(pid, signal.SIGCONT)
    except OSError:
        pass


class sigstop_not_passed:
    """with sigstop_not_passed(): gdb stops on SIGSTOP and never hands it to the program
    (the watchdog's own stop signal, on a continue or a detach); the user's 'handle SIGSTOP'
    settings are put back exactly afterwards. Called on gdb's main thread."""

    def __enter__(self):
        import gdb

        self.row = None
        try:
            for line in gdb.execute("info signals SIGSTOP", to_string=True).splitlines():
                if line.startswith("SIGSTOP"):
                    self.row = line.split()[1:4]  # Stop, Print, Pass
        except gdb.error:
            pass
        gdb.execute("handle SIGSTOP stop print nopass", to_string=True)
        return self

    def __exit__(self, *exc):
        import gdb

        if self.row is not None:
            stop, printed, passed = (v == "Yes" for v in self.row)
            words = ["stop" if stop else "nostop", "print" if printed else "noprint", "pass" if passed else "nopass"]
            try:
                gdb.execute("handle SIGSTOP " + " ".join(words), to_string=True)
            except gdb.error:
                pass
        return False
