"""Differential diagnosis: two `run --json` reports of the same program (REF, the reference, and
RUN, the candidate) -> the places they differ, first divergence first.

Processes are matched by role (the first process; its children by program name and start order;
their children...), never by pid. Within a role the CUDA calls, symbol lookups, CUDA library
loads and error texts form one stream in the order they happened, and the two streams are
aligned by what each event is (a call's function and input arguments, a lookup's symbol and
library, a load's library, an error's descriptor), not by position or address. An aligned pair
then differs in a result, an out-value (decoded: CUresult names, driver version, device count,
device-property fields, export tables by name), found/NULL, ok/failed, or text.

Noise that always differs is ignored: pids, tids, pointers (only NULL or not counts), seq
numbers, timings, stops counts, paths (libraries compare by role or file name), and the
calls, lookups and loads a forwarding shim makes into the real driver behind it (what the
program's own libraries see is compared, not how the shim got it).

Pure: never imports gdb.
"""
from __future__ import annotations

import os
import re

from . import codes
from .calls import SPECS, role_of
from .record import as_dict, factory, record
from .report import READABLE_SCHEMAS, SCHEMA
from .runtime import label as file_label


class ReportError(ValueError):
    """A file diff cannot compare: one line for the user."""


@record
class Divergence:
    kind: str  # only-in-ref | only-in-run | differs
    role: str  # the process role: "probe", "spawner > probe", "goserver > goserver #2"
    event: str  # call | lookup | load | error | process
    subject: str  # what, decoded: "cuGetExportTable(CUDART_INTERFACE)", "dlsym(libcuda.so.1, 'cuInit')"
    ref: str | None  # its value in REF (None: not there)
    run: str | None  # its value in RUN
    name: str = ""  # the function, symbol or library the subject is about (findings match on it)
    count: int = 1  # folded: how many like it in a row
    more: list = factory(list)  # the folded ones' subjects (the first few)
    position: float = 0.0  # where in RUN's order it happened


_STR, _INT, _NUM, _DICT, _LIST = (str,), (int,), (int, float), (dict,), (list,)
# Every event field diff reads, and what it must be when present (null is always allowed).
_EVENT_FIELDS = {
    "calls": {"seq": _NUM, "pid": _INT, "tid": _INT, "function": _STR, "args": _DICT, "library": _STR,
              "caller": _STR},
    "lookups": {"seq": _NUM, "pid": _INT, "tid": _INT, "how": _STR, "symbol": _STR, "version": _STR,
                "handle_library": _STR, "provider": _STR, "caller": _STR},
    "loads": {"seq": _NUM, "pid": _INT, "tid": _INT, "path": _STR, "error": _STR, "resolved": _STR, "caller": _STR},
    "errors": {"seq": _NUM, "pid": _INT, "tid": _INT, "fd": _INT, "text": _STR, "error": _STR},
    "processes": {"seq": _NUM, "pid": _INT, "parent": _INT, "what": _STR, "detail": _STR, "signal": _STR,
                  "exit_code": _INT},
}


def _is(value, kinds) -> bool:
    """VALUE is one of KINDS (a bool is never a number: JSON's true is not 1)."""
    return value is None or (isinstance(value, kinds) and not isinstance(value, bool))


def check(report, label: str) -> dict:
    """REPORT as a dict diff can read, or ReportError naming LABEL and the first field that
    is not what a report of ours holds there."""
    def bad(where: str):
        top = where.split("[")[0].split(".")[0]
        at = f" at {where}" if where != top else ""
        raise ReportError(f"{label} is not a gdb-cudashim run --json report ({top} is malformed{at})")

    if not isinstance(report, dict) or not isinstance(report.get("calls"), list) or "processes" not in report:
        raise ReportError(f"{label} is not a gdb-cudashim run --json report")
    schema = report.get("schema")
    if schema is None:
        raise ReportError(f"{label} has no schema version (written by an older gdb-cudashim): record it again")
    if type(schema) is not int or schema not in READABLE_SCHEMAS:
        raise ReportError(f"{label} is report schema {schema!r}; this gdb-cudashim reads schemas "
                          + ", ".join(map(str, READABLE_SCHEMAS[:-1])) + f" and {READABLE_SCHEMAS[-1]}")
    for key, fields in _EVENT_FIELDS.items():
        events = report.get(key)
        if not _is(events, _LIST):
            bad(key)
        for i, event in enumerate(events or []):
            if not isinstance(event, dict):
                bad(f"{key}[{i}]")
            for name, kinds in fields.items():
                if not _is(event.get(name), kinds):
                    bad(f"{key}[{i}].{name}")
            if key == "processes" and event.get("what") in ("start", "exec") and event.get("pid") is None:
                bad(f"{key}[{i}].pid")
    meta = report.get("meta")
    if not _is(meta, _DICT):
        bad("meta")
    if not _is((meta or {}).get("command"), _LIST):
        bad("meta.command")
    left = report.get("left_running")
    if not _is(left, _LIST) or not all(_is(p, _INT) for p in left or []):
        bad("left_running")
    for key, number in (("walls", "wall"), ("tested", "test")):
        entries = report.get(key)
        if not _is(entries, _LIST):
            bad(key)
        for i, w in enumerate(entries or []):
            if not isinstance(w, dict) or not _is(w.get(number), _INT) or not all(
                    isinstance(w.get(k), str) for k in ("rule", "verdict")) or not all(
                    _is(w.get(k), _STR) for k in ("summary", "why")) \
                    or not _is(w.get("simulation"), _LIST):
                bad(f"{key}[{i}]")
    libraries = report.get("libraries")
    if not _is(libraries, _LIST):
        bad("libraries")
    for i, lib in enumerate(libraries or []):
        if not isinstance(lib, dict) or not _is(lib.get("pid"), _INT) or not _is(lib.get("files"), _LIST):
            bad(f"libraries[{i}]")
        for f in lib.get("files") or []:
            if not isinstance(f, dict) or not all(_is(f.get(k), _STR) for k in ("path", "role", "kind", "how")):
                bad(f"libraries[{i}].files")
    return report


MAX_REPORT_BYTES = 1 << 30


def load(path: str, label: str) -> dict:
    import json

    import stat

    try:
        # never block on a FIFO or read a device without end: a report is a regular file
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ReportError(f"{label} {path} is not a regular file (a report is one)")
            if st.st_size > MAX_REPORT_BYTES:
                raise ReportError(f"{label} {path} is {st.st_size} bytes, more than any report "
                                  f"({MAX_REPORT_BYTES} at most)")
            with os.fdopen(fd, "rb") as f:
                fd = None
                data = f.read(MAX_REPORT_BYTES + 1)
        finally:
            if fd is not None:
                os.close(fd)
    except OSError as exc:
        raise ReportError(f"cannot read {label} {path}: {exc.strerror}") from None
    try:
        report = json.loads(data)
    except (ValueError, RecursionError):
        raise ReportError(f"{label} {path} is not JSON") from None
    return check(report, f"{label} {path}")


def program(report: dict) -> str | None:
    """The program a report ran: the first process's program (after its exec), else the command."""
    roles = roles_of(report)
    first = next(iter(roles.values()), None)
    if first is not None:
        return first[1]
    command = (report.get("meta") or {}).get("command") or []
    return os.path.basename(str(command[0])) if command else None


# -- roles -------------------------------------------------------------------------------

def roles_of(report: dict) -> dict[int, tuple[str, str]]:
    """pid -> (role, program), in start order. A process's program is what it last exec'd,
    else what it started as; its role is its parent's role and its program, numbered among
    its siblings running the same program ("goserver > goserver #2")."""
    starts, programs = [], {}
    for p in report.get("processes") or []:
        if p.get("what") == "start":
            starts.append(p)
            programs.setdefault(p["pid"], os.path.basename(p.get("detail") or "") or "?")
        elif p.get("what") == "exec" and p.get("detail"):
            programs[p["pid"]] = os.path.basename(p["detail"])
    roles: dict[int, tuple[str, str]] = {}
    siblings: dict[tuple, int] = {}
    for p in starts:
        pid, prog = p["pid"], programs[p["pid"]]
        parent = roles.get(p.get("parent"))
        base = f"{parent[0]} > {prog}" if parent else prog
        n = siblings[base] = siblings.get(base, 0) + 1
        roles.setdefault(pid, (base if n == 1 else f"{base} #{n}", prog))
    return roles


# -- events as comparable items ------------------------------------------------------------

def _label(path) -> str:
    """A library compared across machines: its role (driver, runtime, ggml-cuda...) or file name."""
    if not path:
        return "?"
    return role_of(str(path)) or os.path.basename(str(path))


def _name(path) -> str:
    return os.path.basename(str(path)) if path else "?"


_TIMESTAMP = re.compile(r"^\d+\.\d+\.\d+\.\d+ [A-Z] ", re.M)  # llama.cpp's common_log prefix
_PATH = re.compile(r"(?:/[^\s/:'\"()]+)+/([^\s/:'\"()]+)")
_HEX = re.compile(r"0x[0-9a-fA-F]{6,}")
_PID = re.compile(r"\b(pid|tid|thread|process)[ =:]*\d+", re.I)
# Go's slog (ollama: time=2025-...Z) and ISO times elsewhere
_TIMES = re.compile(r"\btime=\S+|\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?")


def normal_text(text: str) -> str:
    """Error or loader text without what always differs: timestamps, directories, addresses, pids."""
    text = _TIMES.sub("…", _TIMESTAMP.sub("", text or ""))
    text = _PATH.sub(r"\1", text)
    text = _HEX.sub("0x…", text)
    return _PID.sub(r"\1 N", text).rstrip("\n")


def _driver_version(v) -> str:
    return f"{v} ({v // 1000}.{v % 1000 // 10})" if isinstance(v, int) and v > 0 else str(v)


# Inputs compared as values, not as what identifies the call.
VALUE_INPUTS = {("cudaGetErrorString", "error")}
# Out-values that change between two runs of the same program on the same machine.
NOISY_OUTS = {"free", "used"}
# A pointer out-value: only whether it was set counts.
_POINTER_WORDS = {"ppExportTable": "a table", "pfn": "an address", "pctx": "a context", "device": "a handle"}


def _result(c: dict) -> str:
    if not c.get("returned"):
        return "(no return seen)"
    r = c.get("result")
    spec = SPECS.get(c.get("function"))
    if spec is None or spec.result == "str" or not isinstance(r, int):
        return repr(r)
    return f"{r} {codes.result_name(spec.result, r)}"


def _call_item(c: dict) -> tuple:
    fn = c.get("function") or "?"
    spec = SPECS.get(fn)
    args = c.get("args") or {}
    key_parts, shown, values = [], [], {"result": _result(c), "landed in": _label(c.get("library"))}
    kinds = dict(spec.args) if spec else {}
    for name, value in args.items():
        kind = kinds.get(name, "")
        if (fn, name) in VALUE_INPUTS:
            values[name] = str(value)
        elif kind in ("str", "uuid", "int", "uint", "u64"):
            key_parts.append((name, value))
            if kind == "uuid":
                shown.append(codes.export_table_name(str(value)).split(" ")[0] if value else "?")
            elif kind == "str":
                shown.append(repr(value))
            else:
                shown.append(f"{name}={value}")
    ok = c.get("returned") and c.get("result") == 0
    if ok:  # out-values mean something only when the call succeeded
        for name, value in args.items():
            kind = kinds.get(name, "")
            if not kind.startswith("out_") or name in NOISY_OUTS:
                continue
            if kind == "out_ptr":
                values[name] = "NULL" if not value else _POINTER_WORDS.get(name, "set")
            elif isinstance(value, dict):  # a struct, decoded: its fields by name
                for field, v in value.items():
                    if field != "nonzero" and field not in NOISY_OUTS:
                        values[f"{name}.{field}"] = repr(v)
            elif name == "driverVersion":
                values[name] = _driver_version(value)
            else:
                values[name] = repr(value)
    subject = f"{fn}({', '.join(shown)})"
    return ("call", fn) + tuple(key_parts), subject, fn, values


def _lookup_item(l: dict) -> tuple:
    handle = l.get("handle_library")
    asked = handle if handle in ("RTLD_DEFAULT", "RTLD_NEXT") else _name(handle)
    version = f", {l['version']!r}" if l.get("version") else ""
    subject = f"{l.get('how', 'dlsym')}({asked}, {l.get('symbol')!r}{version})"
    found = l.get("found")
    values = {"result": "(no return seen)" if found is None else ("found" if found else "NULL")}
    if found and l.get("provider"):
        values["found in"] = _label(l["provider"])
    key = ("lookup", l.get("how"), l.get("symbol"), _label(handle), l.get("version"))
    return key, subject, l.get("symbol") or "?", values


def _load_item(l: dict) -> tuple:
    ok = l.get("ok")
    values = {"result": "(no return seen)" if ok is None else ("ok" if ok else "FAILED")}
    if l.get("error"):
        values["loader error"] = normal_text(l["error"])
    if ok and l.get("resolved"):
        values["loaded"] = _label(l["resolved"])
    return ("load", _label(l.get("path"))), f"dlopen({_name(l.get('path'))})", _name(l.get("path")), values


def _error_item(e: dict) -> tuple:
    values = {"text": normal_text(e.get("text") or "")}
    if e.get("error"):
        values["write"] = f"failed: {e['error']}"
    return ("error", e.get("fd")), f"error text on fd {e.get('fd')}", "error", values


def _forwarded(event: dict) -> bool:
    """An event between a forwarding shim and the real driver behind it."""
    return role_of(event.get("caller")) == "driver"


@record
class Item:
    seq: float
    tid: int | None
    layer: str | None
    event: str
    key: tuple
    subject: str
    name: str
    values: dict


def streams(report: dict) -> dict[str, list[Item]]:
    """role -> its events as Items, in the order they happened."""
    roles = roles_of(report)
    out: dict[str, list[Item]] = {role: [] for role, _ in roles.values()}
    makers = (("calls", _call_item), ("lookups", _lookup_item), ("loads", _load_item), ("errors", _error_item))
    for field, make in makers:
        for e in report.get(field) or []:
            if field != "errors" and _forwarded(e):
                continue
            role = roles.get(e.get("pid"), (f"pid {e.get('pid')} (not in processes)", ""))[0]
            key, subject, name, values = make(e)
            spec = SPECS.get(e.get("function")) if field == "calls" else None
            out.setdefault(role, []).append(Item(float(e.get("seq") or 0), e.get("tid"), spec.layer if spec else None,
                                                 key[0], key, subject, name, values))
    for items in out.values():
        items.sort(key=lambda i: i.seq)
    return out


def _exits(report: dict) -> dict[str, tuple[float, str]]:
    roles = roles_of(report)
    left = set(report.get("left_running") or ())
    out = {}
    for pid, (role, _) in roles.items():
        out[role] = (float("inf"), "left running" if pid in left else "(no exit seen)")
    for p in report.get("processes") or []:
        if p.get("what") == "exit" and p.get("pid") in roles:
            how = p.get("signal") or f"exit {p.get('exit_code')}"
            out[roles[p["pid"]][0]] = (float(p.get("seq") or 0), how)
    return out


# -- the comparison ----------------------------------------------------------------------------

def compare(ref: dict, run: dict) -> list[Divergence]:
    """Every divergence of RUN from REF, in RUN's order (consecutive ones of the same sort
    folded into one); [] when they match. Both are checked reports of the same program."""
    from difflib import SequenceMatcher

    ref_streams, run_streams = streams(ref), streams(run)
    ref_exits, run_exits = _exits(ref), _exits(run)
    found: list[Divergence] = []
    last_run_seq = max([i.seq for items in run_streams.values() for i in items] or [0.0])
    for role, ref_items in ref_streams.items():
        if role not in run_streams:
            parent = role.rsplit(" > ", 1)[0]
            ended = run_exits.get(parent, (float("inf"), ""))[0]  # the parent never got as far: after its end
            seen = [i.seq for i in run_streams.get(parent, [])] + ([ended] if ended != float("inf") else [])
            at = max(seen or [last_run_seq]) + 0.5
            found.append(Divergence("only-in-ref", role, "process", f"process {role}", "started", None,
                                    name=role, position=at))
    for role, run_items in run_streams.items():
        if role not in ref_streams:
            at = run_items[0].seq if run_items else last_run_seq
            found.append(Divergence("only-in-run", role, "process", f"process {role}", None, "started",
                                    name=role, position=at - 0.5))
            continue
        ref_items = ref_streams[role]
        matcher = SequenceMatcher(None, [i.key for i in ref_items], [i.key for i in run_items], autojunk=False)
        prev = run_items[0].seq - 1 if run_items else 0.0
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                for k, (a, b) in enumerate(zip(ref_items[i1:i2], run_items[j1:j2])):
                    differs = {k for k in set(a.values) | set(b.values) if a.values.get(k) != b.values.get(k)}
                    if differs:
                        # a different result or text makes the rest follow: show only that
                        names = [k for k in ("result", "text") if k in differs] or sorted(differs)
                        found.append(Divergence(
                            "differs", role, a.event, a.subject,
                            _values(a, names), _values(b, names),
                            name=a.name, position=_end(b, run_items, j1 + k)))
                prev = run_items[j2 - 1].seq
                continue
            for n, a in enumerate(ref_items[i1:i2]):
                found.append(Divergence("only-in-ref", role, a.event, a.subject, _summary(a), None, name=a.name,
                                        position=prev + 0.02 + 0.9 * (n + 1) / (i2 - i1 + 1)))  # after prev's result
            for b in run_items[j1:j2]:
                found.append(Divergence("only-in-run", role, b.event, b.subject, None, _summary(b), name=b.name,
                                        position=b.seq))
            if j2 > j1:
                prev = run_items[j2 - 1].seq
        ref_exit, (rb, run_exit) = ref_exits.get(role, (0, "?"))[1], run_exits.get(role, (0, "?"))
        if ref_exit != run_exit:
            found.append(Divergence("differs", role, "process", f"process {role} ended", ref_exit, run_exit,
                                    name=role, position=rb))
    found += _library_divergences(ref, run, run_streams)
    found.sort(key=lambda d: d.position)
    last = max([d.position for d in found] + [last_run_seq])
    return fold(found) + _wall_divergences(ref, run, last + 1)


def _wall_divergences(ref: dict, run: dict, position: float) -> list[Divergence]:
    """run --what-if's chains, wall by wall, then the findings tested beside them (after every
    event: a wall is a re-run's conclusion, not a moment of this run): a wall that is another
    finding, or the same finding with another verdict. Reports without walls (no --what-if on one
    side) are not compared here; a report from before "tested" (schema 2) has none to compare."""
    if ref.get("walls") is None or run.get("walls") is None:
        return []
    from .walls import same_words

    pairs = []  # the walls are a chain: compared place by place
    ref_walls, run_walls = ref["walls"], run["walls"]
    for n in range(max(len(ref_walls), len(run_walls))):
        pairs.append((f"wall {n + 1}", ref_walls[n] if n < len(ref_walls) else None,
                      run_walls[n] if n < len(run_walls) else None))
    if ref.get("tested") is not None and run.get("tested") is not None:
        # the findings tested beside them are a set: the same finding (rule and words) in both
        ref_tested = {same_words(t): t for t in ref["tested"]}
        run_tested = {same_words(t): t for t in run["tested"]}
        for key in dict.fromkeys([*ref_tested, *run_tested]):
            pairs.append((f"tested: {key[0]}", ref_tested.get(key), run_tested.get(key)))
    out = []
    for subject, a, b in pairs:
        said = [f"{w['rule']}: {w['verdict']}" if w else None for w in (a, b)]
        if said[0] == said[1]:
            continue
        kind = "differs" if a and b else "only-in-ref" if a else "only-in-run"
        out.append(Divergence(kind, "what-if", "wall", subject, said[0], said[1],
                              name=(b or a)["rule"], position=position + len(out)))
    return out


def _files_by_role(report: dict) -> dict[str, dict[str, str]]:
    """process role -> {CUDA role: "what it is, file (how it was loaded)"} from the report's
    'libraries' snapshots (reports written before they existed have none: nothing to compare)."""
    roles = roles_of(report)
    out: dict[str, dict[str, str]] = {}
    for lib in report.get("libraries") or []:
        pid = lib.get("pid")
        role = roles.get(pid, (None,))[0] if isinstance(pid, int) else None
        if role is None:
            continue
        files: dict[str, list[str]] = {}
        for f in lib.get("files") or []:
            opener = (f.get("how") or "").rpartition(" by ")[2]
            if (f.get("how") or "").startswith("dlopen(") and role_of(opener) == "driver":
                continue  # the driver a forwarding shim opened behind itself: not what cudart saw
            files.setdefault(f.get("role") or "?", []).append(
                f"{f.get('kind')}, {file_label(f.get('path') or '?')} ({f.get('how')})")
        out[role] = {r: "; ".join(sorted(v)) for r, v in files.items()}
    return out


def _library_divergences(ref: dict, run: dict, run_streams: dict) -> list[Divergence]:
    """A process whose runtime, driver or NVML is another kind of file in RUN (a fake runtime
    preloaded where REF had NVIDIA's): shown before its calls, the first thing that differs."""
    ref_files, run_files = _files_by_role(ref), _files_by_role(run)
    out = []
    for role, files in run_files.items():
        before = ref_files.get(role)
        if before is None:
            continue
        start = min([i.seq for i in run_streams.get(role, [])] or [0.0]) - 0.5
        for cuda_role in sorted(set(before) | set(files)):
            if cuda_role == "ggml-cuda":
                continue  # where libggml-cuda lies is the program's business, not the shim's
            a, b = before.get(cuda_role), files.get(cuda_role)
            if _kinds(a) != _kinds(b):
                out.append(Divergence("differs", role, "library", f"the CUDA {cuda_role}", a, b, name=cuda_role,
                                      position=start))
    return out


def _kinds(text: str | None) -> list[str] | None:
    """What answers a role, without where the files lie (two machines keep them elsewhere)."""
    if text is None:
        return None
    return sorted({part.split(",", 1)[0] for part in text.split("; ")})


def _values(item: Item, names: list[str]) -> str:
    return "; ".join(str(item.values.get(k, "-")) if k in ("result", "text") else f"{k} {item.values.get(k, '-')}"
                     for k in names)


def _summary(item: Item) -> str:
    v = item.values
    main = v.get("result") or v.get("text") or ""
    extra = [f"{k} {x}" for k, x in v.items() if k not in ("result", "text", "landed in", "found in", "loaded")]
    return "; ".join([main] + extra) if extra else main


def _end(item: Item, items: list[Item], index: int) -> float:
    """Where a call's result became known in RUN's order. A driver or NVML call returns before
    anything else of interest happens in its thread; a cudart call wraps the lookups, loads and
    driver calls made on its behalf (cudaGetDeviceCount's result follows cuInit's) and returns
    before the thread's next runtime call or error write."""
    if item.event != "call" or item.layer != "runtime":
        return item.seq + 0.01
    last = None
    for later in items[index + 1:]:
        if later.tid != item.tid:
            continue
        if later.event == "error" or (later.event == "call" and later.layer != "driver"):
            return later.seq - 0.25
        last = later.seq
    return last + 0.25 if last is not None else item.seq + 0.01


MORE_SHOWN = 4


def fold(divergences: list[Divergence]) -> list[Divergence]:
    """Consecutive divergences of the same sort (cudart's ~420 lookups a shim without
    cuGetProcAddress_v2 causes) as one, with a count and the first few subjects."""
    out: list[Divergence] = []
    for d in divergences:
        prev = out[-1] if out else None
        if (prev is not None and d.kind != "differs" and prev.kind == d.kind and prev.role == d.role
                and prev.event == d.event and (d.event != "call" or prev.subject.split("(")[0] == d.subject.split("(")[0])):
            prev.count += 1
            if len(prev.more) < MORE_SHOWN:
                prev.more.append(repr(d.name) if d.event == "lookup" else d.subject)
            continue
        out.append(d)
    return out


def to_dict(divergences: list[Divergence], ref: dict, run: dict) -> dict:
    return {"schema": SCHEMA, "same": not divergences, "program": program(run),
            "ref": (ref.get("meta") or {}).get("command"), "run": (run.get("meta") or {}).get("command"),
            "divergences": [{k: v for k, v in as_dict(d).items() if k != "position"} for d in divergences]}


# -- rendering ---------------------------------------------------------------------------------

def _value(d: Divergence, side: str) -> str:
    value = d.ref if side == "ref" else d.run
    if value is None:
        return {"process": "not started", "call": "not called", "lookup": "not looked up", "load": "not loaded",
                "error": "not written", "wall": "no such wall"}.get(d.event, "absent")
    return value


def describe(d: Divergence) -> str:
    """One divergence in words."""
    what = d.subject if d.count == 1 else f"{d.count} {d.event}s like {d.subject}"
    if d.kind == "only-in-ref":
        return f"{what}: only in REF ({d.ref})" if d.event != "process" else f"{what}: only in REF"
    if d.kind == "only-in-run":
        return f"{what}: only in RUN ({d.run})" if d.event != "process" else f"{what}: only in RUN"
    return f"{what}: REF {d.ref}, RUN {d.run}"


def render(divergences: list[Divergence], ref_name: str, run_name: str, color: bool = False) -> list[str]:
    from tabulate import tabulate

    from .text import Style
    from .term import printable, printable_tree

    # the reports' texts and the file names never drive the terminal; --json keeps them
    divergences = [Divergence(**printable_tree(as_dict(d))) for d in divergences]
    ref_name, run_name = printable(ref_name), printable(run_name)
    s = Style(color)
    if not divergences:
        return [s("green", "No difference: ") + f"{run_name} did what {ref_name} did (calls, results, lookups, "
                "loads, error texts, processes)"]
    out = [s("bold", "Differences from the reference") + f" (REF {ref_name}, RUN {run_name}), in the order they happened",
           s("red", "First divergence: ") + f"[{divergences[0].role}] " + describe(divergences[0])]
    rows = []
    for i, d in enumerate(divergences, 1):
        what = d.subject if d.count == 1 else f"{d.count} x {d.subject}"
        if d.more:
            what += ", " + ", ".join(d.more) + (", ..." if d.count > len(d.more) + 1 else "")
        ref, run = _value(d, "ref"), _value(d, "run")
        common = os.path.commonprefix([ref, run])
        if d.ref is not None and d.run is not None and len(common) > 24:  # the texts' common start, once
            cut = common.rfind(" ") + 1 if " " in common else len(common)
            ref, run = "…" + ref[cut:], "…" + run[cut:]
        rows.append([i, d.role, _cut(what, 70), _cut(ref, 45), _cut(run, 45)])
    out.append("")
    out += tabulate(rows, headers=["#", "process", "what", "REF", "RUN"], tablefmt="simple").splitlines()
    return out


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the reference as evidence for a run's findings ----------------------------------------------

def reference_evidence(findings: list[dict], divergences: list[Divergence], limit: int = 2) -> None:
    """Add to each finding what the reference did where this run diverged, for the divergences
    about a function or symbol the finding names ("the reference returned a table for
    CUDART_INTERFACE here; your shim returned 500")."""
    for f in findings:
        text = " ".join([f.get("summary") or ""] + list(f.get("evidence") or []))
        added = 0
        for d in divergences:
            if added >= limit:
                break
            if d.event in ("process", "error") or not re.search(rf"\b{re.escape(d.name)}\b", text):
                continue
            f.setdefault("evidence", []).append(_as_evidence(d))
            added += 1


def _as_evidence(d: Divergence) -> str:
    if d.kind == "only-in-ref":
        return f"the reference made {d.subject} here ({d.ref}); your shim's run never did"
    if d.kind == "only-in-run":
        return f"the reference never made {d.subject} ({d.run} here)"
    if d.subject.startswith("cuGetExportTable(") and (d.ref or "").startswith("0 ") and d.run:
        table = d.subject[len("cuGetExportTable("):-1]
        return f"the reference returned a table for {table} here; your shim returned {d.run.split()[0]}"
    return f"the reference's {d.subject} gave {d.ref} here; your shim's gave {d.run}"
