"""The pinned stack's bad paths: one line each, nothing half-written left behind."""
import os

from conftest import env_with, run_cli


def test_unwritable_cache_dir_is_one_line():
    proc = run_cli(["stack", "fetch"], env=env_with(GDB_CUDASHIM_CACHE="/proc/gdb-cudashim-cache"))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot create the cache dir" in line and "GDB_CUDASHIM_CACHE" in line


def test_failed_download_leaves_nothing_behind(tmp_path):
    env = env_with(GDB_CUDASHIM_CACHE=str(tmp_path / "cache"), PIP_INDEX_URL="http://127.0.0.1:9/simple",
                   PIP_EXTRA_INDEX_URL="", PIP_FIND_LINKS="", PIP_NO_INDEX="", PIP_RETRIES="0", PIP_TIMEOUT="2",
                   PIP_CONFIG_FILE=os.devnull)
    proc = run_cli(["stack", "fetch"], env=env, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "could not download nvidia-cuda-runtime-cu12==12.9.79" in line and "Traceback" not in proc.stderr
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert left == ["wheels"] and not list((tmp_path / "cache" / "wheels").iterdir())


def test_stack_path_without_a_stack(tmp_path):
    proc = run_cli(["stack", "path", "lib"], env=env_with(GDB_CUDASHIM_CACHE=str(tmp_path)))
    assert proc.returncode == 2 and "gdb-cudashim stack fetch" in proc.stderr


def test_unknown_option_is_usage_error():
    proc = run_cli(["run", "--bogus", "--", "/bin/true"])
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


def test_missing_dependency_is_one_line_and_doctor_still_works(tmp_path):
    """A copy of the package with no venv beside it: gdb's own Python lacks the dependencies."""
    import shutil
    import subprocess

    from conftest import ROOT, find_gdb

    gdb = find_gdb("system")  # the wheel's gdb runs in the venv's Python, which always has them
    shutil.copytree(ROOT / "gdb_cudashim", tmp_path / "gdb_cudashim", ignore=shutil.ignore_patterns("__pycache__"))
    env = env_with(GDB_CUDASHIM_SITE=str(tmp_path / "nowhere"), PYTHONPATH="")
    proc = subprocess.run([gdb, "-nx", "-q", "-batch", "-ex", f"source {tmp_path}/gdb_cudashim/gdbinit.py",
                           "-ex", "cuda-doctor"], env=env, capture_output=True, text=True, timeout=60)
    probe = subprocess.run([gdb, "-nx", "-q", "-batch", "-ex", "python import importlib.util as u; "
                            "print([m for m in ('tabulate','elftools') if u.find_spec(m) is None])"],
                           env=env, capture_output=True, text=True, timeout=60)
    if probe.stdout.strip() == "[]":
        import pytest

        pytest.skip("this machine's system Python has the dependencies, so nothing is missing")
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [l for l in proc.stderr.splitlines() if "missing Python packages" in l]
    assert "pyelftools" in line or "tabulate" in line
    assert "MISSING" in proc.stdout and "fix:" in proc.stdout
