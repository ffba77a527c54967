"""cuda-patch: change what a CUDA/NVML function returns, live; delete to restore it exactly."""
from __future__ import annotations

import re

import gdb

from ...core.calls import ARG_REGISTERS, SPECS, is_cuda_symbol
from ...core.codes import UnknownValue, parse_value
from ...core.timeline import Call
from .. import memory, session
from ..command import Command, register
from ..quiet import quietly


class Patch:
    def __init__(self, pid, function, value, outs, skip, count, cond):
        self.id = pid
        self.function = function
        self.value = value
        self.outs = outs  # [(index, value, size)]
        self.skip = skip
        self.count = count
        self.cond = cond
        self.hits = 0
        self.history: list[dict] = []
        self.bp: _PatchBreakpoint | None = None
        self.finishes: list = []

    def describe(self) -> str:
        parts = [f"--return {self.value}"] + [f"--out {i}={v}" + (f":{s}" if s != 4 else "") for i, v, s in self.outs]
        if self.skip:
            parts.append("--skip")
        if self.count is not None:
            parts.append(f"--count {self.count}")
        if self.cond:
            parts.append(f"--if {self.cond!r}")
        return f"{self.function} " + " ".join(parts)


PATCHES: dict[int, Patch] = {}
_NEXT_ID = [1]
_SKIP_PENDING: list[Patch] = []


def _record(patch: Patch, original, pid, tid, library):
    patch.history.append({"original": original, "patched": patch.value, "skipped": patch.skip})
    tracer = session.active()
    if tracer is not None:
        tracer.timeline.add(Call(seq=tracer.timeline.next_seq(), pid=pid, tid=tid, function=patch.function,
                                 library=library, caller=None, args={"cuda-patch": patch.id}, result=patch.value,
                                 returned=True, patched_from=original if original is not None else -1))


def _write_outs(patch: Patch, inferior, pointers):
    for (index, value, size), ptr in zip(patch.outs, pointers):
        if ptr:
            inferior.write_memory(ptr, int(value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))


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
            self.commands = ("silent\npython __import__('gdb_cudashim.gdb.commands.cuda_patch', "
                             "fromlist=['x']).apply_skip()\ncontinue")

    def stop(self):
        patch = self.patch
        if patch.count is not None and patch.hits >= patch.count:
            return False
        if patch.cond:
            try:
                if not bool(gdb.parse_and_eval(patch.cond)):
                    return False
            except gdb.error as exc:
                gdb.write(f"cuda-patch: #{patch.id} --if {patch.cond!r}: {exc}; not applied\n", gdb.STDERR)
                return False
        patch.hits += 1
        frame = gdb.newest_frame()
        pointers = [memory.reg(frame, ARG_REGISTERS[i]) for i, _, _ in patch.outs]
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


def _function_known(name: str) -> bool:
    if name in SPECS or is_cuda_symbol(name):
        return True
    try:
        return gdb.lookup_global_symbol(name) is not None or bool(gdb.execute(f"info address {name}", to_string=True))
    except gdb.error:
        return False


def _parse_out(text: str, function: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)=([^:]+)(?::(1|2|4|8))?", text)
    if not m:
        raise gdb.GdbError(f"cuda-patch: --out takes INDEX=VALUE[:SIZE], not {text!r}")
    index = int(m.group(1))
    spec = SPECS.get(function)
    limit = len(spec.args) if spec else len(ARG_REGISTERS)
    if index >= limit:
        what = f"{function}'s {limit} argument(s)" if spec else f"the {limit} register arguments"
        raise gdb.GdbError(f"cuda-patch: --out index {index} is beyond {what}")
    try:
        value = parse_value(m.group(2))
    except UnknownValue as exc:
        raise gdb.GdbError(f"cuda-patch: --out {text}: {exc}")
    return index, value, int(m.group(3) or 4)


@register
class CudaPatch(Command):
    name = "cuda-patch"
    summary = "Change what a CUDA/NVML function returns (and its out-parameters), live; delete to restore it."

    @classmethod
    def build(cls, p):
        p.epilog = ("VALUE: a number or a name (CUDA_ERROR_NO_DEVICE, cudaErrorNoDevice, NVML_ERROR_NOT_FOUND, SUCCESS).\n"
                    "Examples:  cuda-patch cuInit --return CUDA_ERROR_NO_DEVICE\n"
                    "           cuda-patch cuDriverGetVersion --return SUCCESS --out 0=11080\n"
                    "           cuda-patch list      cuda-patch delete 2      cuda-patch delete all")
        p.add_argument("function", metavar="FUNCTION|list|delete", help="the function to patch, or list / delete")
        p.add_argument("ids", nargs="*", metavar="ID|all", help="with delete: patch numbers, or all")
        p.add_argument("--return", dest="ret", metavar="VALUE", help="the result to return")
        p.add_argument("--out", action="append", default=[], metavar="INDEX=VALUE[:SIZE]",
                       help="also write VALUE (SIZE bytes, default 4) through pointer argument INDEX (0-based)")
        p.add_argument("--skip", action="store_true", help="return at entry without running the function")
        p.add_argument("--count", type=int, metavar="N", help="patch only the first N calls")
        p.add_argument("--if", dest="cond", metavar="EXPR", help="patch only when EXPR is true at entry (e.g. $rdi == 0)")

    def run(self, args, from_tty):
        if args.function == "list":
            return self._list()
        if args.function == "delete":
            return self._delete(args.ids)
        if args.ids:
            raise gdb.GdbError(f"cuda-patch: unexpected arguments: {' '.join(args.ids)}")
        if args.ret is None:
            raise gdb.GdbError("cuda-patch: give --return VALUE (see 'help cuda-patch')")
        try:
            value = parse_value(args.ret)
        except UnknownValue as exc:
            raise gdb.GdbError(f"cuda-patch: {exc}")
        if args.count is not None and args.count <= 0:
            raise gdb.GdbError("cuda-patch: --count must be a positive number")
        if not _function_known(args.function):
            raise gdb.GdbError(f"cuda-patch: no function {args.function!r} is loaded, and it is not a CUDA/NVML entry point")
        outs = [_parse_out(o, args.function) for o in args.out]
        patch = Patch(_NEXT_ID[0], args.function, value, outs, args.skip, args.count, args.cond)
        patch.bp = quietly(lambda: _PatchBreakpoint(patch))
        _NEXT_ID[0] += 1
        PATCHES[patch.id] = patch
        pending = "" if patch.bp.locations else " (pending: applies when a library defining it loads)"
        gdb.write(f"cuda-patch #{patch.id}: {patch.describe()}{pending}\n")

    def _list(self):
        if not PATCHES:
            gdb.write("cuda-patch: no patches\n")
            return
        for p in PATCHES.values():
            where = ", ".join(sorted({(memory.solib(l.address) or "?").rsplit("/", 1)[-1] for l in p.bp.locations})) \
                if p.bp and p.bp.is_valid() and p.bp.locations else "pending"
            last = p.history[-1] if p.history else None
            was = f", last original {last['original']}" if last and last["original"] is not None else ""
            gdb.write(f"#{p.id} {p.describe()}  [{where}] hits {p.hits}{was}\n")

    def _delete(self, ids):
        if not ids:
            raise gdb.GdbError("cuda-patch: delete needs patch numbers or 'all'")
        if ids == ["all"]:
            targets = list(PATCHES)
        else:
            targets = []
            for i in ids:
                if not i.isdigit() or int(i) not in PATCHES:
                    raise gdb.GdbError(f"cuda-patch: no patch #{i} (see 'cuda-patch list')")
                targets.append(int(i))
        for i in targets:
            patch = PATCHES.pop(i)
            for f in list(patch.finishes):
                if f.is_valid():
                    f.delete()
            if patch.bp is not None and patch.bp.is_valid():
                patch.bp.delete()
        gdb.write(f"cuda-patch: deleted {', '.join('#' + str(i) for i in targets) or 'nothing'}\n")
