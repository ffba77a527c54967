"""Audit without running: does a shim give cudart and libggml-cuda what they need?

Reads ELF files with pyelftools (no nm/readelf), resolves sonames the way ld.so does,
and reports each problem with why it matters and the fix. Pure: never imports gdb.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from . import interpose
from .elf import ElfInfo, ElfProblem, read_elf_cached

# Entry points cudart looks up by name at run time (strings in libcudart, not imports).
RUNTIME_LOOKUPS = {
    "cuGetProcAddress_v2": "cudart dlsym()s it first; without it cudart falls back to ~420 plain lookups and never "
                           "calls cuGetProcAddress (v1), then fails",
    "cuGetExportTable": "cudart gets its private CUDART_INTERFACE table through it; without it cudart fails with "
                        "'API call is not supported in the installed CUDA driver' (36)",
    "cuInit": "cudart calls it on the first runtime call; a non-zero result comes back as the cudaError",
    "cuDriverGetVersion": "cudart checks the driver version (< 12000 -> cudaErrorInsufficientDriver 35) before cuInit",
}
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
ROLE_SONAMES = {"driver": "libcuda.so.1", "runtime": "libcudart.so.12", "nvml": "libnvidia-ml.so.1"}


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


@dataclass
class AuditResult:
    files: list[dict] = field(default_factory=list)
    needs: list[Need] = field(default_factory=list)
    resolution: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # worth knowing, nothing a consumer needs
    unreadable: list[str] = field(default_factory=list)

    def errors(self) -> list[str]:
        """One line per file given that cannot be audited (unreadable, or not a CUDA shim): a usage error."""
        return self.unreadable + [f"{p.subject}: {p.detail}" for p in self.problems if p.kind == "not-a-shim"]

    def to_dict(self) -> dict:
        return {"files": self.files, "needs": [asdict(n) for n in self.needs], "resolution": self.resolution,
                "problems": [asdict(p) for p in self.problems], "warnings": [asdict(p) for p in self.warnings],
                "unreadable": self.unreadable, "errors": self.errors()}


# ------------------------------------------------------------ resolution --
def _ld_cache() -> dict[str, list[str]]:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        try:
            out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
    cache: dict[str, list[str]] = {}
    for line in out.splitlines()[1:]:
        line = line.strip()
        if "=>" not in line or "x86-64" not in line:
            continue
        name = line.split(" ", 1)[0]
        cache.setdefault(name, []).append(line.rsplit("=>", 1)[1].strip())
    return cache


def _expand(path: str, origin: str) -> str:
    return path.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)


def _interposer_note(path: str, soname: str | None, driver: str | None = None) -> Problem:
    """A preloaded file under its own soname that hooks dlsym and exports cu*: HAMi-core's libvgpu.so shape."""
    return Problem("interposer", path, f"soname {soname!r}, exports dlsym and cu*: an interposer in front of "
                   + (f"the libcuda.so.1 the loader finds ({driver})" if driver else "the libcuda.so.1 the loader finds"),
                   "its cu* exports and dlsym hook take the calls first; each must be forwarded to that driver",
                   "keep its own soname; 'gdb-cudashim run' shows whether its calls reach the driver (the driver chain)")


def resolve(soname: str, consumer: ElfInfo | None, env: dict, cache=None) -> list[dict]:
    """Candidates in the order ld.so tries them; the first existing one wins."""
    steps: list[tuple[str, str]] = []
    for item in (env.get("LD_PRELOAD") or "").replace(":", " ").split():
        steps.append(("LD_PRELOAD", item))
    steps += [(interpose.ld_so_preload_path(), item) for item in interpose.ld_so_preload()]
    origin = os.path.dirname(os.path.abspath(consumer.path)) if consumer else ""
    if consumer and consumer.rpath and not consumer.runpath:
        steps += [("DT_RPATH", os.path.join(_expand(d, origin), soname)) for d in consumer.rpath]
    steps += [("LD_LIBRARY_PATH", os.path.join(d, soname)) for d in (env.get("LD_LIBRARY_PATH") or "").split(":") if d]
    if consumer and consumer.runpath:
        steps += [("DT_RUNPATH", os.path.join(_expand(d, origin), soname)) for d in consumer.runpath]
    cache = _ld_cache() if cache is None else cache
    steps += [("ld.so.cache", p) for p in cache.get(soname, [])]
    steps += [("default dirs", os.path.join(d, soname)) for d in DEFAULT_DIRS]
    out = []
    seen = set()
    for how, path in steps:
        real = os.path.realpath(path)
        exists = os.path.isfile(path)
        if how in ("LD_PRELOAD", interpose.ld_so_preload_path()):
            soname_of = None
            if exists:
                try:
                    soname_of = read_elf_cached(path).soname
                except ElfProblem:
                    pass
            out.append({"how": how, "path": path, "exists": exists, "soname": soname_of,
                        "satisfies": exists and soname_of == soname})
            continue
        if real in seen:
            continue
        seen.add(real)
        out.append({"how": how, "path": path, "exists": exists, "soname": None, "satisfies": exists})
    return out


def _is_stub(path: str) -> bool:
    return "/stubs/" in os.path.realpath(path) or "/stubs/" in path


# ---------------------------------------------------------------- checks --
def _describe(info: ElfInfo) -> dict:
    return {"path": info.path, "soname": info.soname, "exports": len(info.exports),
            "version_definitions": info.version_definitions, "debug_info": info.has_debug_info,
            "build_id": info.build_id, "debuglink": info.debuglink, "stripped": info.stripped}


def _role(info: ElfInfo) -> str | None:
    """What the file stands in for; None: it exports no CUDA entry point at all (not a shim)."""
    if info.soname in ROLE_SONAMES.values():
        return {v: k for k, v in ROLE_SONAMES.items()}[info.soname]
    if "cuInit" in info.exports:
        return "driver"
    if "cudaGetDeviceCount" in info.exports:
        return "runtime"
    if "nvmlInit_v2" in info.exports:
        return "nvml"
    for role, prefix in (("driver", "cu"), ("runtime", "cuda"), ("nvml", "nvml")):
        if any(n.startswith(prefix) and n[len(prefix):][:1].isupper() for n in info.exports):
            return role
    return None


def _consumer_kind(info: ElfInfo) -> str | None:
    base = os.path.basename(info.path)
    if "ggml-cuda" in base or "libggml-cuda" in (info.soname or ""):
        return "ggml-cuda"
    if (info.soname or "").startswith("libcudart") or base.startswith("libcudart"):
        return "cudart"
    return None


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
        if kind == "shim":
            d["role"] = _role(info)
        res.files.append(d)
    return infos


def audit(shims: list[str], consumers: list[str], env: dict) -> AuditResult:
    res = AuditResult()
    shim_infos = _read_all(shims, "shim", res)
    for info in shim_infos:
        if _role(info) is None:
            res.problems.append(Problem(
                "not-a-shim", info.path, "not a CUDA shim: exports none of the driver (cu*), runtime (cuda*) or NVML "
                "(nvml*) entry points", "it cannot stand in for libcuda.so.1, libcudart.so.12 or libnvidia-ml.so.1, "
                "so there is nothing to audit in it",
                "give --shim the shim's own file (what you built to stand in for libcuda.so.1), and "
                "libggml-cuda or libcudart as --consumer"))
            continue
        if not info.has_debug_info:
            res.warnings.append(Problem("no-debug-info", info.path, "no DWARF (.debug_info)" + (
                f"; .gnu_debuglink -> {info.debuglink}" if info.debuglink else ""),
                "cuda-state can only show globals as raw integers, and you cannot step through it",
                "build the shim with -g (the bundled one uses -g3 -O0) and do not strip it"))
    consumer_infos = _read_all(consumers, "consumer", res)

    drivers = [s for s in shim_infos if _role(s) == "driver"]
    runtimes = [s for s in shim_infos if _role(s) == "runtime"]

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
        kind = _consumer_kind(c)
        name = os.path.basename(c.path)
        if kind == "cudart":
            for sym in _cudart_lookups(c):
                for s in drivers:
                    present = s.exports_symbol(sym)
                    res.needs.append(Need(sym, f"{name} (run-time lookup)", os.path.basename(s.path), present,
                                          RUNTIME_LOOKUPS[sym],
                                          "" if present else f"export {sym} from the shim (forward it to the real driver)"))
        elif kind == "ggml-cuda":
            direct = [i for i in c.imports if i.library is None and i.name.startswith("cu")
                      and not i.name.startswith("cuda") and not i.name.startswith("cublas") and not i.weak]
            for imp in direct:
                for s in drivers:
                    present = s.exports_symbol(imp.name)
                    res.needs.append(Need(imp.name, f"{name} (direct import)", os.path.basename(s.path), present,
                                          "libggml-cuda links libcuda.so.1 directly: dlopen(libggml-cuda) fails with "
                                          f"'undefined symbol: {imp.name}' before any CUDA call",
                                          "" if present else f"export {imp.name} from the shim's libcuda.so.1"))
            versioned = [i for i in c.imports if i.library == "libcudart.so.12"]
            for s in runtimes:
                if "libcudart.so.12" not in s.version_definitions:
                    res.problems.append(Problem(
                        "missing-version-node", s.path, "defines no 'libcudart.so.12' symbol version",
                        f"{name} imports {len(versioned)} symbols as name@libcudart.so.12: with no version definitions "
                        "at all ld.so aborts the whole process (assertion in check_match); with other versions "
                        "dlopen fails with 'undefined symbol: cudaMalloc, version libcudart.so.12'",
                        "link the runtime shim with a version script: libcudart.so.12 { global: *; };"))
                for imp in versioned:
                    present = s.exports_symbol(imp.name, imp.version)
                    if not present:
                        res.needs.append(Need(imp.name, f"{name} (import @libcudart.so.12)", os.path.basename(s.path),
                                              False, "ggml calls it on the init path or later",
                                              f"export {imp.name}@libcudart.so.12"))

    for n in res.needs:
        if not n.present:
            res.problems.append(Problem("missing-symbol", n.provider, f"{n.symbol} needed by {n.needed_by}", n.why, n.fix))

    # resolution of the CUDA sonames, for each consumer (cudart's own dlopen of the driver included)
    cache = _ld_cache()
    for c in consumer_infos:
        wanted = [n for n in c.needed if n in ROLE_SONAMES.values()]
        if _consumer_kind(c) == "cudart":
            wanted.append("libcuda.so.1")  # dlopen()ed at run time, not DT_NEEDED
        for soname in wanted:
            cands = resolve(soname, c, env, cache)
            chosen = next((x for x in cands if x["satisfies"]), None)
            others = [x for x in cands if x["satisfies"] and x is not chosen]
            res.resolution.append({"consumer": c.path, "soname": soname, "chosen": chosen["path"] if chosen else None,
                                   "how": chosen["how"] if chosen else None, "candidates": cands})
            for x in cands:
                preloaded = x["how"] in ("LD_PRELOAD", interpose.ld_so_preload_path())
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
            if chosen is None:
                res.problems.append(Problem("not-found", soname, f"{os.path.basename(c.path)} finds no {soname}",
                                            "cudart reports cudaErrorInsufficientDriver (35); libggml-cuda fails to load",
                                            f"put the directory with the shim's {soname} on LD_LIBRARY_PATH"))
            elif _is_stub(chosen["path"]):
                res.problems.append(Problem("stub-first", chosen["path"], f"{soname} resolves to a CUDA stub library "
                                            f"(via {chosen['how']})",
                                            "stub libraries are for linking; cuInit returns CUDA_ERROR_STUB_LIBRARY (34)",
                                            "remove the stubs directory from LD_LIBRARY_PATH"))
            if chosen is not None and others:
                res.problems.append(Problem("several-candidates", soname, f"also found: {', '.join(o['path'] for o in others[:3])}",
                                            f"only {chosen['path']} is used; the others are shadowed",
                                            "make sure the one chosen is the one you built"))
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


def explain_failed_load(path: str, env) -> list[str]:
    """Why dlopen(path) failed, from the files: direct cu* imports the resolved driver lacks."""
    info = read_elf_cached(path)
    env = dict(env)
    cands = resolve("libcuda.so.1", info, env)
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
    from .procfs import ProcError, read_environ

    try:
        return read_environ(pid)
    except ProcError as exc:
        raise ValueError(str(exc)) from None


def render(result: AuditResult) -> list[str]:
    from tabulate import tabulate

    out = []
    if result.files:
        rows = [[os.path.basename(f["path"]), f["kind"], f.get("role") or "", f["soname"] or "", f["exports"],
                 "yes" if f["debug_info"] else "no", (f["build_id"] or "")[:12], "yes" if f["stripped"] else "no"]
                for f in result.files]
        out += tabulate(rows, headers=["file", "kind", "role", "soname", "exports", "DWARF", "build-id", "stripped"],
                        tablefmt="simple").splitlines()
    for line in result.unreadable:
        out.append(f"skipped: {line}")
    missing = [n for n in result.needs if not n.present]
    if result.needs:
        out.append("")
        out.append(f"Needs: {len(result.needs)} checked, {len(missing)} missing")
        rows = [[n.symbol, n.needed_by, n.provider, "present" if n.present else "MISSING", "" if n.present else n.why[:70]]
                for n in (missing or [])[:60]]
        if rows:
            out += tabulate(rows, headers=["symbol", "needed by", "shim", "status", "why it matters"],
                            tablefmt="simple").splitlines()
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
        out.append(f"{len(result.warnings)} warning(s), nothing a consumer needs:")
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
        env = _env_from(args.env_from) if args.env_from else dict(os.environ)
    except ValueError as exc:
        print(f"gdb-cudashim audit: {exc}", file=sys.stderr)
        return 2
    result = audit(args.shim, consumers, env)
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
