"""pwndbg-style: each function in tests/ingdb/test_*.py runs inside its own real gdb process, once in
the system gdb and once in the gdb-for-pwndbg wheel's (conftest.each_gdb)."""
import ast
import os
import subprocess
from pathlib import Path

import pytest

from conftest import GDBINIT, ROOT, env_with

HERE = Path(__file__).resolve().parent / "ingdb"


def _collect():
    for path in sorted(HERE.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield f"{path.stem}::{node.name}"


@pytest.mark.parametrize("test_id", list(_collect()))
def test_in_gdb(test_id, each_gdb, stack, probe, tmp_path):
    # TMPDIR: what a test makes with tempfile lands in pytest's own directory, never left in /tmp
    env = env_with(INGDB_TEST=test_id, GGML_CUDA_LIB=stack.ggml_cuda, INGDB_PROBE=probe, INGDB_ROOT=ROOT,
                   INGDB_STACK_LIB=stack.lib, TMPDIR=tmp_path)
    proc = subprocess.run([each_gdb, "-nx", "-q", "-batch", "-ex", f"source {GDBINIT}", "-x", str(HERE / "runner.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "INGDB PASSED" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_sourced_from_another_python_script(each_gdb, tmp_path):
    """gdb leaves the outer script's __file__ in __main__ when a Python file sources
    gdbinit.py (a ~/.gdbinit.py does this): the extension must still find itself."""
    outer = tmp_path / "outer.py"
    outer.write_text(f"import gdb\ngdb.execute('source {GDBINIT}')\n")
    proc = subprocess.run([each_gdb, "-nx", "-q", "-batch", "-x", str(outer), "-ex", "help catch-init-error"],
                          cwd="/", env=env_with(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "failed to load" not in proc.stderr, proc.stderr
    assert "Usage: catch-init-error" in proc.stdout
