"""Reading /proc for a process: its environment and parent. Pure: never imports gdb."""
from __future__ import annotations


class ProcError(Exception):
    """One line: why /proc/PID could not be read."""


def read_environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ProcError(f"no process {pid}") from None
    except PermissionError:
        raise ProcError(f"cannot read /proc/{pid}/environ: permission denied (run as the process's user or root)") from None
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, value = item.split(b"=", 1)
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def environ_span(pid: int) -> tuple[int, int]:
    """Where PID's environment strings lie in its memory: env_start, env_end of /proc/PID/stat
    (fields 50 and 51, counted after the command name's closing parenthesis). OSError/ValueError
    when it cannot be read."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    try:
        return int(fields[47]), int(fields[48])
    except IndexError:
        raise ValueError(f"/proc/{pid}/stat has no env_start/env_end") from None


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def file_mappings(pid: int) -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of every file mapping of PID, in address order; OSError
    if its maps cannot be read."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            path = parts[5].strip()
            if path.endswith(" (deleted)"):
                path = path[: -len(" (deleted)")]
            start, end = parts[0].split("-")
            out.append((int(start, 16), int(end, 16), int(parts[2], 16), path))
    return out


def mapped_files(pid: int) -> dict[str, int | None]:
    """Every file mapped into PID, in load order, with its load base (the start of its
    offset-0 mapping; None if there is none)."""
    files: dict[str, int | None] = {}
    for start, _end, offset, path in file_mappings(pid):
        if files.get(path) is None:
            files[path] = start if offset == 0 else None
    return files


def _fields(path: str, sep: str = ":") -> dict[str, str]:
    with open(path) as f:
        return {k.strip(): v.strip() for k, _, v in (line.partition(sep) for line in f) if v}


def status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict; OSError if it cannot be read (no such process...)."""
    return _fields(f"/proc/{pid}/status")


def status_field(pid: int, name: str) -> str | None:
    """One field of /proc/PID/status (TracerPid, Tgid, Uid, State...), None if unreadable."""
    try:
        return status(pid).get(name)
    except OSError:
        return None


def int_field(value: str | None) -> int | None:
    try:
        return int(value.split()[0]) if value else None
    except (ValueError, IndexError):
        return None


def tracer_of(pid: int) -> int:
    """The pid tracing PID (0: none)."""
    return int_field(status_field(pid, "TracerPid")) or 0


def thread_group(tid: int) -> int | None:
    """The process a thread belongs to."""
    return int_field(status_field(tid, "Tgid"))


def pidfd_target(pid: int, fd: int) -> int | None:
    """The process that PID's pidfd FD refers to."""
    try:
        return int_field(_fields(f"/proc/{pid}/fdinfo/{fd}").get("Pid"))
    except OSError:
        return None


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def state(pid: int) -> str | None:
    """The one-letter state (R, S, T, t, Z...), None if gone."""
    try:
        return _stat(pid)[0]
    except (OSError, IndexError):
        return None


ENDED = ("Z", "X")  # a thread that has ended: a zombie its tracer has not collected, or dead


def all_ended(states: dict[int, str]) -> bool:
    """Every thread in STATES (thread_states) has ended: the process is over."""
    return bool(states) and all(st in ENDED for st in states.values())


def settled(states: dict[int, str]) -> bool:
    """Every thread in STATES has ended or sits in a tracer's stop ('t'): none is still on its way
    out (a thread woken from its tracing stop by SIGKILL runs its exit before it is a zombie)."""
    return all(st in ENDED or st == "t" for st in states.values())


def exit_status(pid: int) -> int | None:
    """The wait status of an ended PID, from the thread group leader's stat (field 52, exit_code,
    in waitpid's form; Linux 3.5+); None if it cannot be read."""
    try:
        return int(_stat(pid)[49])  # fields after "(comm)": state is [0], exit_code (field 52) is [49]
    except (OSError, IndexError, ValueError):
        return None


def thread_states(pid: int) -> dict[int, str]:
    """tid -> one-letter state of each thread of PID ({} if gone)."""
    import os

    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return {}
    return {t: st for t in tids if (st := state_of_task(pid, t)) is not None}


def state_of_task(pid: int, tid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def age(pid: int) -> float | None:
    """Seconds since PID started (its start time against the system's uptime)."""
    import os

    try:
        start_ticks = int(_stat(pid)[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """PID's children, from every one of its threads."""
    import os

    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    return out


def descendants(pid: int) -> list[int]:
    """PID's children, grandchildren..."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


# x86-64 system calls a waiting thread sits in (the rest are named by number)
_WAITS = {0: "read", 7: "poll", 23: "select", 34: "pause", 35: "nanosleep", 43: "accept", 45: "recvfrom",
          47: "recvmsg", 61: "wait4", 72: "fcntl", 73: "flock", 128: "rt_sigtimedwait", 202: "futex",
          230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid", 270: "pselect6", 271: "ppoll",
          281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2"}


def syscall_name(number: int) -> str:
    return _WAITS.get(number, f"system call {number}")


def traced_threads(tracer: int) -> str:
    """Every thread that TRACER traces, as 'pid/tid=STATE(in syscall N)': what a debugger that
    stopped answering was holding (a thread in its stop 't' is one it has not resumed, or whose
    stop it never took)."""
    import os

    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or tracer_of(int(name)) != tracer:
            continue
        pid = int(name)
        for tid, st in sorted(thread_states(pid).items()):
            try:
                with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                    call = f.read().split()[0]
            except (OSError, IndexError):
                call = "?"
            out.append(f"{pid}/{tid}={st}" + (f"(in syscall {call})" if call.isdigit() else ""))
    return " ".join(out) or "none"
