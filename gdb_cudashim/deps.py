"""Where the four pure-Python dependencies come from, for any interpreter (gdb's included).

Pure: never imports gdb.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

REQUIRED = {"pygments": "pygments", "prompt_toolkit": "prompt_toolkit", "elftools": "pyelftools", "tabulate": "tabulate"}


def package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def candidate_site_dirs() -> list[str]:
    dirs = []
    env = os.environ.get("GDB_CUDASHIM_SITE")
    if env:
        dirs += [d for d in env.split(os.pathsep) if d]
    root = package_root()
    dirs += sorted(glob.glob(os.path.join(root, ".venv", "lib", "python3*", "site-packages")))
    return dirs


def missing() -> list[str]:
    return [dist for mod, dist in REQUIRED.items() if importlib.util.find_spec(mod) is None]


def ensure_path() -> list[str]:
    """Add site dirs until every dependency imports; returns the distributions still missing."""
    if not missing():
        return []
    for d in candidate_site_dirs():
        if os.path.isdir(d) and d not in sys.path:
            sys.path.append(d)
            importlib.invalidate_caches()
            if not missing():
                return []
    return missing()


def fix_hint(names: list[str]) -> str:
    root = package_root()
    if os.path.isfile(os.path.join(root, "Makefile")):
        return f"run 'make setup' in {root}"
    return (f"run: python3 -m pip install --target ~/.local/share/gdb-cudashim/site "
            f"{' '.join(names)} and export GDB_CUDASHIM_SITE=~/.local/share/gdb-cudashim/site")
