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


def mapped_files(pid: int) -> dict[str, int | None]:
    """Every file mapped into PID, in load order, with its load base (the start of its
    offset-0 mapping; None if there is none)."""
    files: dict[str, int | None] = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            path = parts[5].strip()
            if path.endswith(" (deleted)"):
                path = path[: -len(" (deleted)")]
            if files.get(path) is None:
                files[path] = int(parts[0].split("-")[0], 16) if int(parts[2], 16) == 0 else None
    return files
