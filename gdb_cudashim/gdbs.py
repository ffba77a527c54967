"""Which gdb runs the extension: the one GDB names, else the system gdb, else the gdb of the
gdb-for-pwndbg wheel (pwndbg's gdb 18 on PyPI, installed with the package: a machine without
a system gdb works with pip alone).

The wheel installs a `gdb` console script (a Python launcher) that runs its gdb binary in this
Python, with PYTHONHOME, PYTHONPATH and PYTHONNOUSERSITE set for gdb's embedded interpreter.
gdb hands its environment to the programs it starts, so those three are put back to what the
user had (unset, or their own value) for the program: a Python program that inherited them
dies ("No module named '_posixsubprocess'").

Pure: never imports gdb; cheap to import (the CLI imports it before every run).
"""
from __future__ import annotations

import os
import sys

WHEEL = "gdb-for-pwndbg"
WHEEL_VERSION = "18.1.0.post1"  # pinned in pyproject.toml too
# what the wheel's launcher sets for gdb (gdb_for_pwndbg/gdb.py main()), never meant for the program
LAUNCHER_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE")


class Gdb:
    """A gdb to run: its PATH, where it came from ('GDB', 'system' or 'wheel'), and whether it is
    the wheel's launcher (which sets LAUNCHER_ENV for itself)."""

    def __init__(self, path: str, origin: str, launcher: bool):
        self.path, self.origin, self.launcher = path, origin, launcher

    def describe(self, version: str | None = None) -> str:
        """One line: 'gdb 18.1: the gdb-for-pwndbg wheel's (/v/bin/gdb; no system gdb on PATH)'."""
        name = f"gdb {version}" if version else "gdb"
        if self.origin == "GDB":
            how = f"GDB={self.path}" + (f" (the {WHEEL} wheel's launcher)" if self.launcher else "")
        elif self.origin == "wheel":
            how = f"the {WHEEL} wheel's ({self.path}; no system gdb on PATH)"
        else:
            how = f"the system gdb ({self.path})"
        return f"{name}: {how}"

    def program_env_commands(self, user_env: dict) -> list[str]:
        """gdb commands that give the program the user's own PYTHONHOME, PYTHONPATH and
        PYTHONNOUSERSITE (unset where the user had none): only for the wheel's launcher, which
        changed them for gdb."""
        if not self.launcher:
            return []
        cmds = []
        for name in LAUNCHER_ENV:
            value = user_env.get(name)
            if value is None:
                cmds.append(f"unset environment {name}")
            elif "\n" not in value and value == value.strip():  # what gdb's 'set environment' reads back
                cmds.append(f"set environment {name}={value}" if value else f"set environment {name}=")
            else:
                cmds.append(f"unset environment {name}")  # cannot be said on a gdb command line: never the launcher's
        return cmds


def is_wheel_launcher(path: str) -> bool:
    """The gdb-for-pwndbg console script (a '#!' Python file that runs gdb_for_pwndbg.gdb)?"""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"gdb_for_pwndbg" in head


def _on_path(name: str, path_var: str | None) -> list[str]:
    found = []
    for folder in (path_var if path_var is not None else os.defpath).split(os.pathsep):
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK) and path not in found:
            found.append(path)
    return found


def system_gdb(env: dict | None = None) -> str | None:
    """The first gdb on PATH that is not the wheel's launcher (an activated venv puts that first)."""
    env = os.environ if env is None else env
    return next((p for p in _on_path("gdb", env.get("PATH")) if not is_wheel_launcher(p)), None)


def wheel_gdb(env: dict | None = None) -> str | None:
    """The wheel's launcher: beside this Python's scripts (the venv's bin), else one on PATH."""
    env = os.environ if env is None else env
    import sysconfig

    folders = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for path in [os.path.join(f, "gdb") for f in folders if f] + _on_path("gdb", env.get("PATH")):
        if os.path.isfile(path) and os.access(path, os.X_OK) and is_wheel_launcher(path):
            return path
    return None


def _which(name: str, env: dict) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    found = _on_path(name, env.get("PATH"))
    return found[0] if found else None


def pick(env: dict | None = None) -> Gdb | None:
    """GDB if set (None when it names nothing runnable), else the system gdb, else the wheel's."""
    env = os.environ if env is None else env
    given = env.get("GDB")
    if given:
        path = _which(given, env)
        return Gdb(path, "GDB", is_wheel_launcher(path)) if path else None
    path = system_gdb(env)
    if path:
        return Gdb(path, "system", False)
    path = wheel_gdb(env)
    return Gdb(path, "wheel", True) if path else None


def set_by_launcher(environ=None) -> bool:
    """Inside gdb: does gdb's own environment carry what the wheel's launcher set for it? It sets
    PYTHONHOME to this Python's 'prefix:exec_prefix', which nobody sets by hand."""
    environ = os.environ if environ is None else environ
    return environ.get("PYTHONHOME") == f"{sys.prefix}:{sys.exec_prefix}"
