"""Where the four pure-Python dependencies come from, for any interpreter (gdb's included).

Pure: never imports gdb.
"""
from __future__ import annotations

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
    import glob

    root = package_root()
    dirs += sorted(glob.glob(os.path.join(root, ".venv", "lib", "python3*", "site-packages")))
    return dirs


def missing() -> list[str]:
    import importlib.util

    return [dist for mod, dist in REQUIRED.items() if importlib.util.find_spec(mod) is None]


def import_problems() -> dict[str, str]:
    """Import each dependency for real: distribution -> 'MISSING' or the one-line exception it raised
    (a package found on the path whose __init__ fails is as unusable as a missing one)."""
    import importlib

    problems = {}
    for mod, dist in REQUIRED.items():
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            problems[dist] = "MISSING" if exc.name == mod else f"BROKEN: {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - any failure of its import is the answer
            where = getattr(sys.modules.get(mod), "__file__", None) or _spec_origin(mod)
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problems[dist] = f"BROKEN: {type(exc).__name__}: {line}" + (f" (in {where})" if where else "")
    return problems


def _spec_origin(mod: str) -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec else None


def ensure_path() -> list[str]:
    """Add site dirs until every dependency imports; returns the distributions still missing."""
    if not missing():
        return []
    for d in candidate_site_dirs():
        if os.path.isdir(d) and d not in sys.path:
            sys.path.append(d)
            import importlib

            importlib.invalidate_caches()
            if not missing():
                return []
    return missing()


def add_site_dirs() -> None:
    """For gdb-cudashim run's own gdb: the CLI names its site dir in GDB_CUDASHIM_SITE and has
    the dependencies there; add it without the import checks ensure_path makes (~3 ms)."""
    for d in os.environ.get("GDB_CUDASHIM_SITE", "").split(os.pathsep):
        if d and d not in sys.path:
            sys.path.append(d)


def fix_hint(names: list[str]) -> str:
    root = package_root()
    if os.path.isfile(os.path.join(root, "Makefile")):
        return f"run 'make setup' in {root}"
    return (f"run: python3 -m pip install --target ~/.local/share/gdb-cudashim/site "
            f"{' '.join(names)} and export GDB_CUDASHIM_SITE=~/.local/share/gdb-cudashim/site")
