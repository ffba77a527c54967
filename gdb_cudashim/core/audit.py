"""Audit without running: does a shim give cudart and libggml-cuda what they need?

Reads ELF files with pyelftools (no nm/readelf), resolves sonames the way ld.so does,
and reports each problem with why it matters and the fix. Pure: never imports gdb.
"""
from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import asdict, dataclass, field

from . import cudafiles, loader, runtime
from .elf import ElfInfo, ElfProblem, read_elf_cached, read_symtab_objects

# Entry points cudart looks up by name at run time (strings in libcudart, not imports).
RUNTIME_LOOKUPS = {
    "cuGetProcAddress_v2": "cudart dlsym()s it first; without it cudart falls back to ~420 plain lookups and never "
                           "calls cuGetProcAddress (v1), then fails",
    "cuGetExportTable": "cudart gets its private CUDART_INTERFACE table through it; without it cudart fails with "
                        "'API call is not supported in the installed CUDA driver' (36)",
    "cuInit": "cudart calls it on the first runtime call; a non-zero result comes back as the cudaError",
    "cuDriverGetVersion": "cudart checks the driver version (< 12000 -> cudaErrorInsufficientDriver 35) before cuInit",
}
@dataclass
class Problem:
    kind: str
    subject: str
    detail: str
    why: str
    fix: str


@dataclass
class Need:
    symbol: str
    needed_by: str
    provider: str
    present: bool
    why: str
    fix: str
    note: str = ""  # e.g. it exports only the pre-CUDA-12 name


@dataclass
class AuditResult:
    files: list[dict] = field(default_factory=list)
    needs: list[Need] = field(default_factory=list)
    resolution: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # worth knowing, nothing a consumer needs
    unreadable: list[str] = field(default_factory=list)
    runtimes: list[dict] = field(default_factory=list)  # each runtime shim against each libggml-cuda
    checked: list[str] = field(default_factory=list)  # the consumers whose needs were checked (ggml-cuda, cudart)

    def errors(self) -> list[str]:
        """One line per file given that cannot be audited (unreadable, or not a CUDA shim): a usage error."""
        return self.unreadable + [f"{p.subject}: {p.detail}" for p in self.problems if p.kind == "not-a-shim"]

    def to_dict(self) -> dict:
        return {"files": self.files, "needs": [asdict(n) for n in self.needs], "resolution": self.resolution,
                "problems": [asdict(p) for p in self.problems], "warnings": [asdict(p) for p in self.warnings],
                "runtimes": self.runtimes, "unreadable": self.unreadable, "errors": self.errors()}


# ------------------------------------------------------------ resolution --
def _interposer_note(path: str, soname: str | None, driver: str | None = None) -> Problem:
    """A preloaded file under its own soname that hooks dlsym and exports cu*: HAMi-core's libvgpu.so shape."""
    return Problem("interposer", path, f"soname {soname!r}, exports dlsym and cu*: an interposer in front of "
                   + (f"the libcuda.so.1 the loader finds ({driver})" if driver else "the libcuda.so.1 the loader finds"),
                   "its cu* exports and dlsym hook take the calls first; each must be forwarded to that driver",
                   "keep its own soname; 'gdb-cudashim run' shows whether its calls reach the driver (the driver chain)")


# ---------------------------------------------------------------- checks --
def _describe(info: ElfInfo) -> dict:
    return {"path": info.path, "soname": info.soname, "exports": len(info.exports),
            "version_definitions": info.version_definitions, "debug_info": info.has_debug_info,
            "build_id": info.build_id, "debuglink": info.debuglink, "stripped": info.stripped}


def _not_a_consumer(c: ElfInfo) -> Problem:
    """A --consumer that is neither libggml-cuda nor libcudart: said so, with whether it uses CUDA at all."""
    cuda = sorted({i.name for i in c.imports if i.library is None and cudafiles.shim_role(ElfInfo(c.path, exports={i.name: set()}))})
    sonames = [n for n in c.needed if n.startswith(("libcuda.so", "libcudart.so", "libnvidia-ml.so"))]
    if cudafiles.shim_role(c):
        what = f"is itself a CUDA library (it stands in for the {cudafiles.shim_role(c)}), not a consumer of one"
    elif cuda or sonames:
        what = (f"uses CUDA ({', '.join((sonames + cuda)[:4])}), but is neither libggml-cuda nor libcudart: "
                "its needs are not checked")
    else:
        what = "uses no CUDA: it imports no cu*/cuda*/nvml* entry point and links no CUDA library"
    return Problem("not-a-consumer", c.path, what, "a shim is audited against what libggml-cuda and cudart "
                   "need from it; this file tells nothing about that",
                   "give libggml-cuda*.so or libcudart.so.12 as --consumer (without --consumer: the pinned real stack)")


def _cudart_lookups(info: ElfInfo) -> list[str]:
    """Driver names cudart looks up at run time: the RUNTIME_LOOKUPS it carries as strings."""
    try:
        with open(info.path, "rb") as f:
            data = f.read()
    except OSError:
        return list(RUNTIME_LOOKUPS)
    return [name for name in RUNTIME_LOOKUPS if b"\0" + name.encode() + b"\0" in data]


def _read_all(paths: list[str], kind: str, res: AuditResult) -> list[ElfInfo]:
    """Read each file; an unusable one is one line in res.unreadable and the rest go on."""
    infos = []
    for path in paths:
        try:
            info = read_elf_cached(path)
        except ElfProblem as exc:
            res.unreadable.append(str(exc))
            continue
        infos.append(info)
        d = _describe(info)
        d["kind"] = kind
        d["what"] = cudafiles.classify(info.path)
        if kind == "shim":
            d["role"] = cudafiles.shim_role(info)
            d["globals"] = _globals(info.path)
        res.files.append(d)
    return infos


def _globals(path: str) -> list[str]:
    """The shim's g_* data objects: what cuda-state reads from it in a live process."""
    try:
        return sorted(n for n in read_symtab_objects(path) if n.startswith("g_"))
    except Exception:  # a damaged symbol table: the audit goes on without the names
        return []


def labels(paths: list[str]) -> dict[str, str]:
    """A short name for each path that tells it from the others: the file name, with as many parent
    directories as it takes where two files share it (fakert-v1/libcudart.so.12, lib/libcudart.so.12)."""
    out = {}
    for path in paths:
        parts = os.path.abspath(path).split(os.sep)
        others = [os.path.abspath(q).split(os.sep) for q in paths if os.path.abspath(q) != os.path.abspath(path)]
        depth = 1
        while depth < len(parts) and any(q[-depth:] == parts[-depth:] for q in others):
            depth += 1
        out[path] = os.sep.join(parts[-depth:])
    return out


def audit(shims: list[str], consumers: list[str], env: dict, cwd: str | None = None) -> AuditResult:
    """SHIMS against what CONSUMERS need from them, and where ld.so finds each CUDA soname for them,
    with the environment ENV and working directory CWD (a process's own: --env-from)."""
    res = AuditResult()
    shim_infos = _read_all(shims, "shim", res)
    for info in shim_infos:
        if cudafiles.shim_role(info) is None:
            res.problems.append(Problem(
                "not-a-shim", info.path, "not a CUDA shim: exports none of the driver (cu*), runtime (cuda*) or NVML "
                "(nvml*) entry points", "it cannot stand in for libcuda.so.1, libcudart.so.12 or libnvidia-ml.so.1, "
                "so there is nothing to audit in it",
                "give --shim the shim's own file (what you built to stand in for libcuda.so.1), and "
                "libggml-cuda or libcudart as --consumer"))
            continue
        if info.sections_missing:
            res.warnings.append(Problem(
                "no-section-headers", info.path, "no readable section headers (stripped with sstrip, or damaged): "
                "read the way ld.so reads it, through PT_DYNAMIC", "its symbol versions, symbol table and DWARF "
                "cannot be read: the version checks are skipped, and gdb shows no names or globals in it",
                "keep the section headers (strip --strip-debug at most)"))
            continue
        if not info.has_debug_info and cudafiles.classify(info.path) not in cudafiles.NOT_SHIM_KINDS:
            # NVIDIA's own files (its runtime given as --shim, its driver) are no shim to rebuild with -g
            res.warnings.append(Problem("no-debug-info", info.path, "no DWARF (.debug_info)" + (
                f"; .gnu_debuglink -> {info.debuglink}" if info.debuglink else ""),
                "cuda-state can only show globals as raw integers, and you cannot step through it",
                "build the shim with -g (the bundled one uses -g3 -O0) and do not strip it"))
    consumer_infos = _read_all(consumers, "consumer", res)
    names = labels([f["path"] for f in res.files])
    for f in res.files:
        f["label"] = names[f["path"]]
    cache = loader.ld_cache()
    drivers = [s for s in shim_infos if cudafiles.shim_role(s) == "driver"]
    runtimes = [s for s in shim_infos if cudafiles.shim_role(s) == "runtime"]
    replaced = _replaced(consumer_infos, runtimes, env, cwd, cache)
    for f in res.files:
        if f["kind"] == "consumer" and f["path"] in replaced:
            f["replaced_by"] = replaced[f["path"]]
    consumer_infos = [c for c in consumer_infos if c.path not in replaced]  # never loaded: nothing to check

    for s in drivers:
        if s.soname != "libcuda.so.1" and "dlsym" in s.exports:
            res.warnings.append(_interposer_note(s.path, s.soname))
        elif s.soname != "libcuda.so.1":
            res.problems.append(Problem(
                "wrong-soname", s.path, f"soname is {s.soname!r}, not 'libcuda.so.1'",
                "cudart dlopen()s \"libcuda.so.1\" and dlsym()s only that handle: a preloaded file under another "
                "soname is bypassed by cudart, while libggml-cuda's direct cu* imports bind to it (two drivers in one "
                "process)",
                "link the shim with -Wl,-soname,libcuda.so.1, name the file libcuda.so.1 and put its directory first on "
                "LD_LIBRARY_PATH instead of LD_PRELOAD"))

    for c in consumer_infos:
        kind = cudafiles.consumer_kind(c)
        name = os.path.basename(c.path)
        if kind is None:
            res.warnings.append(_not_a_consumer(c))
        else:
            res.checked.append(c.path)
        if kind == "cudart":
            for sym in _cudart_lookups(c):
                for s in drivers:
                    present = s.exports_symbol(sym)
                    res.needs.append(Need(sym, f"{name} (run-time lookup)", names[s.path], present,
                                          RUNTIME_LOOKUPS[sym],
                                          "" if present else f"export {sym} from the shim (forward it to the real driver)"))
        elif kind == "ggml-cuda":
            direct = [i for i in c.imports if i.library is None and i.name.startswith("cu")
                      and not i.name.startswith("cuda") and not i.name.startswith("cublas") and not i.weak]
            for imp in direct:
                for s in drivers:
                    present = s.exports_symbol(imp.name)
                    res.needs.append(Need(imp.name, f"{name} (direct import)", names[s.path], present,
                                          "libggml-cuda links libcuda.so.1 directly: dlopen(libggml-cuda) fails with "
                                          f"'undefined symbol: {imp.name}' before any CUDA call",
                                          "" if present else f"export {imp.name} from the shim's libcuda.so.1"))

    for n in res.needs:
        if not n.present:
            res.problems.append(Problem("missing-symbol", n.provider, f"{n.symbol} needed by {n.needed_by}", n.why, n.fix))

    # resolution of the CUDA sonames, for each consumer (cudart's own dlopen of the driver included)
    for c in consumer_infos:
        wanted = [n for n in c.needed if n in cudafiles.ROLE_SONAMES.values() or cudafiles.is_runtime_soname(n)]
        if cudafiles.consumer_kind(c) == "cudart":
            wanted.append("libcuda.so.1")  # dlopen()ed at run time, not DT_NEEDED
        for soname in wanted:
            cands = loader.search(soname, c, env, cwd, cache)
            chosen = next((x for x in cands if x["satisfies"]), None)
            others = [x for x in cands if x["satisfies"] and x is not chosen]
            res.resolution.append({"consumer": c.path, "soname": soname, "chosen": chosen["path"] if chosen else None,
                                   "how": chosen["how"] if chosen else None, "candidates": cands})
            if cudafiles.is_runtime_soname(soname) and any(
                    os.path.realpath(x["path"]) == os.path.realpath(r.path) for r in runtimes for x in cands
                    if x["exists"]):
                others = []  # a runtime shim among them: its own findings below say which one wins and why
            for x in cands:
                preloaded = loader.is_preload(x["how"])
                if preloaded and x["exists"] and not x["satisfies"] and soname == "libcuda.so.1" \
                        and x.get("soname") and "cuInit" in read_elf_cached(x["path"]).exports:
                    if "dlsym" in read_elf_cached(x["path"]).exports:  # an interposer: a design, not the trap
                        res.warnings.append(_interposer_note(x["path"], x["soname"], chosen["path"] if chosen else None))
                        continue
                    res.problems.append(Problem(
                        "preload-soname", x["path"], f"preloaded with soname {x['soname']!r}; "
                        f"{os.path.basename(c.path)} still resolves libcuda.so.1 to {chosen['path'] if chosen else 'nothing'}",
                        "one process, two drivers: cudart talks to the file it dlopen()s, not to the preloaded shim",
                        "give the shim the soname libcuda.so.1 and put it first on LD_LIBRARY_PATH"))
            if chosen is None and cudafiles.is_runtime_soname(soname):
                res.problems.append(Problem("not-found", soname, f"{os.path.basename(c.path)} finds no {soname}",
                                            f"dlopen({os.path.basename(c.path)}) fails: '{soname}: cannot open shared "
                                            "object file: No such file or directory'",
                                            f"LD_PRELOAD the runtime shim (soname {soname}), or put the directory "
                                            f"with a {soname} on LD_LIBRARY_PATH"))
            elif chosen is None:
                res.problems.append(Problem("not-found", soname, f"{os.path.basename(c.path)} finds no {soname}",
                                            "cudart reports cudaErrorInsufficientDriver (35); libggml-cuda fails to load",
                                            f"put the directory with the shim's {soname} on LD_LIBRARY_PATH"))
            elif cudafiles.is_stub(chosen["path"]):
                res.problems.append(Problem("stub-first", chosen["path"], f"{soname} resolves to a CUDA stub library "
                                            f"(via {chosen['how']})",
                                            "stub libraries are for linking; cuInit returns CUDA_ERROR_STUB_LIBRARY (34)",
                                            "remove the stubs directory from LD_LIBRARY_PATH"))
            if chosen is not None and others:
                res.problems.append(Problem("several-candidates", soname, f"also found: {', '.join(o['path'] for o in others[:3])}",
                                            f"only {chosen['path']} is used; the others are shadowed",
                                            "make sure the one chosen is the one you built"))
    for c in consumer_infos:
        if cudafiles.consumer_kind(c) == "ggml-cuda":
            for s in runtimes:
                _audit_runtime(res, s, c, env, cwd, cache, names)
    # de-duplicate identical problems (several consumers can raise the same one)
    unique = {}
    for p in res.problems:
        unique.setdefault((p.kind, p.subject, p.detail), p)
    res.problems = list(unique.values())
    notes = {}  # an interposer is named once, with the driver behind it when a resolution saw it
    for w in res.warnings:
        key = (w.kind, w.subject) if w.kind == "interposer" else id(w)
        if key not in notes or len(w.detail) > len(notes[key].detail):
            notes[key] = w
    res.warnings = list(notes.values())
    return res


def _file_what(path: str) -> str:
    try:
        return cudafiles.classify(path)
    except ElfProblem:
        return "unreadable"


def _import_why(m: runtime.Missing, replaces: bool, consumer: str, soname: str, versym: bool = True) -> str:
    """When a missing import bites, and how."""
    ref = f"'undefined symbol: {m.symbol}" + (f", version {m.version}'" if m.version else "'")
    if replaces and m.version and not versym:
        why = (f"ld.so aborts the process binding it for {consumer} (assertion in check_match): the file has no "
               ".gnu.version section")
    elif not replaces:
        why = (f"binds to the {soname} {consumer} loads for its DT_NEEDED (NVIDIA's), not to this shim: two "
               f"runtimes in one process; ggml needs it {runtime.WHEN[m.stage]}")
    elif m.stage == "registration":
        why = f"dlopen({consumer}) fails with {ref}: {runtime.WHEN['registration']}"
    else:
        why = (f"dlopen({consumer}) fails with {ref}: ggml's backend loader uses RTLD_NOW (a program that binds it "
               f"lazily instead exits with 'symbol lookup error' when ggml first needs it: {runtime.WHEN[m.stage]})")
    return why + (f"; {m.note}" if m.note else "")


def _replaced(consumers: list[ElfInfo], runtimes: list[ElfInfo], env: dict, cwd: str | None, cache) -> dict[str, str]:
    """Consumers (NVIDIA's libcudart.so.12) whose soname a preloaded runtime shim takes: ld.so never
    loads them, so their needs and resolution do not matter. path -> the shim's path."""
    out = {}
    for c in consumers:
        if cudafiles.consumer_kind(c) != "cudart" or not cudafiles.is_runtime_soname(c.soname):
            continue
        first = next((x for x in loader.search(c.soname, None, env, cwd, cache) if loader.is_preload(x["how"]) and x["satisfies"]), None)
        if first is None or loader.same_file(first["path"], c.path):
            continue
        shim = next((r.path for r in runtimes if loader.same_file(r.path, first["path"])), None)
        if shim is not None:
            out[c.path] = shim
    return out


def _audit_runtime(res: AuditResult, s: ElfInfo, c: ElfInfo, env: dict, cwd: str | None, cache, names: dict) -> None:
    """A runtime shim S against libggml-cuda C: S's exports against C's imports (when each missing
    one bites), its version node, and how the loader chooses between S and the libcudart bundled
    beside C under ENV (LD_PRELOAD, /etc/ld.so.preload, DT_RPATH $ORIGIN, LD_LIBRARY_PATH)."""
    cname, sname = os.path.basename(c.path), names.get(s.path, os.path.basename(s.path))
    wanted = runtime.runtime_imports(c)
    sonames = [n for n in c.needed if cudafiles.is_runtime_soname(n)] or \
        sorted({i.library for i in wanted if cudafiles.is_runtime_soname(i.library)})
    if not wanted and not sonames:
        return  # C does not link a libcudart (a static cudart): nothing S could stand in for
    soname = sonames[0] if sonames else None
    chk = runtime.check_imports(s, c)
    replaces = bool(soname) and s.soname == soname  # the loader takes S for C's DT_NEEDED libcudart.so.N
    missing = {m.symbol: m for m in chk.missing}
    fix = runtime.missing_fix(chk, audit_hint=False)  # this is the audit
    added = []
    for imp in wanted:
        m = missing.get(imp.name)
        needed_by = f"{cname} (import @{imp.version})" if imp.version else f"{cname} (import)"
        if m is None:
            added.append(Need(imp.name, needed_by, sname, True, "", ""))
        else:
            added.append(Need(imp.name, needed_by, sname, False, _import_why(m, replaces, cname, soname or "libcudart", s.has_versym),
                              fix, m.note))
    res.needs += added

    # the version node the imports ask for
    node, folded = chk.version, set()
    if node and node not in s.version_definitions and not s.sections_missing:  # unreadable then: no verdict
        count = chk.imported
        script = f"link the runtime shim with a version script: {node} {{ global: *; }};"
        if not s.has_versym:
            folded = {m.symbol for m in chk.missing if m.symbol in s.exports}
            res.problems.append(Problem(
                "missing-version-node", s.path, f"no .gnu.version section at all: defines no '{node}' symbol version",
                f"{cname} imports {count} symbols as name@{node}: " + (
                    "binding them to a file named that with no .gnu.version makes ld.so abort the whole process "
                    "(assertion in check_match)" if replaces else
                    "none of them bind to it; they land in the libcudart it loads for its DT_NEEDED"),
                script + " (any version script, even an anonymous one, gives the file a .gnu.version section)"))
        elif not s.version_definitions:
            if chk.unversioned:
                res.warnings.append(Problem(
                    "unversioned-runtime", s.path, f"defines no symbol versions: its unversioned definitions stand "
                    f"for {cname}'s imports @{node}",
                    f"this works: glibc's ld.so accepts an unversioned definition for a versioned reference when the "
                    f"file has a .gnu.version section, as this one has (a version script or any versioned import gives "
                    f"it one). Caveat: a build without one (no version script, no versioned import) makes ld.so "
                    f"abort in check_match",
                    f"give it the version node anyway: {node} {{ global: cuda*; __cuda*; local: *; }};"))
        else:
            folded = {m.symbol for m in chk.missing if m.symbol in s.exports}
            first = "cudaMalloc" if "cudaMalloc" in folded else next(iter(sorted(folded)), "cudaMalloc")
            res.problems.append(Problem(
                "missing-version-node", s.path, f"defines the symbol versions {', '.join(s.version_definitions)} "
                f"but not '{node}'",
                f"{cname} imports {count} symbols as name@{node}, and a definition under another version never "
                "satisfies one: " + (f"dlopen({cname}) fails with 'undefined symbol: {first}, version {node}' (or "
                                     "whichever of them it binds first)" if replaces else
                                     f"they all land in the {soname} {cname} loads for its DT_NEEDED"),
                script))
    for n in added:
        if not n.present and n.symbol not in folded:
            res.problems.append(Problem("missing-symbol", n.provider, f"{n.symbol} needed by {n.needed_by}", n.why,
                                        n.fix))

    # which libcudart.so.N the loader takes for C
    entry = {"shim": s.path, "label": sname, "what": cudafiles.classify(s.path), "soname": s.soname, "consumer": c.path, "needs": soname,
             "imports": chk.to_dict(), "summary": chk.summary(), "globals": _globals(s.path)}
    res.runtimes.append(entry)
    if soname is None:
        entry.update(loaded=None, interplay="")
        return
    cands = loader.search(soname, c, env, cwd, cache)
    chosen = next((x for x in cands if x["satisfies"]), None)
    bundled = next((x for x in cands if x["satisfies"] and not loader.is_preload(x["how"])), None)
    pre = next((x for x in cands if loader.is_preload(x["how"]) and x["exists"] and loader.same_file(x["path"], s.path)), None)
    listed = next((x for x in cands if not loader.is_preload(x["how"]) and x["exists"] and loader.same_file(x["path"], s.path)), None)
    winner = f"{chosen['path']} ({_file_what(chosen['path'])}, via {loader.step_text(chosen, c)})" if chosen else "nothing"
    entry.update(chosen=chosen["path"] if chosen else None, how=chosen["how"] if chosen else None)
    preload_how = loader.PRELOAD_FILE if pre and pre["how"] != loader.PRELOAD else loader.PRELOAD
    if pre and replaces and chosen is not None and loader.same_file(chosen["path"], s.path):
        entry.update(loaded=pre["how"], interplay=runtime.soname_interplay(
            s.path, s.soname, preload_how, bundled["path"] if bundled else None))
    elif pre and replaces:  # another file preloaded under the same soname, earlier in the list
        entry.update(loaded=None, interplay=f"{sname} is preloaded, but {winner} comes first")
        res.problems.append(Problem(
            "runtime-bypassed", s.path, f"preloaded, but {cname} resolves {soname} to {winner}",
            "the first preload with a soname wins; this one is never used for it",
            f"preload only one {soname}"))
    elif pre:
        interplay = runtime.soname_interplay(s.path, s.soname, preload_how, bundled["path"] if bundled else None)
        entry.update(loaded=pre["how"], interplay=interplay)
        lands = [m.symbol for m in chk.missing]
        if lands and chosen is not None:
            res.problems.append(Problem(
                "runtime-split", s.path,
                f"preloaded under soname {s.soname!r}, not {soname}: {len(lands)} of {cname}'s {chk.imported} "
                f"imports{' @' + node if node else ''} it lacks bind to {winner}: {', '.join(lands[:8])}"
                + (f" (+{len(lands) - 8})" if len(lands) > 8 else ""),
                f"two runtimes in one process: devices, streams, allocations and a latched error set through one are "
                f"unknown to the other. {interplay}",
                f"{fix}; or build it under the soname {soname}, so that preloaded it replaces the bundled one"))
        elif chosen is not None:
            res.warnings.append(Problem(
                "runtime-beside-bundled", s.path, f"preloaded under soname {s.soname!r}: all {chk.imported} of "
                f"{cname}'s imports bind to it, but {winner} is still loaded for the DT_NEEDED {soname}",
                f"{interplay}; that copy is mapped (its constructors run) but none of ggml's calls reach it",
                f"build it under the soname {soname} so that it replaces the bundled one"))
    elif listed and chosen is not None and loader.same_file(chosen["path"], s.path):
        entry.update(loaded=listed["how"], interplay=f"{sname} is the {soname} {cname} finds first, via "
                                                     f"{loader.step_text(listed, c)}")
    elif listed and replaces:
        entry.update(loaded=None, interplay=f"{sname} is on the search path, but {winner} comes first")
        rpath = chosen is not None and chosen["how"] == loader.RPATH
        res.problems.append(Problem(
            "runtime-bypassed", s.path,
            f"on {listed['how']}, but {cname} resolves {soname} to {winner}",
            ("DT_RPATH is searched before LD_LIBRARY_PATH (only DT_RUNPATH comes after it): "
             if rpath else "an earlier step of ld.so's search finds another file: ")
            + f"the shim is silently never loaded and {chosen['path']} ({_file_what(chosen['path'])}) runs instead",
            f"LD_PRELOAD={s.path} (under the same soname it replaces the bundled one for every consumer), or "
            f"replace {chosen['path']} with it"))
    else:
        if replaces:
            detail = f"not on {cname}'s search path for {soname} with this environment; it loads {winner}"
        else:
            detail = (f"its soname {s.soname!r} is not the {soname} {cname} needs, and it is not preloaded: "
                      f"nothing loads it; {cname} loads {winner}")
        entry.update(loaded=None, interplay=detail)
        res.warnings.append(Problem(
            "runtime-not-loaded", s.path, detail, "with this environment the shim is not used at all",
            f"LD_PRELOAD={s.path}" + (" (same soname: it replaces the bundled one for every consumer)" if replaces
                                      else " (each cuda* import it exports then binds to it)")))


def explain_failed_load(path: str, env, cwd: str | None = None) -> list[str]:
    """Why dlopen(path) failed, from the files: direct cu* imports the resolved driver lacks."""
    info = read_elf_cached(path)
    env = dict(env)
    cands = loader.search("libcuda.so.1", info, env, cwd)
    chosen = next((x for x in cands if x["satisfies"]), None)
    if chosen is None:
        return ["no libcuda.so.1 is found on the search path"]
    driver = read_elf_cached(chosen["path"])
    missing = [i.name for i in info.imports if i.library is None and i.name.startswith("cu")
               and not i.name.startswith(("cuda", "cublas")) and not driver.exports_symbol(i.name)]
    if not missing:
        return []
    return [f"{chosen['path']} (via {chosen['how']}) lacks {len(missing)} of libggml-cuda's direct imports: "
            + ", ".join(missing)]


# ------------------------------------------------------------------- CLI --
def _env_from(pid: int) -> dict:
    """PID's environment, or ValueError with one line: a process id is above 0, and a kernel
    thread or a zombie exists but has no environment (the kernel answers ESRCH)."""
    from .procfs import ProcError, read_environ, state

    if pid <= 0:
        raise ValueError(f"--env-from needs the id of a running process (above 0), not {pid}")
    try:
        return read_environ(pid)
    except ProcError as exc:
        raise ValueError(str(exc)) from None
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            what = ("a zombie (it exited; its parent has not reaped it)" if state(pid) == "Z"
                    else "a kernel thread or a process that is exiting")
            raise ValueError(f"process {pid} has no environment to read: it is {what}") from None
        raise ValueError(f"cannot read the environment of process {pid}: {exc.strerror}") from None


def _cwd_of(pid: int | None) -> str | None:
    """The working directory of PID (None: this one); None where it cannot be read or is gone."""
    try:
        return os.readlink(f"/proc/{pid}/cwd") if pid is not None else os.getcwd()
    except OSError:
        return None


MAX_ROWS = 30  # missing symbols shown in the Needs table


def _cut(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def render(result: AuditResult) -> list[str]:
    from tabulate import tabulate

    out = []
    if result.files:
        rows = [[f.get("label") or os.path.basename(f["path"]), f["kind"], f.get("role") or "", f.get("what") or "",
                 f["soname"] or "", f["exports"], "yes" if f["debug_info"] else "no", (f["build_id"] or "")[:12],
                 "yes" if f["stripped"] else "no"]
                for f in result.files]
        out += tabulate(rows, headers=["file", "kind", "role", "what it is", "soname", "exports", "DWARF", "build-id",
                                       "stripped"], tablefmt="simple").splitlines()
    for line in result.unreadable:
        out.append(f"skipped: {line}")
    missing = [n for n in result.needs if not n.present]
    if result.needs:
        out.append("")
        out.append(f"Needs: {len(result.needs)} checked, {len(missing)} missing")
        rows = [[n.symbol, n.needed_by, n.provider, "present" if n.present else "MISSING", "" if n.present else _cut(n.why)]
                for n in missing[:MAX_ROWS]]
        if rows:
            out += tabulate(rows, headers=["symbol", "needed by", "shim", "status", "why it matters"],
                            tablefmt="simple").splitlines()
        if len(missing) > MAX_ROWS:
            out.append(f"({len(missing) - MAX_ROWS} more missing; --json lists every one)")
    if result.runtimes:
        out.append("")
        out.append("Runtime shims:")
        for r in result.runtimes:
            out.append(f"- {r['label']} ({r['what']}): {r['summary']}")
            if r.get("interplay"):
                out.append(f"  {r['interplay']}")
            if r.get("globals"):
                out.append(f"  g_* globals (gdb's cuda-state shows their values in a live process): "
                           f"{', '.join(r['globals'][:8])}"
                           + (f" (+{len(r['globals']) - 8})" if len(r["globals"]) > 8 else ""))
    if result.resolution:
        out.append("")
        rows = [[os.path.basename(r["consumer"]), r["soname"], r["chosen"] or "NOT FOUND", r["how"] or ""]
                for r in result.resolution]
        out += tabulate(rows, headers=["consumer", "needs", "resolves to", "via"], tablefmt="simple").splitlines()
    out.append("")
    if result.problems:
        out.append(f"{len(result.problems)} problem(s):")
        for i, p in enumerate(result.problems, 1):
            out.append(f"{i}. [{p.kind}] {p.subject}: {p.detail}")
            out.append(f"   why: {p.why}")
            out.append(f"   fix: {p.fix}")
    if result.warnings:
        out.append(f"{len(result.warnings)} warning(s): worth knowing, but nothing a consumer lacks:")
        for p in result.warnings:
            out.append(f"- [{p.kind}] {p.subject}: {p.detail}")
            out.append(f"   why: {p.why}")
            out.append(f"   fix: {p.fix}")
    errors = result.errors()
    if errors:
        out.append(f"incomplete: {len(errors)} of the files given could not be audited (above)")
    elif not result.problems:
        out.append("nothing missing")
    return out


def usable(result: AuditResult) -> bool:
    """At least one shim and one consumer could be audited: worth printing beside the errors."""
    return any(f["kind"] == "shim" and f.get("role") for f in result.files) and \
        any(f["kind"] == "consumer" for f in result.files)


def main(args) -> int:
    consumers = list(args.consumer)
    if not consumers:
        from ..stack import installed

        stack = installed()
        if stack is None:
            print("gdb-cudashim audit: no --consumer and the pinned stack is not fetched (make stack)", file=sys.stderr)
            return 2
        consumers = [str(p) for p in stack.consumers()]
    if not args.shim:
        print("gdb-cudashim audit: give at least one --shim PATH", file=sys.stderr)
        return 2
    try:
        env = _env_from(args.env_from) if args.env_from is not None else dict(os.environ)
    except ValueError as exc:
        print(f"gdb-cudashim audit: {exc}", file=sys.stderr)
        return 2
    cwd = _cwd_of(args.env_from)  # relative LD_LIBRARY_PATH/LD_PRELOAD entries are the process's
    result = audit(args.shim, consumers, env, cwd)
    if args.consumer and not result.checked and not result.unreadable:
        # nothing given is a consumer: the pinned real stack's are checked as well, never a clean bill for nothing
        from ..stack import installed

        stack = installed()
        if stack is not None:
            result = audit(args.shim, consumers + [str(p) for p in stack.consumers() if str(p) not in consumers], env, cwd)
        else:
            print("gdb-cudashim audit: none of the --consumer files is libggml-cuda or libcudart, and the pinned "
                  "stack is not fetched (make stack): nothing was checked", file=sys.stderr)
            return 2
    errors = result.errors()
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    elif not errors or usable(result):
        print("\n".join(render(result)))
    for line in errors:
        print(f"gdb-cudashim audit: {line}", file=sys.stderr)
    if errors or not usable(result):
        return 2
    return 1 if result.problems else 0
