"""cuda-patch: change what a CUDA/NVML function returns, live; delete to restore it exactly."""
from __future__ import annotations

import re

import gdb

from ...core.calls import ARG_REGISTERS, SPECS, is_cuda_symbol
from ...core.codes import UnknownValue, parse_value
from ...core.patchout import OutError, capped, fits
from ...core.patchout import parse as parse_out
from ...core.timeline import Call
from .. import memory, session
from ..command import Command, register
from ..quiet import quietly


class Patch:
    def __init__(self, pid, function, value, outs, skip, count, cond):
        self.id = pid
        self.function = function
        self.value = value
        self.outs = outs  # [patchout.Out]
        self.skip = skip
        self.count = count
        self.cond = cond
        self.hits = 0
        self.calls = 0  # entries seen (with --if: conditions evaluated)
        self.cond_failed = False
        self.cond_errors = 0
        self.cond_error = ""  # gdb's words, the first time the --if failed
        self.history: list[dict] = []
        self.bp: _PatchBreakpoint | None = None
        self.finishes: list = []
        self.shown_value: str | None = None  # --return as given (sym:NAME), where VALUE is what gdb evaluates
        self.preload: str | None = None  # --preload PATH
        self.preload_before: str | None = None  # LD_PRELOAD before it (None: unset)

    def reset_counts(self) -> None:
        """A new run of the program (cuda-whatif): --count and the notes count from zero again."""
        self.hits = self.calls = self.cond_errors = 0
        self.cond_failed = False
        self.cond_error = ""

    def describe(self) -> str:
        parts = [f"--return {self.shown_value or self.value}"] + [f"--out {o.shown}" for o in self.outs]
        if self.preload:
            parts.append(f"--preload {self.preload}")
        if self.skip:
            parts.append("--skip")
        if self.count is not None:
            parts.append(f"--count {self.count}")
        if self.cond:
            parts.append(f"--if {self.cond!r}")
        return f"{self.function} " + " ".join(parts)

    def report_note(self) -> str | None:
        """For the report's notes: a patch that never applied, or whose --if failed, says so
        (a condition that never holds is otherwise silent). No gdb calls: the watchdog's partial
        report builds it from another thread."""
        head = f"cuda-patch #{self.id} ({self.describe()})"
        calls = f"{self.calls} call{'s' if self.calls != 1 else ''} of {self.function}"
        if self.cond_errors:
            where = f"at every call ({calls})" if self.cond_errors == self.calls else f"at {self.cond_errors} of {calls}"
            applied = "never applied" if not self.hits else f"applied {self.hits} time{'s' if self.hits != 1 else ''}"
            return f"{head} {applied}: its --if failed {where}: {self.cond_error}"
        if self.hits:
            return None
        if not self.calls:
            return f"{head} never applied: {self.function} was never called"
        if self.cond:
            return f"{head} never applied: its --if never held ({calls})"
        return None


class EnvPatch:
    """cuda-patch env:NAME --map FROM=TO: each process that execs with NAME=FROM gets NAME=TO
    instead, written into its environment at the exec stop, before any of its code runs. What the
    variable's reader then sees is what a fixed reader would have made of FROM (run --what-if: a
    shim that reads GPU-<uuid> tokens, simulated with the ordinal its own UUID answer gave)."""

    def __init__(self, pid, name, maps):
        self.id = pid
        self.function = f"env:{name}"
        self.name = name
        self.maps = maps  # [(from, to)]
        self.value = None
        self.hits = 0
        self.calls = 0
        self.bp = None
        self.finishes: list = []
        self.history: list[dict] = []
        self.failed = ""  # why a matching value could not be rewritten, the first time
        self.preload = None  # what delete reads of every patch (Patch's --preload)

    def reset_counts(self) -> None:
        self.hits = self.calls = 0
        self.failed = ""

    def describe(self) -> str:
        return f"{self.function} " + " ".join(f"--map {a}={b}" for a, b in self.maps)

    def report_note(self) -> str | None:
        if self.hits:
            return None
        if self.failed:
            return f"cuda-patch #{self.id} ({self.describe()}) never applied: {self.failed}"
        return (f"cuda-patch #{self.id} ({self.describe()}) never applied: no process exec'd with "
                + " or ".join(f"{self.name}={a!r}" for a, _b in self.maps))

    def apply(self, pid: int) -> str | None:
        """Rewrite NAME in PID's environment strings (just exec'd) in place; a line for the report, or None."""
        from ...core.procfs import ProcError, environ_span, read_environ

        try:
            value = read_environ(pid).get(self.name)
        except (OSError, ProcError):
            return None
        self.calls += 1
        to = next((b for a, b in self.maps if a == value), None)
        if value is None or to is None:
            return None
        old, new = value.encode(errors="surrogateescape"), to.encode()
        if len(new) > len(old):  # written in place: never past the string's own bytes
            self.failed = self.failed or f"{self.name}={to!r} is longer than {value!r} in bytes"
            return f"cuda-patch #{self.id}: cannot write {self.name}={to!r} over {value!r} in pid {pid} (longer)"
        try:
            start, end = environ_span(pid)
            inferior = next(i for i in gdb.inferiors() if i.pid == pid)
            block = bytes(inferior.read_memory(start, end - start))
            entry = self.name.encode() + b"=" + old + b"\0"
            at = block.find(entry)
            while at > 0 and block[at - 1] != 0:  # NAME=... inside another variable (MY_NAME=...): the next
                at = block.find(entry, at + 1)
            if at < 0:
                self.failed = self.failed or f"{self.name}={value!r} not found in pid {pid}'s environment strings"
                return None
            inferior.write_memory(start + at + len(self.name) + 1, new + b"\0")
        except (OSError, ValueError, StopIteration, gdb.error, gdb.MemoryError) as exc:
            self.failed = self.failed or f"could not rewrite it in pid {pid}: {exc}"
            return f"cuda-patch #{self.id}: could not rewrite {self.name} in pid {pid}: {exc}"
        self.hits += 1
        self.history.append({"pid": pid, "original": value, "patched": to})
        return f"cuda-patch #{self.id}: pid {pid} started with {self.name}={value!r}, rewritten to {to!r}"


def _check_preload(path: str) -> None:
    import os

    if not os.path.isfile(path) or any(c in path for c in ": \n"):
        raise gdb.GdbError(f"cuda-patch: --preload {path!r}: not a file LD_PRELOAD can name")


def _preload(path: str):
    """Add PATH to the LD_PRELOAD of the program gdb starts next; what it was before (None: unset)."""
    from ..recording import set_env, show_env

    _check_preload(path)
    before = show_env("LD_PRELOAD")
    set_env("LD_PRELOAD", f"{before}:{path}" if before else path)
    return before


def _unpreload(patch) -> None:
    """Take this patch's library out of the program's LD_PRELOAD (one entry: another patch's, or the
    user's own, stay whatever order patches are deleted in); unset it when nothing is left."""
    from ..recording import set_env, show_env

    path = patch.preload
    if not path:
        return
    entries = (show_env("LD_PRELOAD") or "").split(":")
    if path in entries:
        entries.remove(path)
    entries = [e for e in entries if e]
    set_env("LD_PRELOAD", ":".join(entries) if entries else patch.preload_before)


def apply_env(pid: int, note) -> None:
    """At PID's exec: every env: patch (tracer._check_exec)."""
    for patch in list(session.State.patches.values()):
        if isinstance(patch, EnvPatch):
            line = patch.apply(pid)
            if line:
                note(line)


_NEXT_ID = [1]
_SKIP_PENDING: list[Patch] = []


def _record(patch: Patch, original, pid, tid, library):
    value = patch.value
    if isinstance(value, str):  # sym:NAME: the address it stood for, as the program got it
        try:
            value = int(gdb.parse_and_eval(value))
        except gdb.error:
            value = None
    patch.history.append({"original": original, "patched": value, "skipped": patch.skip})
    tracer = session.active()
    if tracer is not None:
        tracer.timeline.add(Call(seq=tracer.timeline.next_seq(), pid=pid, tid=tid, function=patch.function,
                                 library=library, caller=None, args={"cuda-patch": patch.id}, result=value,
                                 returned=True, patched_from=original if original is not None else -1))


def _write_outs(patch: Patch, inferior, pointers):
    """POINTERS: (the pointer, its buffer's length or None) per --out, read at the call's entry."""
    for out, (ptr, cap) in zip(patch.outs, pointers):
        data = capped(out, cap)
        if ptr and data:
            inferior.write_memory(ptr + out.offset, data)


def _entry_pointers(patch: Patch, frame) -> list[tuple[int, int | None]]:
    return [(memory.reg(frame, ARG_REGISTERS[o.index]),
             memory.reg(frame, ARG_REGISTERS[o.cap_arg]) if o.cap_arg is not None else None) for o in patch.outs]


class _PatchReturn(gdb.FinishBreakpoint):
    def __init__(self, patch, frame, pointers, pid, tid, library):
        self.patch, self.pointers, self.pid, self.tid, self.library = patch, pointers, pid, tid, library
        super().__init__(frame, internal=True)
        self.silent = True

    def stop(self):
        try:
            frame = gdb.newest_frame()
            original = memory.reg(frame, "rax") & 0xFFFFFFFF
            gdb.execute(f"set $rax = {self.patch.value}", to_string=True)
            _write_outs(self.patch, gdb.selected_inferior(), self.pointers)
            _record(self.patch, original, self.pid, self.tid, self.library)
        except Exception as exc:  # never break the user's program
            gdb.write(f"cuda-patch: #{self.patch.id} could not patch the return: {exc}\n", gdb.STDERR)
        if self in self.patch.finishes:
            self.patch.finishes.remove(self)
        return False

    def out_of_scope(self):
        if self in self.patch.finishes:
            self.patch.finishes.remove(self)


class _PatchBreakpoint(gdb.Breakpoint):
    def __init__(self, patch: Patch):
        self.patch = patch
        super().__init__(function=patch.function, internal=True)
        self.silent = True
        if patch.skip:
            from ..capture import RESUME

            self.commands = ("silent\npython __import__('gdb_cudashim.gdb.commands.cuda_patch', "
                             "fromlist=['x']).apply_skip()\n" + RESUME)

    def stop(self):
        patch = self.patch
        if patch.count is not None and patch.hits >= patch.count:
            return False
        patch.calls += 1
        if patch.cond:
            try:
                if not _holds(patch.cond):
                    return False
            except gdb.error as exc:
                patch.cond_errors += 1
                if not patch.cond_failed:  # once, not at every call; the report's notes say it again
                    patch.cond_failed = True
                    patch.cond_error = str(exc)
                    gdb.write(f"cuda-patch: #{patch.id} --if {patch.cond!r}: {exc}; not applied while it fails\n",
                              gdb.STDERR)
                return False
        patch.hits += 1
        frame = gdb.newest_frame()
        pointers = _entry_pointers(patch, frame)
        pid, tid = memory.ptid()
        library = memory.solib(frame.pc())
        if patch.skip:
            _SKIP_PENDING.append((patch, pointers, pid, tid, library))
            return True  # the commands pop the frame: a stop() handler must not
        try:
            patch.finishes.append(_PatchReturn(patch, frame, pointers, pid, tid, library))
        except (ValueError, gdb.error, RuntimeError) as exc:
            gdb.write(f"cuda-patch: #{patch.id} cannot catch the return of {patch.function}: {exc}\n", gdb.STDERR)
        return False


def apply_skip():
    """From the breakpoint's commands: return at entry with the patched value."""
    while _SKIP_PENDING:
        patch, pointers, pid, tid, library = _SKIP_PENDING.pop(0)
        try:
            _write_outs(patch, gdb.selected_inferior(), pointers)
            gdb.execute(f"return (long){patch.value}", from_tty=False, to_string=True)
            _record(patch, None, pid, tid, library)
        except gdb.error as exc:
            gdb.write(f"cuda-patch: #{patch.id} could not skip {patch.function}: {exc}\n", gdb.STDERR)


def _function_loaded(name: str) -> bool:
    try:
        return gdb.lookup_global_symbol(name) is not None or bool(gdb.execute(f"info address {name}", to_string=True))
    except gdb.error:
        return False


_DECLARED: set[str] = set()


def _declared_in_headers(name: str) -> bool | None:
    """Is NAME a driver or runtime function declared in the pinned stack's cuda.h /
    cuda_runtime_api.h (macro names included: cuMemAlloc -> cuMemAlloc_v2)? None: no headers here."""
    if not _DECLARED:
        from ...stack import installed

        stack = installed()
        for header in ("cuda.h", "cuda_runtime_api.h"):
            try:
                text = (stack.include / header).read_text(errors="replace") if stack else ""
            except OSError:
                continue
            _DECLARED.update(re.findall(r"\b(cu(?:da)?[A-Z]\w*)\s*\(", text))
            for pair in re.findall(r"^#define\s+(cu\w+)\s+(cu\w+)\s*$", text, re.M):
                _DECLARED.update(pair)
    return name in _DECLARED if _DECLARED else None


def _check_function(name: str) -> None:
    if name in SPECS or _function_loaded(name):
        return
    declared = _declared_in_headers(name) if is_cuda_symbol(name) else False
    if declared is False:
        raise gdb.GdbError(f"cuda-patch: no function {name!r} is loaded, and it is not a CUDA function I know "
                           f"(not declared in cuda.h or cuda_runtime_api.h; check the spelling)")


def _holds(cond: str) -> bool:
    """--if at a breakpoint's stop(): never a call into the program (gdb dies of a function call
    made from a stop handler, "Recursive internal problem"), whatever slipped past
    _side_effect: gdb refuses the call with an error instead, reported as the condition's."""
    saved = gdb.parameter("may-call-functions")
    if saved:
        gdb.execute("set may-call-functions off", to_string=True)
    try:
        return bool(gdb.parse_and_eval(cond))
    finally:
        if saved:
            gdb.execute("set may-call-functions on", to_string=True)


_TOKEN = re.compile(r"""\s+|"(?:\\.|[^"\\])*"?|'(?:\\.|[^'\\])*'?|\$\w*|[A-Za-z_]\w*|\d[\w.]*"""
                    r"|<<=|>>=|\+\+|--|->|::|[-+*/%&|^!=<>]=|&&|\|\||<<|>>|.", re.S)
_ASSIGN = {"=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>="}
_NOT_CALLS = {"sizeof", "alignof", "_Alignof", "typeof", "__typeof__", "__typeof", "decltype"}
_TYPE_WORDS = {"void", "char", "short", "int", "long", "float", "double", "signed", "unsigned", "_Bool", "bool",
               "struct", "union", "enum", "const", "volatile"}


def _is_type(tokens: list[str]) -> bool:
    """(TOKENS) is a cast: a type name, maybe with qualifiers and stars."""
    words = [t for t in tokens if t != "*"]
    if not words or tokens[0] == "*" or not all(re.fullmatch(r"[A-Za-z_]\w*", w) for w in words):
        return False
    if any(w in _TYPE_WORDS for w in words):
        return True
    if len(words) != 1:
        return False
    try:
        gdb.lookup_type(words[0])
        return True
    except gdb.error:
        return False


def _side_effect(cond: str) -> str | None:
    """What in --if COND would change the program: an assignment, ++/--, a function call (a
    convenience function such as $_streq is gdb's own, not the program's). None if nothing."""
    tokens = [t for t in _TOKEN.findall(cond) if not t.isspace()]
    opened: list[int] = []  # the open parentheses not closed yet
    match: dict[int, int] = {}  # a ')' -> its '('
    for i, tok in enumerate(tokens):
        if tok in _ASSIGN:
            return f"an assignment ({tok!r})"
        if tok in ("++", "--"):
            return f"an increment or decrement ({tok!r})"
        if tok == "(" and i:
            before = tokens[i - 1]
            if before.startswith("$"):
                value = gdb.convenience_variable(before[1:]) if len(before) > 1 else None
                if value is None or value.type.code != gdb.TYPE_CODE_INTERNAL_FUNCTION:
                    return f"a function call ({before}(...))"
            elif re.fullmatch(r"[A-Za-z_]\w*", before) and before not in _NOT_CALLS and before not in _TYPE_WORDS:
                return f"a function call ({before}(...))"
            elif before == "]" or (before == ")" and not _is_type(tokens[match.get(i - 1, i - 1) + 1:i - 1])):
                return "a function call (through a pointer)"
        if tok == "(":
            opened.append(i)
        elif tok == ")" and opened:
            match[i] = opened.pop()
    return None


def _check_condition(cond: str) -> None:
    """Reject an --if that does not parse now; one naming a symbol not loaded yet may work later.
    'whatis' parses and types it without side effects (no call, no assignment). One that would
    change the program is refused: it is evaluated at every call, inside a breakpoint."""
    try:
        gdb.execute(f"whatis {cond}", to_string=True)
    except gdb.error as exc:
        if re.search(r"syntax error|Junk after|Unmatched|Invalid (number|character)", str(exc)):
            raise gdb.GdbError(f"cuda-patch: --if {cond!r}: {exc}")
    effect = _side_effect(cond)
    if effect:
        raise gdb.GdbError(f"cuda-patch: --if {cond!r} has {effect}: a condition is evaluated at every call and "
                           f"must only read (compare registers, arguments, globals)")


def _parse_out(text: str, function: str):
    try:
        return parse_out(text, function)
    except OutError as exc:
        raise gdb.GdbError(f"cuda-patch: {exc}") from None


@register
class CudaPatch(Command):
    name = "cuda-patch"
    summary = "Change what a CUDA/NVML function returns (and its out-parameters), live; delete to restore it."

    @classmethod
    def build(cls, p):
        p.epilog = ("VALUE: a number or a name (CUDA_ERROR_NO_DEVICE, cudaErrorNoDevice, NVML_ERROR_NOT_FOUND, SUCCESS),\n"
                    "or sym:NAME, the address of the function NAME in the program (a pointer result: dlsym's).\n"
                    "Examples:  cuda-patch cuInit --return CUDA_ERROR_NO_DEVICE\n"
                    "           cuda-patch cuDriverGetVersion --return SUCCESS --out 0=11080\n"
                    "           cuda-patch nvmlSystemGetDriverVersion --return SUCCESS --out 0=str:570.133.20\n"
                    "           cuda-patch cudaGetDeviceProperties_v2 --return SUCCESS --out 0.major=8 --out 0.minor=9\n"
                    "           cuda-patch list      cuda-patch delete 2      cuda-patch delete all\n"
                    "One patch per function: a second one on the same function is refused, naming the patch that\n"
                    "holds it (each call then has one patched result); delete that one first.")
        p.add_argument("function", metavar="FUNCTION|list|delete", help="the function to patch, or list / delete")
        p.add_argument("ids", nargs="*", metavar="ID|all", help="with delete: patch numbers, or all")
        p.add_argument("--return", dest="ret", metavar="VALUE", help="the result to return")
        p.add_argument("--out", action="append", default=[], metavar="INDEX[.FIELD]=VALUE",
                       help="also write through pointer argument INDEX (0-based): a number (VALUE[:SIZE], SIZE bytes, "
                            "default 4), str:TEXT (NUL added; cut to the buffer's length argument), hex:BYTES (a "
                            "UUID), or one FIELD of the struct it points to (0.major=8, 0.totalGlobalMem=8589934592, "
                            "0.name=str:NAME)")
        p.add_argument("--skip", action="store_true", help="return at entry without running the function")
        p.add_argument("--count", type=int, metavar="N", help="patch only the first N calls")
        p.add_argument("--preload", metavar="PATH",
                       help="also preload PATH (a library) in the program gdb starts next, for as long as the patch "
                            "lives (run --what-if's stand-in cuGetProcAddress_v2)")
        p.add_argument("--map", action="append", default=[], metavar="FROM=TO",
                       help="with env:NAME: a process that execs with NAME=FROM gets NAME=TO (no longer than FROM)")
        p.add_argument("--if", dest="cond", metavar="EXPR",
                       help="patch only when EXPR is true at entry (e.g. $rdi == 0); EXPR only reads: assignments, "
                            "++/-- and calls into the program are refused; one that never held or failed is in the "
                            "report's notes")

    def run(self, args, from_tty):
        if args.function == "list":
            return self._list()
        if args.function == "delete":
            return self._delete(args.ids)
        if args.ids:
            raise gdb.GdbError(f"cuda-patch: unexpected arguments: {' '.join(args.ids)}")
        if args.function.startswith("env:"):
            return self._env(args)
        if args.map:
            raise gdb.GdbError("cuda-patch: --map is for env:NAME (an environment variable at exec)")
        if args.ret is None:
            raise gdb.GdbError("cuda-patch: give --return VALUE (see 'help cuda-patch')")
        spec = SPECS.get(args.function)
        if args.ret.startswith("sym:"):
            name = args.ret[4:]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise gdb.GdbError(f"cuda-patch: --return {args.ret!r}: sym: needs a function name")
            if spec is not None and spec.result != "str":
                raise gdb.GdbError(f"cuda-patch: --return sym: is a pointer; {args.function} returns a {spec.result}")
            value = f"(unsigned long)&{name}"  # evaluated at each patched return, once the library is loaded
        else:
            try:
                value = parse_value(args.ret)
            except UnknownValue as exc:
                raise gdb.GdbError(f"cuda-patch: {exc}")
        if isinstance(value, int) and not fits(value, 4 if spec and spec.result != "str" else 8):
            what = f"{args.function}'s {spec.result} (32 bits)" if spec and spec.result != "str" else "a 64-bit register"
            raise gdb.GdbError(f"cuda-patch: --return {args.ret} does not fit in {what}")
        if args.count is not None and args.count <= 0:
            raise gdb.GdbError("cuda-patch: --count must be a positive number")
        _check_function(args.function)
        holder = next((p for p in session.State.patches.values() if p.function == args.function), None)
        if holder is not None:  # two would each catch the same call: whose result stands, which row is the call?
            raise gdb.GdbError(f"cuda-patch: {args.function} is already patched by #{holder.id} ({holder.describe()}); "
                               f"one patch per function: 'cuda-patch delete {holder.id}' first, then give every change "
                               f"in one patch")
        outs = [_parse_out(o, args.function) for o in args.out]
        if args.cond is not None:
            _check_condition(args.cond)
        if args.preload:
            _check_preload(args.preload)
        patch = Patch(_NEXT_ID[0], args.function, value, outs, args.skip, args.count, args.cond)
        patch.shown_value = args.ret
        patch.bp = quietly(lambda: _PatchBreakpoint(patch))
        patch.preload, patch.preload_before = args.preload, (_preload(args.preload) if args.preload else None)
        _NEXT_ID[0] += 1
        session.State.patches[patch.id] = patch
        pending = "" if patch.bp.locations else " (pending: applies when a library defining it loads)"
        gdb.write(f"cuda-patch #{patch.id}: {patch.describe()}{pending}\n")

    def _env(self, args):
        name = args.function[4:]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise gdb.GdbError(f"cuda-patch: {args.function!r}: env: needs a variable name (env:CUDA_VISIBLE_DEVICES)")
        if args.ret is not None or args.out or args.skip or args.count is not None or args.cond is not None:
            raise gdb.GdbError("cuda-patch: env:NAME takes only --map FROM=TO")
        maps = []
        for m in args.map:
            a, eq, b = m.partition("=")
            if not eq or not a:
                raise gdb.GdbError(f"cuda-patch: --map {m!r}: give FROM=TO")
            if len(b.encode()) > len(a.encode()):
                raise gdb.GdbError(f"cuda-patch: --map {m!r}: TO cannot be longer than FROM in bytes (it is written "
                                   "in place)")
            maps.append((a, b))
        if not maps:
            raise gdb.GdbError("cuda-patch: env:NAME needs --map FROM=TO")
        holder = next((p for p in session.State.patches.values() if p.function == args.function), None)
        if holder is not None:
            raise gdb.GdbError(f"cuda-patch: {args.function} is already patched by #{holder.id}; "
                               f"'cuda-patch delete {holder.id}' first")
        patch = EnvPatch(_NEXT_ID[0], name, maps)
        _NEXT_ID[0] += 1
        session.State.patches[patch.id] = patch
        gdb.write(f"cuda-patch #{patch.id}: {patch.describe()} (at each exec)\n")

    def _list(self):
        if not session.State.patches:
            gdb.write("cuda-patch: no patches\n")
            return
        for p in session.State.patches.values():
            where = "at each exec" if isinstance(p, EnvPatch) else \
                ", ".join(sorted({(memory.solib(l.address) or "?").rsplit("/", 1)[-1] for l in p.bp.locations})) \
                if p.bp and p.bp.is_valid() and p.bp.locations else "pending"
            last = p.history[-1] if p.history else None
            was = f", last original {last['original']}" if last and last["original"] is not None else ""
            gdb.write(f"#{p.id} {p.describe()}  [{where}] hits {p.hits}{was}\n")

    def _delete(self, ids):
        if not ids:
            raise gdb.GdbError("cuda-patch: delete needs patch numbers or 'all'")
        if ids == ["all"]:
            targets = list(session.State.patches)
        else:
            targets = []
            for i in ids:
                if not i.isdigit() or int(i) not in session.State.patches:
                    raise gdb.GdbError(f"cuda-patch: no patch #{i} (see 'cuda-patch list')")
                targets.append(int(i))
        for i in targets:
            _unpreload(session.State.patches[i])
        for i in targets:
            patch = session.State.patches.pop(i)
            for f in list(patch.finishes):
                if f.is_valid():
                    f.delete()
            if patch.bp is not None and patch.bp.is_valid():
                patch.bp.delete()
        gdb.write(f"cuda-patch: deleted {', '.join('#' + str(i) for i in targets) or 'nothing'}\n")
