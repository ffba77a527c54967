"""Typed events and the timeline they form: what the gdb layer records, what the rules read.

gdb events -> these events -> Timeline -> rules -> findings -> renderers.
Pure: never imports gdb.
"""
from __future__ import annotations

import re
import time

from . import codes
from .calls import SPECS, is_cuda_symbol, role_of
from .record import factory, record

DEFAULT_ERROR_PATTERNS = (
    r"failed to initialize CUDA",
    r"CUDA error",
    r"load_backend: failed to load",
    r"no CUDA-capable device",
)


@record
class Frame:
    function: str
    library: str | None
    pc: int
    where: str | None = None  # source file:line, when there is debug info

    def describe(self) -> str:
        lib = self.library.rsplit("/", 1)[-1] if self.library else "?"
        at = f" at {self.where}" if self.where else ""
        return f"{self.function} ({lib}){at}"


@record
class Call:
    seq: int
    pid: int
    tid: int
    function: str
    library: str | None  # where the call landed
    caller: str | None  # the library it was called from
    args: dict[str, object] = factory(dict)
    result: int | str | None = None
    returned: bool = False
    patched_from: int | None = None  # cuda-patch: the original result
    lands_in: str | None = None  # cuGetProcAddress*: the file the pointer handed back lies in (recorded in-process)
    lands_offset: int | None = None  # and its offset there (a symbol's value): which entry point it is
    kind: str = "call"

    @property
    def spec(self):
        return SPECS.get(self.function)

    @property
    def result_name(self) -> str:
        spec = self.spec
        if not self.returned:
            return "(no return seen)"
        if spec is None or spec.result == "str":
            return repr(self.result)
        return codes.result_name(spec.result, self.result if isinstance(self.result, int) else None)

    @property
    def failed(self) -> bool:
        spec = self.spec
        return bool(self.returned and spec is not None and spec.result != "str" and self.result not in (0, None))

    def describe_args(self) -> str:
        parts = []
        for key, value in self.args.items():
            if key == "pExportTableId" and isinstance(value, str):
                parts.append(f"{codes.export_table_name(value)} {{{value}}}")
            elif key == "flags" and self.function.startswith("cuGetProcAddress") and isinstance(value, int):
                parts.append(f"flags={value}")
            elif isinstance(value, str):
                parts.append(f"{key}={value!r}" if key not in ("symbol",) else repr(value))
            elif isinstance(value, int) and key in ("pfn", "ppExportTable", "pctx", "device", "prop", "desc", "devPtr",
                                                    "ptr", "handle") and value > 4096:
                parts.append(f"{key}={value:#x}")
            else:
                parts.append(f"{key}={value}")
        return ", ".join(parts)


@record
class Lookup:
    seq: int
    pid: int
    tid: int
    how: str  # dlsym | dlvsym
    symbol: str
    handle_library: str | None  # which library was asked (RTLD_DEFAULT / RTLD_NEXT for pseudo-handles)
    version: str | None
    found: bool | None  # None: no return seen
    address: int = 0  # the address returned (watched returns only)
    found_by: str | None = None  # "return" (watched) | "symbol table" (core.dynsym's answer) | "recorded" (in the process)
    provider: str | None = None  # the library the result lies in
    caller: str | None = None  # the library that asked
    hook: str | None = None  # the library whose dlsym hook answered (an interposer), not the C library's
    kind: str = "lookup"


@record
class Load:
    seq: int
    pid: int
    tid: int
    path: str
    flags: int
    ok: bool | None
    error: str | None = None  # the loader's text, from dlerror(), when the program asked
    resolved: str | None = None  # the file that got mapped
    caller: str | None = None
    kind: str = "load"


@record
class Write:
    seq: int
    pid: int
    tid: int
    fd: int
    text: str
    via: str  # write | writev
    backtrace: list[Frame] = factory(list)
    error: str | None = None  # the write failed (EBADF: the descriptor was closed...): never reached fd
    kind: str = "write"

    @property
    def origin(self) -> str | None:
        """The innermost frame outside libc and the dynamic loader: who wrote it."""
        for frame in self.backtrace:
            lib = (frame.library or "").rsplit("/", 1)[-1]
            if lib.startswith(("libc.so", "ld-linux", "libpthread")):
                continue
            return frame.describe()
        return None


@record
class ProcessEvent:
    seq: int
    pid: int
    what: str  # start | fork | vfork | exec | exit | signal
    detail: str = ""
    parent: int | None = None
    exit_code: int | None = None
    signal: str | None = None  # exit: the signal that ended it (SIGSEGV, SIGKILL...)
    env: dict = factory(dict)  # LD_*, CUDA_*, OLLAMA_*, GGML_* at start
    cwd: str | None = None
    kind: str = "process"


@record
class Kill:
    """A traced process sending a fatal signal to another traced process (a parent giving up
    on its discovery child), seen at the syscall, before the signal lands."""
    seq: int
    pid: int  # the sender
    tid: int
    victim: int
    signal: str
    via: str  # kill | tkill | tgkill | pidfd_send_signal
    victim_age_s: float | None = None  # how long the victim had been running
    threads: list = factory(list)  # the victim's threads just before: {"tid", "name", "waiting_in", "frames"}
    kind: str = "kill"


@record
class Crash:
    """A fatal signal stopping a traced thread (SIGSEGV inside cudart, an abort()), seen before
    the process dies: where it faulted."""
    seq: int
    pid: int
    tid: int
    signal: str
    address: int | None = None  # si_addr: the faulting address (SIGSEGV, SIGBUS)
    sender: int | None = None  # the signal was sent (kill, tgkill, raise) by this pid, not a fault
    code: int | None = None  # si_code: 0x80 (SI_KERNEL) for a general protection fault, which has no address
    backtrace: list[Frame] = factory(list)
    kind: str = "crash"


@record
class Check:
    """ggml's CUDA_CHECK / CU_CHECK / CUBLAS_CHECK failing (calls.CHECK_FUNCTIONS, read from the
    arguments of ggml_cuda_error, which prints them and aborts): the statement that failed, where,
    and the error text ggml was given. Wherever the log goes (a log thread, /dev/null), this is seen."""
    seq: int
    pid: int
    tid: int
    statement: str  # "cudaGetLastError()", "cublasCreate_v2(&cublas_handles[device])"
    function: str  # ggml's function that checked it
    file: str
    line: int
    message: str  # cudaGetErrorString / cublasGetStatusString of the error
    kind: str = "check"

    @property
    def called(self) -> str:
        """The function the statement calls: cudaGetLastError, cublasCreate_v2, cuMemCreate."""
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(", self.statement or "")
        return m.group(1) if m else (self.statement or "").strip()


@record
class Abort:
    """ggml_abort(file, line, fmt, ...) (GGML_ABORT, GGML_ASSERT): ggml stopping the process, in its
    own words (the format filled from the call's integer and string arguments)."""
    seq: int
    pid: int
    tid: int
    file: str
    line: int
    message: str
    kind: str = "abort"


def format_printf(fmt: str, ints: list[int], read_string) -> str:
    """FMT filled the way printf would with integer-class arguments INTS (in order), %s read through
    READ_STRING(address) (None: unreadable). A '*' width or precision takes an argument, as in C.
    Floating point arguments travel in other registers: shown as '?'. Arguments beyond INTS: the
    conversion is left as written."""
    out, i, pos = [], 0, 0
    bits_of = {"hh": 8, "h": 16, "l": 64, "ll": 64, "z": 64, "j": 64, "t": 64}
    for m in re.finditer(r"%([-+ #0]*)(\*|\d*)(?:\.(\*|\d*))?(hh|h|ll|l|z|j|t)?([diouxXcspnfFeEgGa%])", fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        conv = m.group(5)
        if conv == "%":
            out.append("%")
            continue
        stars = (m.group(2) == "*") + (m.group(3) == "*")
        if i + stars > len(ints):
            out.append(m.group(0))
            continue
        precision = ints[i + stars - 1] if m.group(3) == "*" else int(m.group(3)) if m.group(3) else None
        i += stars  # the width / precision arguments: not shown
        if conv in "fFeEgGa":
            out.append("?")
            continue
        if i >= len(ints):
            out.append(m.group(0))
            continue
        v = ints[i]
        i += 1
        if conv == "n":
            continue  # writes a count through its pointer: prints nothing
        if conv == "s":
            text = read_string(v) if v else "(null)"
            text = "(unreadable)" if text is None else text
            out.append(text[:precision] if v and precision is not None and 0 <= precision < (1 << 31) else text)
        elif conv == "c":
            out.append(chr(v & 0xFF) if v & 0xFF else "")
        elif conv == "p":
            out.append(f"{v:#x}")
        else:
            bits = bits_of.get(m.group(4), 32)
            v &= (1 << bits) - 1
            if conv in "di" and v >> (bits - 1):
                v -= 1 << bits
            out.append(format(v, "x" if conv == "x" else "X" if conv == "X" else "o" if conv == "o" else "d"))
    out.append(fmt[pos:])
    return "".join(out)


@record
class Libraries:
    """The CUDA-role files mapped into a process at one moment (after its init, at a failed load,
    at a hang), with the g_* globals of every shim among them: run's view of cuda-state."""
    seq: int
    pid: int
    when: str  # after init | at a failed load | at the hang | before it was killed
    files: list = factory(list)  # {"path", "role", "base"} in load order
    shims: list = factory(list)  # {"library", "globals", "missing", "how"} (gdb/shimstate.read_globals)
    kind: str = "libraries"


def waiting_in(frames: list[Frame], shims=()) -> str | None:
    """The CUDA driver/NVML frame a thread waits in: the entry point, and where inside it. SHIMS:
    the file names of other files in those roles (an interposer under its own soname, such as
    HAMi-core's libvgpu.so waiting on its lock)."""
    in_shim = [f for f in frames if role_of(f.library) in ("driver", "nvml")
               or (f.library and f.library.rsplit("/", 1)[-1] in shims)]
    if not in_shim:
        return None
    entry = next((f for f in in_shim if is_cuda_symbol(f.function)), None)
    innermost = in_shim[0]
    text = entry.describe() if entry else innermost.describe()
    if entry is not None and entry is not innermost:
        text += f", blocked in {innermost.function}" + (f" at {innermost.where}" if innermost.where else "")
    return text


@record
class Timeline:
    events: list = factory(list)
    stops: int = 0
    patterns: tuple[str, ...] = DEFAULT_ERROR_PATTERNS
    notes: list[str] = factory(list)
    _seq: int = 0
    _times: dict = factory(dict)  # id(event) -> when it happened (Timeline.add)
    cost: dict = factory(dict)  # pid -> [debugger stops, seconds in our stop handlers]: what the tool cost it
    observed: dict = factory(dict)  # pid -> how its lookups and calls were seen ("in-process", or why breakpoints)
    searches: list = factory(list)  # ld.so's search for each library, recorded in-process: {"pid", "for", "flag", "path"}
    hang: dict | None = None  # the threads at a timeout/interrupt, their locks and spins (session.collect_hang)
    watch_began: list = factory(list)  # an attach: the threads already inside CUDA when the watch began

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, event, t_ns: int | None = None):
        """EVENT happened at T_NS (CLOCK_MONOTONIC; now when not given: gdb records an event while
        its process is stopped, so now is in order with what the process recorded itself)."""
        self.events.append(event)
        self._times[id(event)] = time.monotonic_ns() if t_ns is None else t_ns
        return event

    def count_stop(self, pid: int, seconds: float = 0.0) -> None:
        """One debugger stop of PID, and the time our handler spent in it."""
        self.stops += 1
        entry = self.cost.get(pid)
        if entry is None:
            entry = self.cost[pid] = [0, 0.0]
        entry[0] += 1
        entry[1] += seconds

    def order(self) -> None:
        """Put the events in the order they happened and number them so: what the processes
        recorded themselves (core/recorder.py) arrives in batches, after gdb's own events. A
        process's start comes before anything it did."""
        times = self._times
        first: dict[int, int] = {}
        for e in self.events:
            t = times.get(id(e), 0)
            if e.kind != "process" or e.what != "start":
                first[e.pid] = min(first.get(e.pid, t), t)
        for e in self.events:
            if e.kind == "process" and e.what == "start" and e.pid in first:
                times[id(e)] = min(times.get(id(e), 0), first[e.pid] - 1)
        self.events.sort(key=lambda e: times.get(id(e), 0))
        for i, e in enumerate(self.events, 1):
            e.seq = i
        self._seq = len(self.events)

    def of(self, kind: str) -> list:
        return [e for e in self.events if e.kind == kind]

    @property
    def calls(self) -> list[Call]:
        return self.of("call")

    @property
    def lookups(self) -> list[Lookup]:
        return self.of("lookup")

    @property
    def loads(self) -> list[Load]:
        return self.of("load")

    @property
    def writes(self) -> list[Write]:
        return self.of("write")

    @property
    def kills(self) -> list[Kill]:
        return self.of("kill")

    @property
    def crashes(self) -> list[Crash]:
        return self.of("crash")

    @property
    def checks(self) -> list[Check]:
        return self.of("check")

    @property
    def aborts(self) -> list[Abort]:
        return self.of("abort")

    @property
    def libraries(self) -> list[Libraries]:
        return self.of("libraries")

    def mapped(self, pid: int) -> Libraries | None:
        """The first snapshot of PID's CUDA libraries (after its init, if it got there)."""
        return next((e for e in self.libraries if e.pid == pid), None)

    @property
    def processes(self) -> list[ProcessEvent]:
        return self.of("process")

    def process_start(self, pid: int) -> ProcessEvent | None:
        """The start event of PID: its program, parent, environment and cwd."""
        return next((p for p in self.processes if p.pid == pid and p.what == "start"), None)

    def matches_error(self, text: str) -> bool:
        return any(re.search(p, text) for p in self.patterns)

    @property
    def errors(self) -> list[Write]:
        return [w for w in self.writes if self.matches_error(w.text)]


RELEVANT_ENV_PREFIXES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "CUDA_", "OLLAMA_", "GGML_", "CUDASHIM_")


def relevant_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(RELEVANT_ENV_PREFIXES)}


def event_to_dict(event) -> dict:
    """A JSON-ready copy of EVENT. Not dataclasses.asdict: its deep copy took ~25 ms of a
    report with 420 lookups; events hold only scalars, flat dicts and lists of Frames."""
    d = dict(event.__dict__)
    for key, value in d.items():
        if isinstance(value, list):
            d[key] = [dict(v.__dict__) if isinstance(v, Frame) else v for v in value]
        elif isinstance(value, dict):
            d[key] = dict(value)
    if isinstance(event, Call):
        d["result_name"] = event.result_name
        d["layer"] = event.spec.layer if event.spec else None
    return d
