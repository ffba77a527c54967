"""Which gdb runs (issue #21 section 3): GDB, else the system gdb, else the gdb-for-pwndbg wheel's
(pwndbg's gdb 18.1 in the venv's Python), said in one line; the wheel's launcher sets PYTHONHOME,
PYTHONPATH and PYTHONNOUSERSITE for gdb, and the program never inherits them. Real gdb runs only."""
import json
import os
import subprocess
import sys

from conftest import ROOT, SHIM_BUILD, env_with, find_gdb, run_cli, run_report
from gdb_cudashim.gdbs import is_wheel_launcher

SEED = SHIM_BUILD / "variants" / "seed"
LAUNCHER_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE")

# A Python parent that starts a Python child (subprocess needs _posixsubprocess, which a
# PYTHONHOME meant for gdb's Python hides), then says what both saw of the launcher's variables.
PARENT = """import json, os, subprocess, sys
child = subprocess.run([sys.executable, "-c", "import json, os; print(json.dumps({k: os.environ.get(k) for k in %r}))"],
                       capture_output=True, text=True, check=True).stdout
with open(sys.argv[1], "w") as f:
    json.dump({"parent": {k: os.environ.get(k) for k in %r}, "child": json.loads(child)}, f)
""" % (LAUNCHER_ENV, LAUNCHER_ENV)


def _parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    return script, tmp_path / "seen.json"


def _no_gdb_env(**extra):
    env = env_with(**extra)
    env.pop("GDB", None)
    return env


def test_a_python_parent_under_each_gdb_sees_none_of_the_launchers_variables(each_gdb, tmp_path):
    script, seen = _parent(tmp_path)
    env = env_with()
    for name in LAUNCHER_ENV:
        env.pop(name, None)
    proc, report = run_report(tmp_path, [sys.executable, script, seen], env)
    # 4: no CUDA library was loaded, nothing to diagnose (what is checked here is the environment)
    assert proc.returncode == 4 and seen.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(seen.read_text()) == {"parent": dict.fromkeys(LAUNCHER_ENV), "child": dict.fromkeys(LAUNCHER_ENV)}
    # which gdb ran it, in one line
    line = report["meta"]["gdb"]
    wheel = is_wheel_launcher(each_gdb)
    assert line == f"gdb {report['meta']['gdb_version']}: GDB={each_gdb}" + (" (the gdb-for-pwndbg wheel's launcher)"
                                                                             if wheel else ""), line
    assert report["meta"]["gdb_version"].startswith("18.1") or not wheel, line


def test_the_users_own_python_variables_reach_the_program_under_each_gdb(each_gdb, tmp_path):
    script, seen = _parent(tmp_path)
    mine = {"PYTHONPATH": str(tmp_path / "mine"), "PYTHONNOUSERSITE": ""}
    env = env_with(**mine)
    env.pop("PYTHONHOME", None)
    proc, _report = run_report(tmp_path, [sys.executable, script, seen], env)
    # 4: no CUDA library was loaded, nothing to diagnose (what is checked here is the environment)
    assert proc.returncode == 4 and seen.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    want = {"PYTHONHOME": None, **mine}
    assert json.loads(seen.read_text()) == {"parent": want, "child": want}


def test_the_batch_recipe_in_each_gdb_runs_a_python_parent(each_gdb, tmp_path):
    """Plain gdb with the extension loaded (no CLI to restore anything): in the wheel's gdb the loader
    takes the launcher's variables out of the program's environment."""
    script, seen = _parent(tmp_path)
    env = env_with()
    for name in LAUNCHER_ENV:
        env.pop(name, None)
    proc = subprocess.run([each_gdb, "-batch", "-x", str(ROOT / "commands" / "catch-init-error.gdb"), "--args",
                           sys.executable, str(script), str(seen)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    # 4: no CUDA library was loaded, nothing to diagnose (what is checked here is the environment)
    assert proc.returncode == 4 and seen.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(seen.read_text()) == {"parent": dict.fromkeys(LAUNCHER_ENV), "child": dict.fromkeys(LAUNCHER_ENV)}


def test_the_launcher_gives_the_program_the_users_environment(each_gdb):
    env = env_with(PYTHONPATH="/my/own")
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONNOUSERSITE", None)
    proc = run_cli(["gdb", "-batch", "-ex", "show environment PYTHONHOME", "-ex", "show environment PYTHONPATH",
                    "-ex", "show environment PYTHONNOUSERSITE"], env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'Environment variable "PYTHONHOME" not defined.' in proc.stdout, proc.stdout
    assert "PYTHONPATH = /my/own" in proc.stdout, proc.stdout
    assert 'Environment variable "PYTHONNOUSERSITE" not defined.' in proc.stdout, proc.stdout
    said = [line for line in proc.stderr.splitlines() if line.startswith("gdb-cudashim: gdb")]
    assert said == [f"gdb-cudashim: gdb: GDB={each_gdb}" + (" (the gdb-for-pwndbg wheel's launcher)"
                                                           if is_wheel_launcher(each_gdb) else "")], proc.stderr


def test_without_a_system_gdb_the_wheels_gdb_diagnoses_the_seed_case(stack, probe, tmp_path):
    """pip alone: no gdb on PATH at all (nor GDB); the venv's gdb-for-pwndbg runs it."""
    wheel = find_gdb("wheel")
    empty = tmp_path / "bin"
    empty.mkdir()
    env = _no_gdb_env(PATH=empty, LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [probe], env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [f["rule"] for f in report["findings"]] == ["missing-cuGetExportTable", "missing-cuGetProcAddress_v2"]
    assert report["meta"]["gdb"] == f"gdb 18.1: the gdb-for-pwndbg wheel's ({wheel}; no system gdb on PATH)"
    doctor = run_cli(["doctor"], env=env, timeout=60)
    assert f"gdb: the gdb-for-pwndbg wheel's ({wheel}; no system gdb on PATH)" in doctor.stdout, doctor.stdout
    assert "gdb 18.1, Python" in doctor.stdout, doctor.stdout  # cuda-doctor, run in it
    assert "all dependencies importable" in doctor.stdout, doctor.stdout


def test_an_activated_venv_still_runs_the_system_gdb(tmp_path):
    """The wheel's launcher first on PATH (an activated venv) is not the system gdb."""
    system, wheel = find_gdb("system"), find_gdb("wheel")
    env = _no_gdb_env(PATH=os.pathsep.join([os.path.dirname(wheel), os.environ.get("PATH", "")]))
    proc = run_cli(["doctor"], env=env, timeout=60)
    assert f"\ngdb: the system gdb ({system})\n" in proc.stdout, proc.stdout
    assert "gdb 18.1, Python" not in proc.stdout, proc.stdout  # cuda-doctor ran in the system gdb
