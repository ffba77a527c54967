"""Real gdb -batch, driven as a subprocess: hostile input gets one clear answer (issue #12)."""
import subprocess
import sys

from conftest import ROOT, SHIM_BUILD, env_with, run_gdb


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
