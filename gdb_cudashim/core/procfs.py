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


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
