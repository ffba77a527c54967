"""Writing a file the user named without harming what is there. Pure: never imports gdb.

- a regular file (or a new one) is replaced atomically: a temporary file beside it, then rename;
- a symlink is written through: the target is replaced, the link stays;
- a FIFO, a character device or a socket is written in place (never renamed over);
- "-" is standard output; /dev/stdout, /dev/stderr, /dev/fd/N (and /proc/self/fd/N) are the
  stream they name: written into that open descriptor, never replacing what it points to (a
  file the shell opened with '>' keeps what was written before; a pipe is no path at all).
"""
from __future__ import annotations

import errno
import os
import stat
import sys


def write_text(path: str, text: str) -> None:
    """Write TEXT to PATH as described above; OSError on failure (nothing half-written is
    left in a regular file's place)."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    fd = stream_fd(path)
    if fd is not None:
        for stream in (sys.stdout, sys.stderr):  # what Python holds for it goes first
            if stream is not None:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
        data = text.encode("utf-8", "surrogateescape")
        while data:
            data = data[os.write(fd, data):]
        return
    target = os.path.realpath(path)  # through symlinks, to what they name (may not exist yet)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a FIFO, a device: write in place, never replace; a FIFO nobody reads is an
        # error (ENXIO), not a wait forever. A FIFO check_writable opened is written there.
        fd = _HELD.pop(target, None)
        if fd is None:
            fd = os.open(target, os.O_WRONLY | (os.O_NONBLOCK if stat.S_ISFIFO(st.st_mode) else 0))
        if stat.S_ISFIFO(st.st_mode):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return
    folder = os.path.dirname(target) or "."
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
    # a name of our own beside it (O_EXCL: never anything already there); not tempfile,
    # whose imports cost every run ~10 ms
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def stream_fd(path: str) -> int | None:
    """The descriptor PATH names as a stream ("-": 1, /dev/stdout: 1, /dev/stderr: 2,
    /dev/fd/N and /proc/self/fd/N: N), or None for a path of a file."""
    import re

    if path == "-":
        return 1
    m = re.fullmatch(r"/dev/(stdout|stderr)|/dev/fd/([0-9]+)|/proc/self/fd/([0-9]+)", os.path.normpath(path))
    if not m:
        return None
    if m.group(1):
        return 1 if m.group(1) == "stdout" else 2
    number = int(m.group(2) or m.group(3))
    return number if number < 1 << 20 else None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# FIFOs opened for writing by check_writable, by real path: held open from before the run
# to the report, so that a reader found then still has its writer at the end.
_HELD: dict[str, int] = {}
MAX_OURS_BYTES = 1 << 30  # a bigger file is no report of ours (diff reads at most this)


def check_writable(path: str, force: bool = False) -> str | None:
    """Why PATH cannot take a report, or None. Checked before a run starts, so that a run is
    never made for a report that cannot be written, and never writes over the user's own
    file: an existing regular file is replaced only if it is empty or a report of ours (a
    JSON object with our "schema" key), or with FORCE. A FIFO must have a reader now; it is
    held open until the report is written into it."""
    if not path.strip():
        return "--json needs a file name"
    if path == "-":
        return None
    fd = stream_fd(path)
    if fd is not None:
        import fcntl

        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            return f"cannot write --json {path}: descriptor {fd} is not open"
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return f"cannot write --json {path}: descriptor {fd} is open for reading only"
        return None
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return f"cannot write --json {path}: {exc.strerror}"
    if st is not None and stat.S_ISDIR(st.st_mode):
        return f"cannot write --json {path}: it is a directory"
    if st is not None and stat.S_ISFIFO(st.st_mode):
        if target in _HELD:
            return None
        try:
            _HELD[target] = os.open(target, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return f"cannot write --json {path}: it is a FIFO and nobody reads it (start its reader first)"
            return f"cannot write --json {path}: {exc.strerror}"
        os.set_blocking(_HELD[target], True)
        return None
    if st is not None and not stat.S_ISREG(st.st_mode):
        return None if os.access(target, os.W_OK) else f"cannot write --json {path}: permission denied"
    if st is not None and st.st_size and not force and not _is_our_report(target, st.st_size):
        return (f"--json {path}: that file exists and is not a gdb-cudashim report; "
                "not replacing it (give another name, or --force to replace it)")
    parent = os.path.dirname(target) or "."
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        return f"cannot write --json {path}: {parent} is not a writable directory"
    return None


def _is_our_report(path: str, size: int) -> bool:
    """A JSON object with our "schema" key: what --json wrote before."""
    if size > MAX_OURS_BYTES:
        return False
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"{":  # a program, a source file: no need to read it all
                return False
            f.seek(0)
            import json

            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "schema" in data


class NotRegular(OSError):
    """A path that is not a regular file (a FIFO, a device, a directory): never read as a library."""


def map_regular(path: str):
    """PATH mapped read-only, opened without blocking (O_NONBLOCK: a FIFO is refused, never
    waited on) and checked to be a regular file on the descriptor itself; OSError otherwise.
    A context manager: the mapping and the descriptor close together."""
    import contextlib
    import mmap

    @contextlib.contextmanager
    def mapped():
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegular(22, "not a regular file", path)
            if st.st_size == 0:
                raise NotRegular(22, "empty file", path)
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data:
                yield data
        finally:
            os.close(fd)

    return mapped()
