"""The report: a plain dict (what --json writes) and pure renderers from it to lines.

Pure: never imports gdb. The gdb command and the CLI render the same dict.
"""
from __future__ import annotations

import os

from . import cudafiles, devices, interpose, loader, runtime
from .calls import KEY_LOOKUPS
from .record import as_dict
from .finding import Finding
from .text import Style, format_value
from .timeline import Timeline, event_to_dict

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
EXIT_NO_CUDA = 4  # no traced process loaded a CUDA library: nothing to diagnose (not a clean bill)
# The JSON's layout: raised when a field changes meaning or goes; `gdb-cudashim diff` reads only its own.
# 2: the "walls" of run --what-if (core/walls.py); 3: its "tested", the findings no wall reached,
# each re-run with its own fix. Older reports read the same otherwise (no "tested": none compared).
SCHEMA = 3
READABLE_SCHEMAS = (1, 2, 3)


OUTPUT_WRITES, OUTPUT_TEXT = 128, 400


def build(tl: Timeline, findings: list[Finding], hang=None, meta=None) -> dict:
    errors = []
    for w in tl.errors:
        d = event_to_dict(w)
        d["origin"] = w.origin
        errors.append(d)
    timed_out = bool(hang) and hang.get("reason", "timeout") == "timeout"
    from .rules_absent import NOTHING_TO_DIAGNOSE

    nothing = bool(findings) and not errors and all(f.rule in NOTHING_TO_DIAGNOSE for f in findings)
    status = EXIT_TIMEOUT if timed_out else (EXIT_NO_CUDA if nothing else EXIT_FAILURE if (findings or errors)
                                             else EXIT_OK)
    return {
        "schema": SCHEMA,
        "status": status,
        "meta": meta or {},
        "errors": errors,
        # what the program wrote inside the capture windows (ggml's "Device 0: ..." lines): what-if
        # compares it between runs; bounded, as the windows are
        "output": [{"pid": w.pid, "fd": w.fd, "text": w.text[:OUTPUT_TEXT]} for w in tl.writes[:OUTPUT_WRITES]],
        "calls": [event_to_dict(c) for c in tl.calls],
        "lookups": [event_to_dict(l) for l in tl.lookups],
        "loads": [event_to_dict(l) for l in tl.loads],
        "checks": [event_to_dict(c) for c in tl.checks],  # ggml's failed CUDA_CHECKs (core/rules_use.py)
        "aborts": [event_to_dict(a) for a in tl.aborts],  # ggml_abort: GGML_ABORT / GGML_ASSERT, in ggml's words
        "findings": [as_dict(f) for f in findings],
        "processes": [event_to_dict(p) for p in tl.processes],
        "hang": hang,
        "watch_began": list(tl.watch_began),
        "stops": tl.stops,
        "observed": [{"pid": pid, "how": tl.observed.get(pid, "debugger stops"), "stops": tl.cost.get(pid, [0, 0.0])[0],
                      "stop_handler_ms": round(tl.cost.get(pid, [0, 0.0])[1] * 1000, 1)}
                     for pid in dict.fromkeys(p.pid for p in tl.processes if p.what == "start")],
        "notes": list(tl.notes),
        "chains": interpose.chains(tl),
        "libraries": runtime.describe(tl),
        "devices": devices.devices(tl),
        "ld_so_preload": {"file": loader.ld_so_preload_path(), "entries": loader.ld_so_preload()},
    }


def to_json(report: dict) -> str:
    """The report as JSON text, one timeline event per line: greppable and diffable, and
    written by json's C encoder (indent= forces the pure-Python one: ~5x slower on a
    report of 400 lookups)."""
    import json

    parts = []
    for key, value in report.items():
        if isinstance(value, list) and value:
            items = ",\n  ".join(json.dumps(item, default=str) for item in value)
            parts.append(f"{json.dumps(key)}: [\n  {items}\n ]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, default=str)}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def _b(path):
    return os.path.basename(path) if path else "?"


def _exit_cell(end: dict):
    """A process's exit code or signal; one the tool ended says so ("SIGKILL, ended by
    gdb-cudashim (--end-server)"), never a bare SIGKILL that reads as someone else's."""
    how = end.get("signal") or end.get("exit_code")
    detail = end.get("detail") or ""
    return f"{how}, {detail}" if detail.startswith("ended by") else how


def render(report: dict, color: bool = False, verbose: bool = False) -> list[str]:
    from tabulate import tabulate  # imported here: 80 ms that a batch run never needs

    from .term import printable_tree

    raw_errors = report.get("errors") or []
    report = printable_tree(report)  # a program's text never drives the terminal; JSON keeps it
    s = Style(color)
    out: list[str] = []
    meta = report.get("meta") or {}
    if meta.get("command"):
        out.append(s("bold", "gdb-cudashim: ") + " ".join(_shown_word(w) for w in meta["command"]))
    procs = [p for p in report["processes"] if p["what"] == "start"]
    exits = {p["pid"]: _exit_cell(p) for p in report["processes"] if p["what"] == "exit"}
    left = set(report.get("left_running") or ())
    still = "running" if not report["hang"] else ("hung" if report["hang"].get("reason", "timeout") == "timeout"
                                                   else "ended by us")
    if procs:
        seen = {o["pid"]: o for o in report.get("observed") or ()}

        def how(pid):
            o = seen.get(pid)
            if o is None:
                return ""
            way = "in-process" if o["how"] == "in-process" else "stops"
            return f"{way}, {o['stops']} stops"

        rows = [[p["pid"], p.get("parent") or "", _b(p.get("detail")),
                 exits.get(p["pid"], "left running" if p["pid"] in left else still), how(p["pid"])] for p in procs]
        out.append("")
        out.append(s("bold", "Processes"))
        out += tabulate(rows, headers=["pid", "parent", "program", "exit", "recorded"], tablefmt="simple").splitlines()

    out.append("")
    if report["errors"]:
        written = [e for e in report["errors"] if not e.get("error")]
        out.append(s("bold", "CUDA init errors, as written" if len(written) == len(report["errors"])
                     else "CUDA init errors, as written or attempted"))
        shown: dict[tuple, int] = {}
        for e, raw in zip(report["errors"], raw_errors):
            key = (e["pid"], e["fd"], e["text"])
            if key in shown:  # the same line again: once, with a count
                shown[key] += 1
                continue
            shown[key] = 1
            failed = f", the write failed: {e['error']}" if e.get("error") else ""
            out.append(s("red", f"  pid {e['pid']} fd {e['fd']} ({e['via']}, {len(raw['text'].encode())} bytes{failed}): ")
                       + _one_line(e["text"]))
            if e.get("origin"):
                out.append(f"    {'written' if not failed else 'attempted'} by {e['origin']}")
            frames = e.get("backtrace") or []
            for i, f in enumerate(frames[: (len(frames) if verbose else 10)]):
                where = f" at {f['where']}" if f.get("where") else ""
                out.append(f"    #{i:<2} {f['function']} ({_b(f['library'])}){where}")
        repeats = [(k, n) for k, n in shown.items() if n > 1]
        for (pid, fd, text), n in repeats:
            out.append(f"  (pid {pid} wrote {_one_line(text, 60)!r} {n} times)")
    else:
        out.append(s("bold", "CUDA init errors: ") + "none written")

    for ch in report.get("chains") or []:
        out.append("")
        out.append(s("bold", "CUDA driver chain: ") + f"{ch['soname']} (interposer, from {ch['source']}"
                   + (", hooks dlsym" if ch.get("hooks_dlsym") else "") + f") -> {_b(ch['driver'])} (driver)")
        out.append(f"  pid {ch['pid']}: {ch['forwarded']} calls followed through both ({', '.join(ch['functions'][:6])}); "
                   f"e.g. {ch['example']}")

    calls = report["calls"]
    if calls:
        out.append("")
        out.append(s("bold", "CUDA calls") + " (where each landed)")
        stand_ins = {f["path"]: f" ({f['kind']})" for lib in report.get("libraries") or [] for f in lib["files"]
                     if f["role"] == "runtime" and f["kind"] != cudafiles.NVIDIA_RUNTIME}
        shown = calls if verbose else _condense_calls(calls)
        rows = []
        for c in shown:
            result = c.get("result_name", "")
            if c.get("patched_from") is not None:
                result += f" (patched from {c['patched_from']})"
            if c.get("count", 1) > 1:
                result += f"  x{c['count']}"
            rows.append([c["pid"], c["function"], _short_args(c), s("red", result) if _is_bad(c) else result,
                         _b(c.get("library")) + stand_ins.get(c.get("library"), "")])
        out += tabulate(rows, headers=["pid", "call", "arguments", "result", "library"], tablefmt="simple").splitlines()

    lookups = report["lookups"]
    if lookups:
        missing = [l for l in lookups if l["found"] is False]
        out.append("")
        from_tables = sum(1 for l in lookups if l.get("found_by") == "symbol table")
        how = (f" ({len(lookups) - from_tables} watched to their return, {from_tables} answered from the symbol "
               f"tables ld.so searches)" if from_tables else "")
        important = [l for l in lookups if l["symbol"] in KEY_LOOKUPS]
        shown = "" if verbose or len(important) == len(lookups) else \
            f"; shown: the {len(important)} that cudart's init depends on (--verbose: all)"
        out.append(s("bold", "Symbol lookups") + f": {len(lookups)} into CUDA libraries, {len(missing)} found nothing"
                   + how + shown)
        def result(l):
            said = "found" if l["found"] else ("not known" if l["found"] is None else s("red", "NULL"))
            # an interposer's dlsym hook answered, not the C library's: name it (its NULL is its own)
            return f"{said} ({_b(l['hook'])}'s dlsym hook)" if l.get("hook") else said

        rows = [[l["pid"], l["how"], l["symbol"], _b(l.get("handle_library")), result(l),
                 _b(l.get("caller"))] for l in (lookups if verbose else important)]
        if rows:
            out += tabulate(rows, headers=["pid", "how", "symbol", "asked", "result", "asked by"], tablefmt="simple").splitlines()

    loads = report["loads"]
    if loads:
        out.append("")
        out.append(s("bold", "CUDA library loads"))
        rows = [[l["pid"], l["path"], l.get("resolved") or "",
                 "ok" if l["ok"] else "(no return seen)" if l["ok"] is None else s("red", "FAILED"),
                 l.get("error") or ""] for l in loads]
        out += tabulate(rows, headers=["pid", "dlopen", "loaded", "result", "loader error"], tablefmt="simple").splitlines()

    out += _render_libraries(report, s)
    out += devices.render(report.get("devices") or [])

    if report.get("hang"):
        out.append("")
        label = "Hang: " if report["hang"].get("reason", "timeout") == "timeout" else "Interrupted: "
        out.append(s("red", label) + report["hang"].get("summary", "the program was still running"))
        for t in report["hang"].get("threads", []):
            out.append(f"  pid {t['pid']} thread {t['tid']}" + (f" waits in {t['waiting_in']}" if t.get("waiting_in") else ""))
            for i, f in enumerate(t["frames"][:12]):
                where = f" at {f['where']}" if f.get("where") else ""
                out.append(f"    #{i:<2} {f['function']} ({_b(f['library'])}){where}")
        locks, spins = report["hang"].get("locks") or [], report["hang"].get("spins") or []
        if locks or spins:
            out.append("  Locks" + (" and spins" if spins else ""))
        for w in locks:
            owner = "itself" if w.get("owner") == w["waiter"] else f"thread {w.get('owner')}" + (
                f" at {w['owner_where']}" if w.get("owner_where") else " (gone)" if not w.get("owner_alive", True) else "")
            out.append(f"    thread {w['waiter']} waits on {w.get('symbol') or w['mutex']} ({w['mutex']}), owned by "
                       f"{owner}: {w.get('kind')}")
        for sp in spins:
            out.append(f"    thread {sp['tid']} spins in {', '.join(sp.get('functions') or [])} at "
                       f"{sp.get('lines') or '?'}: {round(100 * sp.get('cpu', 0))}% CPU, {sp.get('samples')} samples")

    out.append("")
    if report["findings"]:
        from .rules_absent import NOTHING_TO_DIAGNOSE

        nothing = all(f["rule"] in NOTHING_TO_DIAGNOSE for f in report["findings"])
        out.append(s("bold", "Nothing to diagnose (not a clean bill)" if nothing else "Diagnosis"))
        for i, f in enumerate(report["findings"], 1):
            out.append(s("red", f"{i}. {f['summary']}"))
            for ev in f["evidence"]:
                out.append(f"   - {ev}")
            out.append(s("green", "   fix: ") + f["fix"])
    elif report["errors"]:
        out.append(s("bold", "Diagnosis: ") + "no rule matched this failure; the full text and the timeline are above")
    elif report.get("gdb_died"):
        out.append(s("red", "Not watched to the end: ") + report["gdb_died"])
    elif not report.get("hang"):
        out.append(s("green", "No CUDA init failure seen."))
    for note in report.get("notes") or []:
        out.append(f"note: {note}")
    if report.get("partial"):
        why = report.get("interrupted") or ("gdb did not finish" if report.get("gdb_died") else "interrupted")
        out.append(s("red", "partial report: ") + f"the run was stopped ({why}) "
                   "before every process ended; what it shows is true up to then")
    out.append(f"({report['stops']} debugger stops)")
    return out


def _render_libraries(report: dict, s) -> list[str]:
    """Each process's CUDA files (what each is, how it got there), the runtime shims' exports
    against libggml-cuda's imports, the soname interplay, and every shim's g_* globals."""
    from tabulate import tabulate


    out = []
    for lib in report.get("libraries") or []:
        if not lib["files"]:
            continue
        out.append("")
        out.append(s("bold", "CUDA libraries") + f" (pid {lib['pid']}, {lib['when']})")
        rows = [[f["role"], f["kind"] + (f" -> {_b(f['forwards_to'])}" if f.get("forwards_to") else ""),
                 _one_line(f["how"], 60), _one_line(f.get("found") or "", 40), f["path"]] for f in lib["files"]]
        out += ["  " + line for line in tabulate(rows, headers=["role", "what it is", "loaded by", "found via", "file"],
                                                  tablefmt="simple").splitlines()]
        for note in lib.get("notes") or []:
            out.append(f"  {note}")
        for check in lib.get("imports") or []:
            out.append(("  " + s("red", "imports: ") if check["missing"] else "  imports: ") + check["summary"])
            for m in check["missing"][:8]:
                out.append(f"    {m['symbol']} ({m['stage']})" + (f": {m['note']}" if m.get("note") else ""))
        for shim in lib.get("shims") or []:
            values = []
            for name, v in shim["globals"].items():
                value = f"<{v['error']}>" if v.get("error") else format_value(v.get("value"))
                values.append(f"{name}={value}")
            text = ", ".join(values)
            if not values:
                out.append(f"  state of {runtime.label(shim['library'])}: {_one_line(shim['how'], 200)}")
                continue
            out.append(f"  state of {runtime.label(shim['library'])} ({shim['how']}): " + _one_line(text, GLOBALS_LINE))
    pre = report.get("ld_so_preload") or {}
    if pre.get("entries"):
        out.append(f"{pre['file']}: " + ", ".join(pre["entries"]) + " (preloaded into every process)")
    return out


GLOBALS_LINE = 600  # the shims' globals on one line, cut; --json has them all


MAX_LINE = 400  # an error text longer than this is cut on screen; --json has all of it


def _one_line(text: str, limit: int = MAX_LINE) -> str:
    text = text.rstrip("\n")
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters; the whole text is in --json)"


def _is_bad(c: dict) -> bool:
    return c.get("returned") and isinstance(c.get("result"), int) and c["result"] != 0 and c["function"] != "cudaGetErrorString"


def _short_args(c: dict) -> str:
    if c.get("summary_args"):
        return c["summary_args"]
    args = c.get("args") or {}
    parts = []
    struct = ""
    for k, v in args.items():
        if v is None:
            continue
        if isinstance(v, dict):  # a struct read at the return: its fields by name, shown in full
            struct = f"{k}: " + ", ".join(f"{f}={v[f]!r}" for f in STRUCT_FIELDS_SHOWN if f in v)
        elif k in ("pfn", "ppExportTable", "pctx", "prop", "memory") and isinstance(v, int):
            parts.append(f"{k}={v:#x}")
        elif k == "pExportTableId":
            from .codes import export_table_name
            parts.append(f"{export_table_name(v)}")
        elif k == "symbol":
            parts.append(repr(v))
        else:
            parts.append(f"{k}={v}")
    text = ", ".join(parts)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text}; {struct}" if text and struct else text or struct


# The struct fields a calls-table row shows (--json has every decoded one).
STRUCT_FIELDS_SHOWN = ("name", "major", "minor", "totalGlobalMem", "multiProcessorCount", "total", "free")


def _condense_calls(calls: list[dict]) -> list[dict]:
    """Successful runs of the same call fold into one row with a count; failures always show,
    except cudart's entry-point lookups (cuGetProcAddress_v2: ~415 per init, a NOT_FOUND among them
    is a question, not an error): a run of them is one row saying how many were found."""
    out: list[dict] = []
    for c in calls:
        prev = out[-1] if out else None
        if (prev is not None and prev["function"] == c["function"] == "cuGetProcAddress_v2" and prev["pid"] == c["pid"]
                and _lookup_result(c) and (prev.get("lookups") or _lookup_result(prev))):
            lookups = prev.setdefault("lookups", [_lookup_row(prev)])
            lookups.append(_lookup_row(c))
            prev["count"] = len(lookups)
            continue
        if (prev is not None and prev["function"] == c["function"] and prev["pid"] == c["pid"]
                and not _is_bad(c) and not _is_bad(prev) and c["function"] in ("cuDeviceGetAttribute",
                                                                                  "cudaDeviceGetAttribute", "cuGetProcAddress")):
            prev["count"] = prev.get("count", 1) + 1
            continue
        out.append(dict(c))
    for row in out:
        if row.get("lookups"):
            missing = [name for name, found in row["lookups"] if not found]
            named = [name for name in missing if name]  # cudart's first probe asks for ''
            row["summary_args"] = (f"{len(row['lookups'])} entry points asked for, {len(missing)} not found"
                                   + (f" (e.g. {', '.join(list(dict.fromkeys(named))[:3])})" if named else ""))
            row["result_name"] = "CUDA_SUCCESS" if not missing else f"{len(row['lookups']) - len(missing)} found"
            row["result"], row["count"] = 0, 1
    return out


def _lookup_result(c: dict) -> bool:
    """A cuGetProcAddress_v2 answer that is a lookup's: found (0) or not found (500). Any other
    result (not initialized, invalid value...) is a failure and keeps its own row."""
    return bool(c.get("returned")) and c.get("result") in (0, 500)


def _lookup_row(c: dict) -> tuple[str, bool]:
    return (c.get("args") or {}).get("symbol") or "", bool(c.get("returned") and c.get("result") == 0)


def _shown_word(word: str) -> str:
    """A program argument on the report's one command line: as it is, unless it holds a
    control character or a byte that is not UTF-8, then as the shell's $'...' would write it."""
    if all(32 <= ord(c) != 127 and not "\ud800" <= c <= "\udfff" for c in word):
        return word
    out = []
    for c in word:
        if "\ud800" <= c <= "\udfff":
            out.append(f"\\x{ord(c) - 0xdc00:02x}")
        elif c in "\\'":
            out.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, f"\\x{ord(c):02x}"))
        else:
            out.append(c)
    return "$'" + "".join(out) + "'"

