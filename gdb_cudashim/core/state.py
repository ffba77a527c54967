"""cuda-state's pure part: what each loaded CUDA file is, warnings, and rendering.

Pure: never imports gdb.
"""
from __future__ import annotations

import os

from . import cudafiles, loader, runtime
from .text import Style, cell, format_value



# ------------------------------------------------------------ runtime shims --
def cudart_version_entry(role: dict) -> tuple[str, str | None]:
    """(key, value) for the versions line: NVIDIA's file name carries its CUDA version; a shim's
    name is only the soname it answers to."""
    key = f"cudart file ({os.path.basename(role['path'])})"
    if role["kind"] == cudafiles.NVIDIA_RUNTIME:
        return key, cudafiles.cudart_version(role["path"])
    return key, f"{role.get('soname') or os.path.basename(role['path'])} is the shim's soname, not a CUDA version"


def import_checks(roles: list[dict], infos: dict) -> list:
    """runtime.check_imports of each runtime shim against libggml-cuda, when both are mapped.
    INFOS: path -> ElfInfo of the mapped CUDA files."""
    ggml = next((infos.get(r["path"]) for r in roles if r["role"] == "ggml-cuda" and infos.get(r["path"])), None)
    if ggml is None:
        return []
    return [runtime.check_imports(infos[r["path"]], ggml) for r in roles
            if r["role"] == "runtime" and r["kind"] != cudafiles.NVIDIA_RUNTIME and infos.get(r["path"]) is not None]


def _bundled(soname: str | None, ggml) -> str | None:
    """The libcudart.so.N beside libggml-cuda: in a directory of its DT_RPATH/DT_RUNPATH."""
    if not soname or ggml is None:
        return None
    for d in loader.origin_dirs(ggml.rpath + ggml.runpath, ggml.path):
        candidate = os.path.join(d, soname)
        if os.path.isfile(candidate):
            return candidate
    return None


def _names(items: list[str], shown: int = 4) -> str:
    return ", ".join(items[:shown]) + (f" (+{len(items) - shown})" if len(items) > shown else "")


def runtime_findings(roles: list[dict], infos: dict, env: dict, cwd: str | None = None) -> tuple[list[str], list[str]]:
    """(warnings, notes) about the runtimes of one process: two runtimes and where libggml-cuda's
    cuda* imports bind; a libcudart.so.N in LD_LIBRARY_PATH that the loader bypassed; what a
    preloaded runtime does to the bundled libcudart. ROLES carry "loaded_via"; INFOS: path -> ElfInfo."""
    warns: list[str] = []
    notes: list[str] = []
    base = os.path.basename
    runtimes = [r for r in roles if r["role"] == "runtime"]
    ggml_role = next((r for r in roles if r["role"] == "ggml-cuda"), None)
    ggml = infos.get(ggml_role["path"]) if ggml_role else None
    nvidia = [r for r in runtimes if r["kind"] == cudafiles.NVIDIA_RUNTIME]
    shims = [r for r in runtimes if r["kind"] != cudafiles.NVIDIA_RUNTIME]

    # (a) two runtimes in one process
    if len({os.path.realpath(r["path"]) for r in runtimes}) > 1:
        for shim in shims:
            others = [r for r in runtimes if not loader.same_file(r["path"], shim["path"])]
            other = next((r for r in others if r in nvidia), others[0])
            whose = "NVIDIA's " if other in nvidia else ""
            head = (f"two runtimes in one process: {shim['path']} ({shim['kind']}, {shim.get('loaded_via') or '?'}) "
                    f"and {whose}{other['path']}")
            info = infos.get(shim["path"])
            if ggml is None or info is None:
                warns.append(head + ("; libggml-cuda is not loaded yet" if ggml is None else ""))
                continue
            if not loader.is_preload(shim.get("loaded_via")):
                warns.append(head + ": libggml-cuda's cuda* imports bind to whichever comes first in its lookup scope "
                             "(the program and its preloads, then its own dependencies); this one was not preloaded, "
                             "so which it is cannot be told from here")
                continue
            check = runtime.check_imports(info, ggml)
            missing = [m.symbol for m in check.missing]
            bound = check.imported - len(missing)
            at = f" @{check.version}" if check.version else ""
            text = (f"{head}: libggml-cuda's cuda* imports{at} bind to {base(shim['path'])} for the {bound} of "
                    f"{check.imported} it defines (a preload comes before libggml-cuda's own dependencies)")
            if missing:
                text += f", to {base(other['path'])} for the other {len(missing)} ({_names(missing)})"
            else:
                text += f"; {base(other['path'])} is loaded (DT_NEEDED {other.get('soname') or base(other['path'])}) " \
                        "but none of them binds to it"
            warns.append(text)
        if not shims:
            warns.append("more than one runtime in one process: " + ", ".join(r["path"] for r in runtimes))

    # (b) a non-NVIDIA libcudart.so.N in LD_LIBRARY_PATH that the loader did not use
    dirs = loader.library_path(env, cwd)
    seen = set()
    for mapped in runtimes:
        soname = mapped.get("soname") or base(mapped["path"])
        if not cudafiles.is_runtime_soname(soname):
            continue
        for d in dirs:
            candidate = os.path.join(d, soname)
            if (candidate in seen or not os.path.isfile(candidate) or loader.same_file(candidate, mapped["path"])
                    or any(loader.same_file(candidate, r["path"]) for r in runtimes) or cudafiles.is_nvidia_runtime(candidate)
                    or not cudafiles.is_runtime_file(candidate)):  # junk by that name: ld.so would skip it too
                continue
            seen.add(candidate)
            via = mapped.get("loaded_via") or ""
            if loader.is_preload(via) and mapped.get("kind") != cudafiles.NVIDIA_RUNTIME:
                continue  # the user's own replacement is preloaded and in use: nothing was bypassed
            if via.startswith("DT_RPATH of "):
                why = (f"{via[len('DT_RPATH of '):]}'s DT_RPATH, searched before LD_LIBRARY_PATH, "
                       f"found {mapped['path']} first")
            elif via == "LD_LIBRARY_PATH":
                why = f"an earlier LD_LIBRARY_PATH directory held {mapped['path']}"
            elif loader.is_preload(via):
                why = f"{mapped['path']} is preloaded ({via})"
            else:
                why = f"libggml-cuda's DT_RPATH/DT_RUNPATH or an earlier directory found {mapped['path']} first"
            warns.append(f"{candidate} (LD_LIBRARY_PATH) is bypassed: {why}; LD_PRELOAD it instead (under the same "
                         f"soname {soname} it replaces the bundled one)")

    # (c) what a preloaded runtime shim does to the bundled libcudart
    for shim in shims:
        via = shim.get("loaded_via")
        if not loader.is_preload(via):
            continue
        if shim["kind"] == cudafiles.REPLACEMENT:
            bundled = _bundled(shim.get("soname"), ggml)
            notes.append(runtime.soname_interplay(shim["path"], shim.get("soname"), loader.PRELOAD if via == loader.PRELOAD
                                                  else loader.PRELOAD_FILE, bundled))
        elif len(runtimes) == 1:  # its own soname and nothing else yet: say what will happen
            notes.append(runtime.soname_interplay(shim["path"], shim.get("soname"), loader.PRELOAD, None))
    return warns, notes


def warnings(roles: list[dict]) -> list[str]:
    out = []
    # an interposer (HAMi-core's libvgpu.so: its own soname, a dlsym hook) is a link of the driver
    # chain by design: neither a second driver nor a file cudart's dlopen should find
    drivers = [r for r in roles if r["role"] == "driver" and r.get("kind") != cudafiles.DRIVER_INTERPOSER]
    if len({os.path.realpath(r["path"]) for r in drivers}) > 1:
        out.append("more than one file acts as libcuda in this process: " + ", ".join(r["path"] for r in drivers)
                   + "; cudart uses the one named libcuda.so.1 it dlopen()s, libggml-cuda's direct imports bind "
                     "to the first in load order")
    for r in drivers:
        if r["soname"] and r["soname"] != "libcuda.so.1":
            out.append(f"{r['path']} has soname {r['soname']!r}: cudart's dlopen(\"libcuda.so.1\") will not find it")
        if r["kind"] == "CUDA stub library":
            out.append(f"{r['path']} is a CUDA stub library: cuInit returns CUDA_ERROR_STUB_LIBRARY (34)")
    return out


MISSING_SHOWN = 20  # missing imports named per stage; the rest are counted


def import_entry(check) -> dict:
    """JSON of one runtime.ImportCheck, with its one-line summary and, when it lacks any, the fix."""
    out = check.to_dict()
    out["summary"] = check.summary()
    if check.missing:
        out["fix"] = runtime.missing_fix(check)
    return out


def render_imports(entries, s) -> list[str]:
    out = []
    for e in entries:
        out.append("")
        out.append(s("bold", "runtime exports: ") + e["summary"])
        missing = e.get("missing") or []
        for stage_ in runtime.WHEN:
            names = [m["symbol"] + (f"@{m['version']}" if m.get("version") else "") for m in missing
                     if m["stage"] == stage_]
            if names:
                shown = ", ".join(names[:MISSING_SHOWN]) + (f" ... ({len(names) - MISSING_SHOWN} more: "
                                                             "cuda-state --json lists them all)"
                                                             if len(names) > MISSING_SHOWN else "")
                out.append(f"  missing ({stage_}, needed {runtime.WHEN[stage_]}): {shown}")
        out += [f"  {m['symbol']}: {m['note']}" for m in missing if m.get("note")]
        if e.get("fix"):
            out.append("  fix: " + e["fix"])
    return out


def render(result: dict, color: bool = False) -> list[str]:
    from tabulate import tabulate


    s = Style(color)
    out = [s("bold", f"process {result['pid']} (inferior {result['inferior']})")]
    if result["roles"]:
        rows = [[r["role"], r["kind"], r["soname"] or "", r.get("loaded_via") or "", "yes" if r["debug_info"] else "no",
                 cell(r["path"])] for r in result["roles"]]
        out += tabulate(rows, headers=["role", "what it is", "soname", "loaded via", "DWARF", "file"],
                        tablefmt="simple").splitlines()
    else:
        out.append("no CUDA library is loaded yet")
    for w in result["warnings"]:
        out.append(s("red", "warning: ") + w)
    for n in result.get("notes", ()):
        out.append(s("bold", "note: ") + n)
    out += render_imports(result.get("runtime_imports", ()), s)
    for st in result["shim_state"]:
        out.append("")
        if st["how"].startswith("unreadable"):
            out.append(s("bold", f"state of {st['library']}") + ": its symbol tables cannot be read ("
                       + st["how"].split(": ", 1)[-1] + ")")
            continue
        out.append(s("bold", f"state of {st['library']}") + (f" (read via {st['how']})" if st["globals"] else ""))
        if st["globals"]:
            rows = []
            for name, v in st["globals"].items():
                value = cell(format_value(v.get("value")) if v.get("error") is None else f"<{v['error']}>")
                if v.get("more_bytes"):
                    value += f" (+{v['more_bytes']} bytes not read)"
                rows.append([name, cell(v.get("type") or f"{v.get('size')} bytes"), value])
            out += tabulate(rows, headers=["global", "type", "value"], tablefmt="simple").splitlines()
        elif not st["missing"]:
            out.append("  no g_* global variables in its symbol table")
        if st["missing"]:  # cuda-state --var NAME that this shim does not have
            line = "  not a variable in this shim: " + ", ".join(st["missing"])
            if "available" in st:
                have = st["available"]
                line += ("; its g_* globals: " + ", ".join(have[:40]) + (f" ({len(have) - 40} more)" if len(have) > 40
                                                                          else "")) if have else "; it has no g_* globals"
            out.append(line)
    if result["versions"]:
        out.append("")
        out.append(s("bold", "versions: ") + ", ".join(f"{k} = {v}" for k, v in result["versions"].items()))
    out.append("")
    out.append(s("bold", "environment"))
    if result["environment"]:
        out += [f"  {k}={v}" for k, v in sorted(result["environment"].items())]
    else:
        out.append("  (no LD_PRELOAD, LD_LIBRARY_PATH, CUDA_*, OLLAMA_*, GGML_* set)")
    out.append(s("bold", "gdb: ") + ", ".join(f"{k} {v}" for k, v in result["gdb_settings"].items()))
    return out
