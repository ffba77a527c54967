"""Rules over a timeline: each produces findings naming the cause, the evidence and the fix.

Pure: never imports gdb. Each rule is a function Timeline -> list[Finding],
registered in RULES in the order findings are shown.
"""
from __future__ import annotations

import os
import re

from . import codes, cudafiles, interpose, ldmsg, loader, rules_device, rules_hang, rules_road, rules_use, runtime
from .calls import role_of
from .finding import Finding, base as _base  # noqa: F401  (Finding: rules build it; importers read it here)
from .timeline import Call, Timeline


def _ggml_error_code(tl: Timeline) -> tuple[int | None, str | None]:
    """The cudaError_t behind ggml's "failed to initialize CUDA: <text>" line."""
    for w in tl.errors:
        if "failed to initialize CUDA: " in w.text:
            return codes.ggml_init_error(w.text), w.text.strip()
    return None, None


def _ggml_driver_error(tl: Timeline) -> int | None:
    """The CUresult of ggml's own failed driver call: ggml checks the driver calls it makes itself
    (cuDeviceGet, cuDeviceGetAttribute for VMM, cuMemCreate...) with CU_CHECK, which prints
    "CUDA error: CUDA_ERROR_NAME" and aborts."""
    for w in tl.errors:
        m = re.search(r"CUDA error: (CUDA_ERROR_[A-Z_]+)", w.text)
        if m:
            try:
                return codes.parse_value(m.group(1))
            except codes.UnknownValue:
                return None
    return None


def _runtime_failure(tl: Timeline) -> Call | None:
    """The runtime call that failed the init; a failed first use (a cudaMalloc after init) is a
    wall of its own (core/rules_use.py), never the init's cudaError."""
    for c in tl.calls:
        if c.spec and c.spec.layer == "runtime" and not c.spec.first_use and c.failed:
            return c
    return None


def _error_evidence(tl: Timeline) -> list[str]:
    out = []
    code, text = _ggml_error_code(tl)
    if text:
        who = "ggml" if "ggml" in text else "the program"
        out.append(f"{who} printed: {text!r}" + (f" = cudaError {code} ({codes.cuda_name(code)})" if code is not None else ""))
    rt = _runtime_failure(tl)
    if rt:
        out.append(f"{rt.function}() in {_base(rt.library)} returned {rt.result} ({rt.result_name})")
    return out


def _asked(library: str | None) -> str:
    """The handle a lookup asked, in words: RTLD_DEFAULT and RTLD_NEXT are not libraries."""
    if library == "RTLD_DEFAULT":
        return "the global scope (RTLD_DEFAULT)"
    if library == "RTLD_NEXT":
        return "the libraries after the caller (RTLD_NEXT)"
    return _base(library)


def _exports(library: str | None, symbol: str) -> bool | None:
    """Whether LIBRARY's own symbol tables define SYMBOL (None: not known)."""
    if not library or library in ("RTLD_DEFAULT", "RTLD_NEXT") or not os.path.exists(library):
        return None
    from .dynsym import DynsymError, read_cached

    try:
        return read_cached(library).dlsym_finds(symbol)
    except (DynsymError, OSError):
        return None


def _null_from(l) -> tuple[str, str | None]:
    """(who answered LOOKUP with NULL, in a summary's words; the evidence line that says so). An
    interposer's dlsym hook that says NULL is not the library: name the hook, and whether the
    library it was asked about exports the symbol after all."""
    if not l.hook:
        return f"{_asked(l.handle_library)} does not export {l.symbol}", None
    exports = _exports(l.handle_library, l.symbol)
    though = (f", though {_base(l.handle_library)} exports {l.symbol}" if exports
              else f"; {_base(l.handle_library)} does not export it either" if exports is False else "")
    return (f"{_base(l.hook)}'s dlsym hook answered NULL for {l.symbol}{though}",
            f"dlsym({_asked(l.handle_library)}, \"{l.symbol}\") went to {_base(l.hook)}'s dlsym hook, which returned "
            f"NULL{though}")


HOOK_FIX = ("make {hook}'s dlsym hook hand every lookup it does not answer itself to the real dlsym with the same "
            "handle (HAMi-core: its fallback through RTLD_NEXT / the driver's handle), so that {symbol} reaches {lib}")


def rule_missing_get_proc_address(tl: Timeline) -> list[Finding]:
    """cudart dlsym()s cuGetProcAddress_v2; missing -> ~420 plain lookups, and v1 is never used."""
    out = []
    for pid in {l.pid for l in tl.lookups}:
        asked = [l for l in tl.lookups if l.pid == pid and l.symbol == "cuGetProcAddress_v2" and l.found is False]
        if not asked:
            continue
        lib = asked[0].handle_library
        # cudart's own lookups (an interposer's hook asking the library in turn is not cudart falling back)
        plain = [l for l in tl.lookups if l.pid == pid and l.how == "dlsym" and l.handle_library == lib
                 and l.caller == asked[0].caller]
        missing = [l for l in plain if l.found is False]
        said, hooked = _null_from(asked[0])
        asker = asked[0].caller
        first = hooked or f"dlsym({_asked(lib)}, \"cuGetProcAddress_v2\") = NULL, asked by {_base(asker)}"
        if asker and not asked[0].hook and any(_base(ip["path"]) == _base(asker)
                                               for ip in interpose.interposers(tl, pid)):
            # an interposer in front of the driver (HAMi-core's way) asked on cudart's behalf: cudart got
            # the interposer's own cuGetProcAddress_v2, which has nothing to forward to
            answered = [c for c in tl.calls if c.pid == pid and c.function == "cuGetProcAddress_v2" and c.returned
                        and _base(c.library) == _base(asker)]
            ev = [first]
            if answered:
                failed = [c for c in answered if c.failed]
                shown = next((c for c in failed if c.args.get("symbol")), failed[0] if failed else None)
                ev.append(f"{_base(asker)}'s own cuGetProcAddress_v2 answered cudart {len(answered)} time(s), "
                          f"{len(failed)} with an error" + (f" ({shown.result_name} for "
                                                            f"{shown.args.get('symbol')!r})" if shown else ""))
            out.append(Finding(
                rule="missing-cuGetProcAddress_v2",
                summary=(f"{said}: {_base(asker)}, in front of it, forwards cudart's cuGetProcAddress_v2 queries "
                         "there and finds nothing to forward to"),
                evidence=ev + _error_evidence(tl),
                fix=(f"export cuGetProcAddress_v2 from {_base(lib)} (the interposer forwards to it), or make "
                     f"{_base(asker)} answer each query itself through plain dlsym when the driver has none"),
                pid=pid))
            continue
        names = list(dict.fromkeys(l.symbol for l in missing if l.symbol != "cuGetProcAddress_v2"))[:4]
        ev = [first, f"cudart fell back to {len(plain)} plain dlsym() lookups; {len(missing)} found nothing"
              + (f" (e.g. {', '.join(names)})" if names else "")]
        v1 = [c for c in tl.calls if c.pid == pid and c.function == "cuGetProcAddress"]
        ev.append(f"cuGetProcAddress (v1) was called {len(v1)} times: {_base(asker)} never uses it "
                  "(cudart 12 and 13 ask for cuGetProcAddress_v2 only)")
        out.append(Finding(
            rule="missing-cuGetProcAddress_v2",
            summary=f"{said}, so cudart never asks it for entry points",
            evidence=ev + _error_evidence(tl),
            fix=(HOOK_FIX.format(hook=_base(asked[0].hook), symbol="cuGetProcAddress_v2", lib=_base(lib))
                 if asked[0].hook else
                 "export cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, symbolStatus) from the shim; in a forwarding "
                 "shim pass it through to the real driver (and return your own wrappers for the functions you intercept)"),
            pid=pid))
    return out


def rule_export_table(tl: Timeline) -> list[Finding]:
    """cuGetExportTable(CUDART_INTERFACE) missing or failing -> cudart error 36 or the CUresult."""
    out = []
    for l in tl.lookups:
        if l.symbol == "cuGetExportTable" and l.found is False:
            said, hooked = _null_from(l)
            out.append(Finding(
                rule="missing-cuGetExportTable",
                summary=f"{said}, which cudart needs for its private CUDART_INTERFACE table",
                evidence=[hooked or f"dlsym({_asked(l.handle_library)}, \"cuGetExportTable\") = NULL, asked by {_base(l.caller)}",
                          _consequence(tl, 36, "without it cudart fails with cudaErrorCallRequiresNewerDriver (36) right "
                                           "after cuInit, before any device query")] + _error_evidence(tl),
                explains=36,
                fix=(HOOK_FIX.format(hook=_base(l.hook), symbol="cuGetExportTable", lib=_base(l.handle_library))
                     if l.hook else
                     "export cuGetExportTable and forward it to the real driver unchanged; a fully fake driver would "
                     "have to implement NVIDIA's private tables (as ZLUDA does)"),
                pid=l.pid))
            break
    for c in tl.calls:
        if c.function != "cuGetExportTable" or not c.returned:
            continue
        table = c.args.get("pExportTableId") or "?"
        name = codes.export_table_name(table)
        if name != "CUDART_INTERFACE":
            continue
        if c.failed or not c.args.get("ppExportTable"):
            res = c.result if isinstance(c.result, int) else None
            chain = _forwarded_chain(tl, c)
            culprit = chain[-1]
            for outer, inner in zip(chain, chain[1:]):  # a hop that turned a success into the failure
                if not (inner.failed or not inner.args.get("ppExportTable")):
                    culprit = outer
                    break
            hops = [f"forwarded by {_base(o.library)} to {_base(i.library)}, which returned {i.result} ({i.result_name})"
                    for o, i in zip(chain, chain[1:])]
            where = _base(culprit.library) + (f" (reached through {', '.join(_base(x.library) for x in chain[:-1])})"
                                              if culprit is chain[-1] and len(chain) > 1 else "")
            out.append(Finding(
                rule="export-table-failed",
                summary=f"cuGetExportTable(CUDART_INTERFACE) failed in {where} with {culprit.result_name}; cudart "
                        f"passes that on as cudaError {res}",
                evidence=[f"cuGetExportTable({{{table}}} {name}) in {_base(c.library)} called from {_base(c.caller)} "
                          f"returned {res} ({c.result_name})"] + hops
                + ([f"{_base(culprit.library)} turned the driver's success into the failure"]
                   if culprit is not chain[-1] else []) + _error_evidence(tl),
                fix=("forward cuGetExportTable to the real driver (CUDASHIM_MODE=forward with the bundled shim); "
                     "a fake driver cannot satisfy NVIDIA's cudart (12 or 13) without its private CUDART_INTERFACE table"),
                pid=c.pid, explains=res))
            break
    return out


def _forwarded_chain(tl: Timeline, call: Call) -> list[Call]:
    """CALL and the same call it forwarded, hop by hop (an interposer in front of the driver):
    on the same thread, called from the library CALL landed in, before CALL returned."""
    chain = [call]
    while len(chain) < 8:
        last = chain[-1]
        nxt = next((c for c in tl.calls if c.pid == last.pid and c.tid == last.tid and c.seq > last.seq
                    and c.function == last.function and c.caller and last.library
                    and os.path.realpath(c.caller) == os.path.realpath(last.library)
                    and os.path.realpath(c.library or "") != os.path.realpath(last.library)), None)
        if nxt is None:
            return chain
        chain.append(nxt)
    return chain


def rule_driver_result_passthrough(tl: Timeline) -> list[Finding]:
    """A non-zero CUresult from cuInit / device queries comes back as the same cudaError number."""
    out = []
    code, text = _ggml_error_code(tl)
    rt = _runtime_failure(tl)
    target = code if code is not None else (rt.result if rt and isinstance(rt.result, int) else None)
    if not target:
        return out
    for c in tl.calls:
        if c.spec is None or c.spec.layer != "driver" or c.spec.first_use or not c.failed:
            continue
        if c.function in ("cuGetExportTable", "cuGetProcAddress_v2", "cuGetProcAddress"):
            continue
        if c.result != target:
            continue
        start = tl.process_start(c.pid)
        visible = start.env.get("CUDA_VISIBLE_DEVICES") if start is not None else None
        fixes = {
            100: "make cuInit find a device: check the shim's device discovery and CUDA_VISIBLE_DEVICES "
                 + (f"(the process has CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None
                    else "(unset in the process)"),
            34: "the process loaded a CUDA stub library as libcuda.so.1: put the real driver (or the shim) ahead of "
                "the stubs directory on the library path",
            3: "cuInit must succeed before other calls: return CUDA_SUCCESS from cuInit once the shim is set up",
        }
        # an interposer in front of the driver passed the driver's answer on: the driver is where it came from
        hops = _forwarded_chain(tl, c)
        end = hops[-1] if hops[-1].result == c.result else c
        via = f" (reached through {', '.join(_base(h.library) for h in hops[:hops.index(end)])})" if end is not c else ""
        out.append(Finding(
            rule="driver-error-passed-through",
            summary=f"{c.function}() in {_base(end.library)}{via} returned {c.result_name} ({c.result}); cudart passed "
                    f"it through and ggml reported cudaError {target} ({codes.cuda_name(target)})",
            evidence=[f"{c.function}({c.describe_args()}) in {_base(c.library)} called from {_base(c.caller)} "
                      f"returned {c.result} ({c.result_name})"]
                     + [f"forwarded by {_base(h.caller)} to {_base(h.library)}, which returned {h.result} "
                        f"({h.result_name})" for h in hops[1:hops.index(end) + 1]] + _error_evidence(tl),
            fix=fixes.get(target, f"find why {c.function} returns {c.result_name} in the shim and return CUDA_SUCCESS"),
            pid=c.pid, explains=target))
        break
    return out


def _runtime_major(path: str | None) -> int | None:
    """12 for libcudart.so.12, 13 for libcudart.so.13: the CUDA major a runtime file is for."""
    m = cudafiles.RUNTIME_SONAME.fullmatch(os.path.basename(path or ""))
    return int(m.group(1)) if m else None


def rule_driver_version(tl: Timeline) -> list[Finding]:
    """cudart N asks the driver's version before cuInit and wants at least N000 (12000 for
    cudart 12, 13000 for cudart 13): lower, or a failing call, is cudaErrorInsufficientDriver (35)."""
    out = []
    code, _ = _ggml_error_code(tl)
    rt = _runtime_failure(tl)
    failed35 = code == 35 or (rt is not None and rt.result == 35)
    for c in tl.calls:
        if c.function != "cuDriverGetVersion" or not c.returned:
            continue
        major = _runtime_major(c.caller) or (_runtime_major(rt.library) if rt is not None else None) or 12
        needed = major * 1000
        version = c.args.get("driverVersion")
        if c.failed:
            out.append(Finding(rule="driver-version", summary=f"cuDriverGetVersion failed in {_base(c.library)} ({c.result_name}); "
                               "cudart treats that as an insufficient driver",
                               evidence=[f"cuDriverGetVersion() returned {c.result} ({c.result_name})"] + _error_evidence(tl),
                               fix=f"return CUDA_SUCCESS and a version >= {needed} from cuDriverGetVersion", pid=c.pid,
                               explains=35))
            break
        if isinstance(version, int) and version < needed and failed35:
            out.append(Finding(rule="driver-version",
                               summary=f"the driver reports version {version}, older than the CUDA {major} runtime needs "
                               f"({needed}); cudart stops before cuInit with cudaErrorInsufficientDriver (35)",
                               evidence=[f"cuDriverGetVersion() in {_base(c.library)}, called from {_base(c.caller)}, set "
                                f"*driverVersion = {version} ({version // 1000}.{version % 1000 // 10})"]
                               + _error_evidence(tl),
                               fix=f"report a driver version of at least {needed} ({major}.0) to this {_base(c.caller)}, or "
                               f"use a build of ggml for CUDA {version // 1000} (its libcudart.so.{version // 1000})",
                               pid=c.pid, explains=35))
            break
    return out


def rule_driver_not_found(tl: Timeline) -> list[Finding]:
    out = []
    for l in tl.loads:
        if role_of(l.path) == "driver" and l.ok is False:
            from .rules_absent import driver_load_words

            who, has_runtime = driver_load_words(tl, l)  # a program's own dlopen is not cudart's
            out.append(Finding(
                rule="driver-not-found",
                summary=f"{who} could not load {l.path}" + (": it reports cudaErrorInsufficientDriver (35)" if who == "cudart"
                                                    else " (no CUDA runtime in this process: the program loads the "
                                                         "driver itself)" if not has_runtime else ""),
                evidence=[f"dlopen(\"{l.path}\") = NULL, called from {_base(l.caller)}"
                 + (f": {l.error}" if l.error else "")] + (_error_evidence(tl) if has_runtime else []),
                fix="put the directory holding the shim's libcuda.so.1 on LD_LIBRARY_PATH (or in /etc/ld.so.conf.d and run "
                "ldconfig); the file must be named libcuda.so.1", pid=l.pid, explains=35 if who == "cudart" else None))
    for l in tl.loads:
        where = l.resolved or l.path
        if role_of(where) == "driver" and l.ok and "/stubs/" in where:
            out.append(Finding(rule="stub-driver", summary=f"libcuda.so.1 resolved to a CUDA stub library ({where})",
                               evidence=[f"dlopen(\"{l.path}\") loaded {where}"] + _error_evidence(tl),
                               fix="remove the stubs directory from LD_LIBRARY_PATH; stubs are for linking only", pid=l.pid,
                               explains=34))
    return out


def _loader_finding(tl: Timeline, load, said, ev) -> Finding | None:
    """The dlopen failed for a reason ld.so names in another file than libggml-cuda: a library a
    dependency needs and ld.so found nowhere, or a dependency's own unresolved reference (the
    shim itself). Explained to that file, with where ld.so looked (the in-process recorder's
    la_objsearch records), in the traced process's own terms."""
    if said is None:
        return None
    me = os.path.basename(load.path)
    if said.kind == ldmsg.CANNOT_OPEN and os.path.basename(said.file) != me:
        asked_by, tried = ldmsg.searched(tl.searches, load.pid, said.file)
        needs = " and ".join(_base(a) for a in asked_by) or f"{me} or one of its dependencies"
        if tried:
            ev.append(f"ld.so looked for {said.file} in: " + "; ".join(f"{d} ({where})" for d, where in tried[:8])
                      + (f" and {len(tried) - 8} more" if len(tried) > 8 else "") + ": it is in none of them")
        else:
            ev.append(f"ld.so found {said.file} nowhere it looked (LD_LIBRARY_PATH, ld.so.cache, the default directories)")
        missing_dirs = loader.missing_dirs(*loader.process_env(tl, load.pid))
        if missing_dirs:
            ev.append(f"its LD_LIBRARY_PATH names {', '.join(missing_dirs)}, which does not exist (ld.so skips it)")
        return Finding(
            rule="backend-load-failed", pid=load.pid,
            summary=f"libggml-cuda failed to load: {needs} needs {said.file}, which ld.so found nowhere",
            evidence=ev,
            fix=(f"make {said.file} findable in this process: put the directory that holds it (your shim's, for "
                 f"libcuda.so.1) on its LD_LIBRARY_PATH, or install it where ld.so looks (ld.so.cache, "
                 f"/usr/lib/x86_64-linux-gnu)"))
    if said.kind == ldmsg.UNDEFINED and os.path.basename(said.file) != me:
        ev.append(f"the unresolved reference is {said.file}'s own, not {me}'s: ld.so names the file whose reference "
                  f"it could not bind")
        env, cwd = loader.process_env(tl, load.pid)
        near = tuple(p for p in (said.file,) if os.path.isabs(p))
        definers, looked, complete = loader.defining(said.symbol, env, cwd, near)
        if definers:
            ev.append(f"{said.symbol} is defined by " + ", ".join(definers)
                      + f" (looked in {looked} libraries where ld.so finds them for this process)")
        else:
            ev.append(f"no library on this system defines {said.symbol} (looked in {looked} libraries: the shim's "
                      "directory, LD_LIBRARY_PATH, ld.so.cache, the default directories"
                      + ("" if complete else "; stopped at the time limit") + ")")
        return Finding(
            rule="backend-load-failed", pid=load.pid,
            summary=f"libggml-cuda failed to load: {_base(said.file)} (one of its dependencies) refers to "
                    f"{said.symbol}, which nothing loaded defines",
            evidence=ev,
            fix=(f"{_base(said.file)} uses {said.symbol} but does not link the library that defines it: link it with "
                 + (f"{_base(definers[0])} (-l{_link_name(definers[0])}, a DT_NEEDED ld.so then loads first)"
                    if definers else "that library (-l...)")
                 + f", define {said.symbol} in it, or resolve it at run time with dlsym"))
    if said.kind in (ldmsg.VERSION, ldmsg.WRONG_CLASS, ldmsg.BAD_HEADER, ldmsg.TOO_SHORT):
        what = {ldmsg.VERSION: f"lacks the version node {said.version} that {_base(said.required_by)} requires",
                ldmsg.WRONG_CLASS: "is not a 64-bit library (wrong ELF class)",
                ldmsg.BAD_HEADER: "is not an ELF file (invalid header)",
                ldmsg.TOO_SHORT: "is cut short (file too short)"}[said.kind]
        return Finding(
            rule="backend-load-failed", pid=load.pid,
            summary=f"libggml-cuda failed to load: {said.file} {what}",
            evidence=ev,
            fix=(f"give {_base(said.file)} the version node {said.version} (a version script: "
                 f"'{said.version} {{ global: *; }};')" if said.kind == ldmsg.VERSION else
                 f"replace {said.file} with a complete x86-64 build of it, or take it off the search path"))
    return None


def _link_name(path: str) -> str:
    """The -l name of a library file: libnvidia-ml.so.1 -> nvidia-ml."""
    name = os.path.basename(path)
    name = name[3:] if name.startswith("lib") else name
    return name.split(".so", 1)[0]


def rule_backend_load_failed(tl: Timeline, explain=None) -> list[Finding]:
    """libggml-cuda failed to dlopen: typically 'undefined symbol: cuMemCreate' from a shim that lacks it."""
    out = []
    for l in tl.loads:
        if l.ok is not False or role_of(l.path) != "ggml-cuda":
            continue
        text = l.error
        if not text:
            for w in tl.errors:
                if "failed to load" in w.text and os.path.basename(l.path) in w.text:
                    text = w.text.strip()
        m = re.search(r"undefined symbol: (\S+)", text or "")
        ev = [f"dlopen(\"{l.path}\") = NULL, called from {_base(l.caller)}" + (f": {text}" if text else "")]
        if m and (m.group(1).startswith(("cuda", "__cuda")) or ", version libcudart" in (text or "")):
            found = _runtime_shim_missing(tl, l, m.group(1).rstrip(","), ev)
            if found is not None:
                out.append(found)
                continue
        said = ldmsg.parse(text)
        loader = _loader_finding(tl, l, said, ev)
        if loader is not None:
            out.append(loader)
            continue
        extra = explain(l) if explain else []
        ev += extra
        if m:
            sym = m.group(1).rstrip(",")
            summary = f"libggml-cuda failed to load: the {'driver' if sym.startswith('cu') and not sym.startswith('cuda') else 'library'} " \
                      f"it links against lacks {sym}, which it imports directly"
            fix = (f"export {sym} from the shim's libcuda.so.1 (libggml-cuda imports the VMM API directly: cuMemCreate, "
                   "cuMemMap, cuMemSetAccess, ...); run 'gdb-cudashim audit' to list every missing import")
        else:
            summary = "libggml-cuda failed to load, before any CUDA call"
            fix = "run 'gdb-cudashim audit --consumer " + l.path + "' to see which dependency is missing"
        out.append(Finding(rule="backend-load-failed", summary=summary, evidence=ev, fix=fix, pid=l.pid))
    return out


def _runtime_shims(tl: Timeline, pid: int) -> list[str]:
    """The runtimes in PID that are not NVIDIA's: mapped (the snapshot), else preloaded."""
    snap = tl.mapped(pid)
    found = [f["path"] for f in (snap.files if snap else []) if f["role"] == "runtime"
             and not cudafiles.is_nvidia_runtime(f["path"])]
    if not found:
        found = [path for path, _ in loader.preloaded(tl, pid)
                 if cudafiles.is_runtime_file(path) and not cudafiles.is_nvidia_runtime(path)]
    return list(dict.fromkeys(found))


def _runtime_shim_missing(tl: Timeline, load, symbol: str, ev: list[str]) -> Finding | None:
    """libggml-cuda failed to load because the runtime shim in front of it lacks an import."""
    from .elf import ElfProblem, read_elf_cached

    for shim in _runtime_shims(tl, load.pid):
        try:
            check = runtime.check_imports(read_elf_cached(shim), read_elf_cached(load.path))
        except (ElfProblem, OSError):
            continue
        if not any(m.symbol == symbol for m in check.missing):
            continue
        first = next(m for m in check.missing if m.symbol == symbol)
        lines = [f"{m.symbol}: needed {runtime.WHEN[m.stage]}" + (f"; {m.note}" if m.note else "")
                 for m in check.missing[:8]]
        if len(check.missing) > 8:
            lines.append(f"... and {len(check.missing) - 8} more (gdb-cudashim audit --shim {shim})")
        return Finding(
            rule="runtime-shim-missing-symbols",
            summary=f"libggml-cuda failed to load: the runtime shim {shim} lacks {symbol}"
            + (f" and {len(check.missing) - 1} more" if len(check.missing) > 1 else "")
            + f" (libggml-cuda imports {check.imported} symbols from {check.version or 'libcudart'})",
            evidence=ev + [f"{shim} ({cudafiles.runtime_kind(shim, None)}) answers for {check.version or 'libcudart'}: {check.summary()}"]
            + lines + ([f"the loader resolved every import at dlopen (RTLD_NOW), so the load failed although "
                        f"{symbol} is first called {runtime.WHEN[first.stage]}"]
                       if first.stage != "registration" else []),
            fix=runtime.missing_fix(check), pid=load.pid)
    return None


def rule_runtime_bypassed(tl: Timeline) -> list[Finding]:
    """A runtime shim on LD_LIBRARY_PATH that the loader never used: libggml-cuda's DT_RPATH
    (or an earlier directory) found the bundled libcudart first."""
    out = []
    for snap in tl.libraries:
        start = tl.process_start(snap.pid)
        if start is None:
            continue
        mapped = {os.path.basename(f["path"]): f["path"] for f in snap.files if f["role"] == "runtime"}
        ggml = [f["path"] for f in snap.files if f["role"] == "ggml-cuda"]
        preloaded = loader.preloaded_files(tl, snap.pid)
        for d in loader.library_path(start.env, start.cwd):
            for name, used in mapped.items():
                cand = os.path.join(d, name)
                if not os.path.isfile(cand) or os.path.realpath(cand) == os.path.realpath(used) \
                        or cudafiles.is_nvidia_runtime(cand) or not cudafiles.is_runtime_file(cand):
                    continue  # NVIDIA's own copy, or junk by that name (empty, truncated, 32-bit)
                if not cudafiles.is_nvidia_runtime(used) and os.path.realpath(used) in preloaded:
                    continue  # the user's replacement is preloaded and in use: nothing was bypassed
                why = _search_step(name, ggml, start.env, start.cwd, used)
                out.append(Finding(
                    rule="runtime-shim-bypassed",
                    summary=f"the runtime shim {cand} on LD_LIBRARY_PATH is never loaded: {name} came from {used} "
                    f"({cudafiles.runtime_kind(used, None)})",
                    evidence=[f"LD_LIBRARY_PATH={start.env.get('LD_LIBRARY_PATH')} holds {cand} ({cudafiles.runtime_kind(cand, None)})",
                     f"the process mapped {used} for {name} instead" + (f": {why}" if why else "")]
                    + _error_evidence(tl),
                    fix=(f"preload it: LD_PRELOAD={cand} (under the same soname it satisfies every DT_NEEDED {name} "
                     "and the bundled copy is never loaded), or replace the bundled file"), pid=snap.pid))
                break
    return out


def _search_step(soname: str, ggml: list[str], env: dict, cwd: str | None, used: str) -> str | None:
    """Which step of ld.so's search found USED for libggml-cuda's DT_NEEDED SONAME."""
    from .elf import ElfProblem, read_elf_cached

    for g in ggml:
        try:
            info = read_elf_cached(g)
        except (ElfProblem, OSError):
            continue
        if soname not in info.needed:
            continue
        chosen = loader.first(loader.search(soname, info, env, cwd))
        if chosen is not None and os.path.realpath(chosen["path"]) == os.path.realpath(used):
            if chosen["how"] in (loader.RPATH, loader.RUNPATH):
                paths = info.rpath if chosen["how"] == loader.RPATH else info.runpath
                order = "before" if chosen["how"] == loader.RPATH else "after"
                return (f"{_base(g)}'s {chosen['how']} {paths} is searched {order} LD_LIBRARY_PATH and holds "
                        f"{chosen['path']}")
            return f"{_base(g)}'s DT_NEEDED {soname} was found via {chosen['how']} first"
    return None


def rule_shared_globals(tl: Timeline) -> list[Finding]:
    """Two shims in one process exporting the same global variable: ld.so binds every reference
    to one copy (the first loaded), so one shim's code reads and writes the other's variable."""
    from .dynsym import DynsymError, read_cached

    out = []
    for snap in tl.libraries:
        preloaded = loader.preloaded_files(tl, snap.pid)
        shims = [f["path"] for f in snap.files if f["role"] in ("driver", "runtime", "nvml")
                 and not cudafiles.made_by_nvidia(f["path"], f["role"])]
        exported = {}
        for path in shims:
            try:
                exported[path] = read_cached(path).exported_data()
            except (DynsymError, OSError):
                continue
        paths = sorted(exported, key=lambda p: 0 if os.path.realpath(p) in preloaded else 1)
        for i, first in enumerate(paths):
            for other in paths[i + 1:]:
                shared = sorted(exported[first] & exported[other])
                if not shared:
                    continue
                winner = first if os.path.realpath(first) in preloaded else None
                who = (f"the preloaded {runtime.label(first)}'s copies" if winner else
                       "the copies of whichever was loaded first")
                names = ", ".join(shared[:8]) + (f" (+{len(shared) - 8})" if len(shared) > 8 else "")
                out.append(Finding(
                    rule="shared-globals",
                    summary=f"{runtime.label(first)} and {runtime.label(other)} both export the global variables {names}: "
                    f"ld.so binds both files' references to {who}, so each shim's code changes the other's state",
                    evidence=[f"{runtime.label(p)} exports {', '.join(sorted(exported[p] & set(shared)))} with default "
                     "visibility (its own code reaches them through the GOT)" for p in (first, other)]
                    + [f"e.g. {shared[0]} is one variable for both shims, not one each"],
                    fix="keep a shim's globals out of its dynamic symbol table (static, -fvisibility=hidden, or a version "
                    "script with 'local: *;'), or link it with -Wl,-Bsymbolic; gdb and cuda-state still see them "
                    "through .symtab and DWARF", pid=snap.pid))
    return out


def rule_two_runtimes(tl: Timeline) -> list[Finding]:
    """A runtime shim under its own soname beside NVIDIA's libcudart: ggml's imports the shim lacks
    bind to NVIDIA's, so one process runs two runtimes (unless the shim forwards to it)."""
    out = []
    for snap in tl.libraries:
        runtimes = [f["path"] for f in snap.files if f["role"] == "runtime"]
        nvidia = [p for p in runtimes if cudafiles.is_nvidia_runtime(p)]
        preloaded = loader.preloaded_files(tl, snap.pid)
        # only a preload comes before libggml-cuda's own DT_NEEDED in the search for its imports
        shims = [p for p in runtimes if p not in nvidia and os.path.realpath(p) in preloaded
                 and runtime.forwarded_to(tl, snap.pid, p) is None]
        if not nvidia or not shims:
            continue
        real_nvidia = {os.path.realpath(p) for p in nvidia}  # gdb's l_name may be a symlink to the mapped file
        landed = [c for c in tl.calls if c.pid == snap.pid and c.library and os.path.realpath(c.library) in real_nvidia
                  and role_of(c.caller) == "ggml-cuda"]
        checks = runtime.import_checks(tl, snap.pid, snap.files)
        unbound = [m.symbol for c in checks for m in c.missing]
        if not landed and not unbound:
            continue
        ev = [f"{p} ({cudafiles.runtime_kind(p, None)}) and {nvidia[0]} (NVIDIA runtime) are both mapped" for p in shims]
        if unbound:
            ev.append(f"libggml-cuda's imports the shim lacks bind to NVIDIA's: {', '.join(unbound[:8])}"
                      + (f" (+{len(unbound) - 8})" if len(unbound) > 8 else ""))
        if landed:
            ev.append("calls that landed in NVIDIA's runtime: " + ", ".join(dict.fromkeys(c.function for c in landed)))
        out.append(Finding(
            rule="two-runtimes",
            summary=f"two CUDA runtimes in one process: {_base(shims[0])} (preloaded under its own soname) takes some of "
            f"libggml-cuda's cuda* calls, NVIDIA's {_base(nvidia[0])} the rest; their devices, memory and errors "
            "are not each other's",
            evidence=ev + _error_evidence(tl),
            fix=(f"export every symbol libggml-cuda imports from {_base(shims[0])} (gdb-cudashim audit --shim {shims[0]}), "
             "or give it NVIDIA's soname (libcudart.so.12) so that it replaces the bundled runtime; an interposer "
             "must forward what it does not implement to the runtime behind it"), pid=snap.pid))
    return out


def _preloaded_drivers(tl: Timeline, pid: int) -> list[tuple[str, str | None]]:
    """(path, soname) of files preloaded into PID (LD_PRELOAD, /etc/ld.so.preload) that export cuInit."""
    from .dynsym import DynsymError, read_cached  # the dynamic symbols only: no pyelftools

    out = []
    for path, _ in loader.preloaded(tl, pid):
        try:
            info = read_cached(path)
        except DynsymError:
            continue
        if info.dlsym_finds("cuInit"):
            out.append((path, info.soname))
    return out


def _driver_side(caller: str | None) -> bool:
    return role_of(caller) == "driver" or os.path.basename(caller or "").startswith("libcudadebugger")


def rule_two_drivers(tl: Timeline) -> list[Finding]:
    """The LD_PRELOAD soname trap: two files act as the driver in one process. An interposer
    (core/interpose.py) that forwards every call to the driver is a chain, not a second driver."""
    out = []
    pids = {c.pid for c in tl.calls} | {l.pid for l in tl.loads} | {p.pid for p in tl.processes}
    for pid in sorted(pids):
        libs: dict[str, list[str]] = {}
        chain = {os.path.basename(ip["path"]) for ip in interpose.interposers(tl, pid)}

        def legit(caller):
            return _driver_side(caller) or _base(caller) in chain

        # calls and loads made by a driver-role file are a shim forwarding to its driver, and
        # those of NVIDIA's own debugger backend (cuda-gdb loads it) open the real driver by
        # path: both legitimate, as are an interposer's calls and those it forwards
        for c in tl.calls:
            if (c.pid == pid and c.spec and c.spec.layer == "driver" and c.library and not legit(c.caller)
                    and _base(c.library) not in chain):
                libs.setdefault(os.path.basename(c.library), []).append(c.function)
        for l in tl.loads:
            if l.pid == pid and l.ok and role_of(l.path) == "driver" and not legit(l.caller):
                libs.setdefault(os.path.basename(l.resolved or l.path), []).append(f"dlopen(\"{l.path}\") by {_base(l.caller)}")
        preloaded = _preloaded_drivers(tl, pid)
        for path, soname in preloaded:
            if soname != "libcuda.so.1" and os.path.basename(path) not in chain:
                libs.setdefault(os.path.basename(path), []).append(f"LD_PRELOAD, soname {soname!r}: libggml-cuda's direct cu* imports bind here")
        if len(libs) < 2:
            continue
        ev = [f"{lib}: {', '.join(dict.fromkeys(what))}" for lib, what in libs.items()]
        out.append(Finding(
            rule="two-drivers",
            summary="two different files act as the CUDA driver in one process: libggml-cuda's direct imports bind to one, "
            "cudart's dlopen(\"libcuda.so.1\") loads the other",
            evidence=ev + _error_evidence(tl),
            fix=("give the shim the soname libcuda.so.1 and make it the file cudart's dlopen finds (first on "
             "LD_LIBRARY_PATH), instead of LD_PRELOADing it under another name"),
            pid=pid))
    return out


def rule_lookup_loop(tl: Timeline) -> list[Finding]:
    """An interposer's dlsym hook and the driver's own lookups asking each other."""
    out = []
    for loop in interpose.lookup_loops(tl):
        hook, driver = _base(loop["hook"]), _base(loop["driver"])
        out.append(Finding(
            rule="dlsym-loop",
            summary=f"{hook}'s dlsym hook and {driver} ask each other in a loop: {loop['rounds']} nested rounds on one thread",
            evidence=[f"thread {loop['tid']}: {driver} calls dlsym(\"{loop['symbol']}\"), the hook in {hook} answers by calling "
             f"{driver}'s {loop['symbol']}, which calls dlsym again ({loop['rounds']} times in a row, events "
             f"{loop['first']}..{loop['last']})",
             "each round nests inside the last: unbounded, it ends in a stack overflow or a hang"] + _error_evidence(tl),
            fix=(f"in {hook}'s dlsym hook, answer lookups made from inside the driver (or from inside the hook itself: a "
             "thread-local guard) with the real dlsym (dlvsym(RTLD_NEXT, \"dlsym\", \"GLIBC_2.34\")), never by calling "
             "back into the driver"),
            pid=loop["pid"]))
    return out


SIGNAL_WORDS = {"SIGSEGV": "a segmentation fault", "SIGABRT": "an abort()", "SIGBUS": "a bus error",
                "SIGILL": "an illegal instruction", "SIGFPE": "an arithmetic fault", "SIGKILL": "SIGKILL",
                "SIGTRAP": "a trap (an int3 or a debugger's breakpoint left behind)"}


def rule_killed_by_signal(tl: Timeline) -> list[Finding]:
    """A process that died by a signal (not one we ended): where it was in CUDA init."""
    out = []
    for end in tl.processes:
        if end.what != "exit" or not end.signal or end.detail.startswith("ended by gdb-cudashim"):
            continue
        pid = end.pid
        start = tl.process_start(pid)
        prog = _base(start.detail) if start else "?"
        calls = [c for c in tl.calls if c.pid == pid]
        loads = [l for l in tl.loads if l.pid == pid]
        kill = next((k for k in tl.kills if k.victim == pid), None)
        if kill is not None:
            out.append(_killed_by_another(tl, kill, prog, calls))
            continue
        evidence = [f"pid {pid} ({prog}) ended by {end.signal}"]
        crash = next((c for c in reversed(tl.crashes) if c.pid == pid and c.signal == end.signal), None)
        if crash is not None and crash.backtrace:
            found = _crashed(tl, crash, prog, evidence, calls)
            if found is not None:
                out.append(found)
                continue
            evidence = evidence + _fault_lines(crash)
        if calls:
            last = calls[-1]
            state = "had not returned" if not last.returned else f"returned {last.result_name}"
            evidence.append(f"its last CUDA call: {last.function}() in {_base(last.library)}, which {state}")
            where = "during CUDA init" if not last.returned else "after its last CUDA call"
        elif loads:
            evidence.append(f"it loaded {', '.join(_base(l.path) for l in loads)} but made no traced CUDA call")
            where = "before any CUDA call"
        else:
            where = "before CUDA init: the program never loaded CUDA (no CUDA library was loaded)"
        check = next((c for c in reversed(tl.checks) if c.pid == pid), None)
        if check is not None:  # ggml_cuda_error aborted it: the check says why (core/rules_use.py)
            evidence.append(f"ggml's check of {check.statement.strip()!r} in {check.function} had failed just before: "
                            f"{check.message!r}")
        abort = next((a for a in reversed(tl.aborts) if a.pid == pid), None)
        if abort is not None and check is None:  # GGML_ABORT / GGML_ASSERT: ggml's own words, wherever stderr went
            evidence.append(f"ggml_abort at {abort.file.rsplit('/', 1)[-1]}:{abort.line}: {abort.message!r}")
        out.append(Finding(
            rule="killed-by-signal", pid=pid,
            summary=f"{prog} (pid {pid}) died of {SIGNAL_WORDS.get(end.signal, end.signal)} {where}",
            evidence=evidence,
            fix=(f"ggml aborted because its check of {check.statement.strip()!r} failed ({check.message!r}): the "
                 "finding on that check says why and what to change" if check is not None and rules_use.past_init(tl, check)
                 else
                 _crash_fix(crash) if crash is not None and crash.backtrace else
                 "run it under 'gdb-cudashim gdb --args ...' and 'bt' at the signal to see the faulting frame; "
                 "a crash inside the shim is the shim's bug" if end.signal != "SIGKILL" else
                 "something outside the program killed it (a parent's timeout, the OOM killer: dmesg)")))
    return out


def _from_nvidia_driver(tl: Timeline, c: Call) -> bool:
    """C was answered by NVIDIA's driver: itself, or at the end of a shim's forwarding chain."""
    end = _forwarded_chain(tl, c)[-1]
    return bool(cudafiles.NVIDIA_DRIVER_FILE.search(os.path.basename(os.path.realpath(end.library or ""))))


def _table(c: Call) -> str:
    return codes.export_table_name(c.args.get("pExportTableId") or "?").split(" (", 1)[0]


def _crashed(tl: Timeline, crash, prog: str, evidence: list[str], calls) -> Finding:
    """A fatal signal seen at the faulting instruction: in whose code, and what the shim handed
    that code last (a private table of zeros makes NVIDIA's cudart jump to 0)."""
    if crash.sender is not None:
        return None  # sent (kill, abort): no faulting code to blame; the plain finding says who
    owner, how = _fault(crash)
    lib = owner.library
    what = SIGNAL_WORDS.get(crash.signal, crash.signal)
    evidence = evidence + _fault_lines(crash)
    snap = tl.mapped(crash.pid)  # a shim under a name of its own (libfakert.so) has its role there
    lib_role = next((f["role"] for f in (snap.files if snap else [])
                     if lib and os.path.realpath(f["path"]) == os.path.realpath(lib)), None) or role_of(lib)
    nvidia_runtime = lib_role == "runtime" and cudafiles.is_nvidia_runtime(lib or "")
    tables = [c for c in calls if c.function == "cuGetExportTable" and c.returned and not c.failed
              and c.args.get("ppExportTable") and not _from_nvidia_driver(tl, c)]
    if nvidia_runtime and tables:
        names = list(dict.fromkeys(_table(c) for c in tables))
        evidence += [f"{_base(c.library)} answered cuGetExportTable({_table(c)}) "
                     f"with CUDA_SUCCESS and the table at {c.args['ppExportTable']:#x}" for c in tables[-3:]]
        return Finding(
            rule="crash-in-runtime", summary=f"{prog} (pid {crash.pid}) died of {what} inside NVIDIA's {_base(lib)} ({how}) after "
            f"{_base(tables[-1].library)} handed it the private table(s) {', '.join(names)}", evidence=evidence,
            fix="cudart calls through the slots of the private tables the driver returns: a fake driver must not answer "
            "cuGetExportTable with CUDA_SUCCESS for a table it does not implement (NVIDIA's layout): return "
            "CUDA_ERROR_NOT_FOUND (cudart then fails cleanly) or forward cuGetExportTable to the real driver",
            pid=crash.pid)
    if lib and lib_role in ("driver", "runtime", "nvml") and not cudafiles.made_by_nvidia(lib, lib_role):
        at = f" at {owner.where}" if owner.where else ""
        return Finding(
            rule="crash-in-shim", summary=f"{prog} (pid {crash.pid}) died of {what} inside the shim {_base(lib)}, in "
            f"{owner.function}{at}", evidence=evidence,
            fix=f"the fault is in the shim's own code: {owner.function}{at} ({how})", pid=crash.pid)
    return None  # not in CUDA's code: the plain killed-by-signal finding, with the frames


def _fault(crash):
    """(the frame whose code faulted, how): a jump to 0 faults in no library, so the code that
    made it is the caller's."""
    frames = crash.backtrace
    null_call = frames[0].pc is not None and frames[0].pc < 4096
    owner = next((f for f in frames[1 if null_call and len(frames) > 1 else 0:] if f.library), frames[0])
    if crash.sender is not None:
        caller = next((f for f in frames if f.library and not _base(f.library).startswith(
            ("libc.so", "ld-linux", "libpthread"))), owner)  # who called abort()/raise()
        if crash.sender == crash.pid:
            return caller, f"raised by the process itself, from {caller.describe()}"
        return caller, f"sent by pid {crash.sender}, not a fault"
    if null_call:
        pc = frames[0].pc
        return owner, ("a call through a NULL function pointer" if not pc else
                       f"a call to {pc:#x}, where nothing is mapped (a bad function pointer)")
    if crash.address is not None:
        return owner, (f"a NULL pointer dereference (address {crash.address:#x})" if crash.address < 4096
                       else f"an access to address {crash.address:#x}")
    if crash.code == 0x80 and crash.signal == "SIGSEGV":  # SI_KERNEL: a general protection fault
        return owner, "an access through a wild pointer (a non-canonical address, which the kernel does not report)"
    return owner, crash.signal


def _crash_fix(crash) -> str:
    if crash.sender == crash.pid:
        return (f"the program stopped itself ({_fault(crash)[0].describe()}): what it wrote just before (the CUDA "
                "init errors above) says why")
    if crash.sender is not None:
        return f"pid {crash.sender} sent it {crash.signal}: see why that process did"
    return "the faulting frame is #0 above; a crash inside the shim is the shim's bug"


def _fault_lines(crash) -> list[str]:
    null_call = crash.backtrace[0].pc is not None and crash.backtrace[0].pc < 4096
    verb = "got it" if crash.sender is not None else "faulted"
    return [f"thread {crash.tid} {verb}: {_fault(crash)[1]}"] + [
        f"#{i} {f'{f.pc:#x} (nothing is mapped there)' if i == 0 and null_call else f.describe()}"
        for i, f in enumerate(crash.backtrace[:6])]


def _killed_by_another(tl: Timeline, kill, prog: str, calls) -> Finding:
    """PROG was sent a fatal signal by another traced process: who, after how long, and where
    each of its threads was just before (taken at the kill() syscall)."""
    sender = tl.process_start(kill.pid)
    who = f"pid {kill.pid} ({_base(sender.detail) if sender else '?'}"
    start = tl.process_start(kill.victim)
    if start is not None and start.parent == kill.pid:
        who += ", its parent"
    who += ")"
    age = f" after {kill.victim_age_s:.1f} s" if kill.victim_age_s is not None else ""
    stuck = [t for t in kill.threads if t.get("waiting_in")]
    where = f", while in {stuck[0]['waiting_in']}" if stuck else ""
    evidence = [f"{kill.via}({kill.victim}, {kill.signal}) from {who}, thread {kill.tid}"]
    for t in kill.threads:
        top = " <- ".join(f["function"] for f in t["frames"][:4])
        evidence.append(f"thread {t['tid']} ({t.get('name') or '?'})"
                        + (f" waited in {t['waiting_in']}" if t.get("waiting_in") else "")
                        + (f": {top}" if top else " (the call it was in, as the process recorded it)"))
    pending = [c for c in calls if not c.returned]
    if pending:
        evidence.append(f"CUDA calls that never returned: {', '.join(c.function + '()' for c in pending[:4])}")
    in_init = bool(stuck or pending)
    return Finding(
        rule="killed-by-signal", pid=kill.victim,
        summary=f"{prog} (pid {kill.victim}) was killed with {kill.signal} by {who}{age}"
                + (f"{where}: its CUDA init never finished" if in_init else ""),
        evidence=evidence,
        fix=(("the parent gave up waiting (ollama's discovery timeout is 30 s): make the call it was stuck in "
              "return; the backtraces above show where the shim blocks" if in_init else
              "the parent ended it on purpose; look at the parent's own log for why")))


RULES = (
    rule_backend_load_failed,
    rule_runtime_bypassed,
    rule_two_runtimes,
    rule_driver_not_found,
    rule_missing_get_proc_address,
    rule_export_table,
    rule_driver_version,
    rule_driver_result_passthrough,
    rule_two_drivers,
    rule_lookup_loop,
    rule_killed_by_signal,
    *rules_device.RULES,  # past init: the device a shim reports
    rule_shared_globals,
    rules_hang.rule_deadlock_or_spin,
)


def analyze(tl: Timeline, explain_load=None) -> list[Finding]:
    """Every rule's findings, the cause of what ggml printed first: a finding that explains
    this run's cudaError comes before the ones that would matter only once it is fixed."""
    findings: list[Finding] = []
    for rule in RULES:
        if rule is rule_backend_load_failed:
            findings += rule(tl, explain_load)
        else:
            findings += rule(tl)
    from . import rules_absent, rules_loader  # families of their own (device, hang, road, use: imported above)

    findings += rules_loader.rule_preload_ignored(tl)
    for rule in rules_road.RULES + rules_use.RULES:
        findings += rule(tl)
    findings += rules_absent.extra(tl, findings)
    code = _run_error_code(tl)
    if code is None and any(rules_use.past_init(tl, c) for c in tl.checks):
        # ggml's failed check aborted a process past its init: the wall at that check comes first,
        # the abort (killed-by-signal) follows it
        return sorted(findings, key=lambda f: 0 if f.rule in FIRST else 1 if f.rule in rules_use.RULE_NAMES else 2)
    driver = _ggml_driver_error(tl) if code is None else None
    if driver is not None:
        # ggml's own driver call failed (CU_CHECK: "CUDA error: CUDA_ERROR_..."), and ggml_abort
        # ended the process: the call's cause comes first, the abort (killed-by-signal) follows
        return sorted(findings, key=lambda f: 0 if f.rule in FIRST else 1 if f.explains == driver else 2)
    if code is None:  # nothing printed: a process that died in its init is what the user saw
        # FIRST before all (what the run printed never mattered); then a wall past init that killed the
        # process (a VMM granularity of 0 that ggml divides by) before the crash it caused
        return sorted(findings, key=lambda f: 0 if f.rule == "device-count" else 1 if f.rule in FIRST
                      else 2 if f.rule in rules_use.RULE_NAMES or f.explains == rules_road.CRASHED
                      else 3 if f.rule in ("killed-by-signal", "crash-in-runtime", "crash-in-shim") else 4)
    return sorted(findings, key=lambda f: 0 if f.rule in FIRST else 1 if f.explains == code else 2)


# Causes that come before whatever the run printed: the program never used the files the user
# meant it to (the shim it loaded is not the one they built, or it failed to load at all).
FIRST = ("preload-ignored", "backend-load-failed", "runtime-shim-missing-symbols", "runtime-shim-bypassed",
         "two-runtimes")


def _run_error_code(tl: Timeline) -> int | None:
    """The cudaError this run failed with: the one ggml printed, else the runtime call's."""
    code, _ = _ggml_error_code(tl)
    if code is None:
        rt = _runtime_failure(tl)
        code = rt.result if rt is not None and isinstance(rt.result, int) else None
    return code


def _consequence(tl: Timeline, code: int, claim: str) -> str:
    """CLAIM (what this defect makes cudart return) when this run did fail with CODE; otherwise
    what it will do once the earlier failure is fixed: never a result this run did not have."""
    got = _run_error_code(tl)
    if got == code:
        return claim
    if got is None:
        return "this run did not get that far; once it does, " + claim[0].lower() + claim[1:]
    return (f"this run failed earlier, with cudaError {got} ({codes.cuda_name(got)}); once that is fixed, "
            + claim[0].lower() + claim[1:])


def failure_seen(tl: Timeline, findings: list[Finding]) -> bool:
    return bool(findings or tl.errors)
