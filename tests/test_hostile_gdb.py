"""Real gdb -batch, driven as a subprocess: hostile input gets one clear answer (issue #12)."""
import subprocess
import sys

import pytest

from conftest import ROOT, SHIM_BUILD, env_with, gdb_path, run_gdb

pytestmark = pytest.mark.usefixtures("each_gdb")  # in the system gdb and in the wheel's


def test_cuda_run_shows_gdbs_own_error():
    proc = run_gdb(["cuda-run --no-report"])
    assert "No executable file specified" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_cuda_patch_if_that_fails_at_run_time_says_so_once(stack, probe):
    env = env_with(GGML_CUDA_LIB=stack.ggml_cuda)
    proc = run_gdb([f"set environment LD_LIBRARY_PATH={SHIM_BUILD}",
                    "cuda-patch cuGetProcAddress_v2 --return 0 --if 'g_nope == 1'", "run"], args=[probe], env=env)
    said = [line for line in proc.stderr.splitlines() if line.startswith("cuda-patch: #1")]
    assert len(said) == 1 and "g_nope" in said[0], proc.stderr[-3000:]


def test_cuda_doctor_names_a_broken_dependency(tmp_path):
    (tmp_path / "tabulate").mkdir()
    (tmp_path / "tabulate" / "__init__.py").write_text("raise RuntimeError('tabulate is broken here')\n")
    env = env_with(PYTHONPATH=tmp_path)
    proc = run_gdb(["cuda-doctor"], env=env)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    line = next((l for l in out.splitlines() if "tabulate" in l and "BROKEN" in l), None)
    assert line and "RuntimeError: tabulate is broken here" in line, out
    assert "all dependencies importable" not in out


def _gdb(*ex, env=None):
    cmd = [gdb_path(), "-nx", "-q", "-batch"]
    for c in ex:
        cmd += ["-ex", c]
    return subprocess.run(cmd, cwd="/", env=env or env_with(), capture_output=True, text=True, timeout=60)


def test_python_import_loads_the_extension_once():
    proc = _gdb("python import gdb_cudashim", "python import gdb_cudashim", "help cuda-patch", "help user-defined",
                env=env_with(PYTHONPATH=ROOT))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "Usage: cuda-patch" in proc.stdout, proc.stdout
    assert sum(l.startswith("catch-init-error --") for l in proc.stdout.splitlines()) == 1, proc.stdout
    # a later gdbinit.py source is harmless too
    proc = _gdb("python import gdb_cudashim", f"source {ROOT}/gdb_cudashim/gdbinit.py", "help user-defined",
                env=env_with(PYTHONPATH=ROOT))
    assert proc.returncode == 0 and proc.stdout.count("cuda-patch --") == 1, proc.stdout + proc.stderr


def test_importing_outside_gdb_needs_no_gdb():
    proc = subprocess.run([sys.executable, "-c", "import gdb_cudashim, sys; assert 'gdb' not in sys.modules"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

