"""cuda-state's pure part: what each loaded CUDA file is, warnings, and rendering.

Pure: never imports gdb.
"""
from __future__ import annotations

import os
import re

from . import runtime
from .calls import role_of
from .elf import ElfInfo

SHIM_MARKERS = ("g_in_init_phase", "g_gpu_info")


def role_for(path: str) -> str | None:
    role = role_of(path)
    return role if role in ("driver", "runtime", "ggml-cuda", "nvml") else None


def role_from_exports(info: ElfInfo) -> str | None:
    """A file with another name that acts as a driver (e.g. an LD_PRELOADed shim)."""
    if "cuInit" in info.exports:
        return "driver"
    if "nvmlInit_v2" in info.exports:
        return "nvml"
    if runtime.exports_runtime(info.exports):
        return "runtime"  # a runtime shim preloaded under its own soname
    return None


def classify(path: str, info: ElfInfo | None) -> str:
    real = os.path.realpath(path)
    base = os.path.basename(real)
    if "/stubs/" in real or "/stubs/" in path:
        return "CUDA stub library"
    if info is not None and all(m in info.exports for m in SHIM_MARKERS):
        return "bundled cudashim"
    role = role_of(path) or (role_from_exports(info) if info else None)
    if role == "driver" and re.fullmatch(r"libcuda\.so\.\d{3}\.\d+(\.\d+)?", base):
        return "NVIDIA driver"
    if role == "nvml" and re.fullmatch(r"libnvidia-ml\.so\.\d{3}\.\d+(\.\d+)?", base):
        return "NVIDIA driver"
    if role == "runtime":
        return runtime.kind(path, info.soname if info else None)
    if role == "ggml-cuda":
        return "ggml CUDA backend"
    if role in ("driver", "nvml"):
        return "unknown shim"
    return "other"


def identify(path: str) -> tuple[str, str, ElfInfo | None] | None:
    """(role, what it is, ELF info) of a loaded file that plays a CUDA role, else None.
    A file named otherwise that exports cuInit (an LD_PRELOADed shim) is a driver too."""
    from .elf import ElfProblem, read_elf_cached

    try:
        info = read_elf_cached(path)
    except (ElfProblem, OSError):
        info = None
    role = role_for(path) or (role_from_exports(info) if info is not None else None)
    if role is None:
        return None
    return role, classify(path, info), info


def cudart_version(path: str) -> str | None:
    real = os.path.basename(os.path.realpath(path))
    m = re.search(r"\.so\.(\d+(?:\.\d+)*)$", real)
    return m.group(1) if m else None


def warnings(roles: list[dict]) -> list[str]:
    out = []
    drivers = [r for r in roles if r["role"] == "driver"]
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


class More:
    """Stands at the end of an array cut short: how many elements were left out.
    JSON (default=str) and the table both show it as "(N more)"."""

    def __init__(self, count: int):
        self.count = count

    def __str__(self):
        return f"({self.count} more)"

    __repr__ = __str__


CELL_WIDTH = 100  # a table cell longer than this is cut, with a marker saying how much


def _cell(text: str, width: int = CELL_WIDTH) -> str:
    text = str(text)
    if len(text) <= width:
        return text
    return f"{text[:width]}... ({len(text) - width} more characters)"


def _fmt(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, More):
        return f"... {value}"
    if isinstance(value, str):
        return repr(value) if not value.startswith("0x") else value
    return str(value)


def render(result: dict, color: bool = False) -> list[str]:
    from tabulate import tabulate

    from .report import Style

    s = Style(color)
    out = [s("bold", f"process {result['pid']} (inferior {result['inferior']})")]
    if result["roles"]:
        rows = [[r["role"], r["kind"], r["soname"] or "", "yes" if r["debug_info"] else "no", _cell(r["path"])]
                for r in result["roles"]]
        out += tabulate(rows, headers=["role", "what it is", "soname", "DWARF", "file"], tablefmt="simple").splitlines()
    else:
        out.append("no CUDA library is loaded yet")
    for w in result["warnings"]:
        out.append(s("red", "warning: ") + w)
    for st in result["shim_state"]:
        out.append("")
        out.append(s("bold", f"state of {st['library']}") + f" (read via {st['how']})")
        if st["globals"]:
            rows = []
            for name, v in st["globals"].items():
                value = _cell(_fmt(v.get("value")) if v.get("error") is None else f"<{v['error']}>")
                if v.get("more_bytes"):
                    value += f" (+{v['more_bytes']} bytes not read)"
                rows.append([name, _cell(v.get("type") or f"{v.get('size')} bytes"), value])
            out += tabulate(rows, headers=["global", "type", "value"], tablefmt="simple").splitlines()
        else:
            out.append("  no g_* globals found (no DWARF and no symbol table entries)")
        if st["missing"]:
            out.append("  not found: " + ", ".join(st["missing"]))
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
