"""CUDA 13's runtime (NVIDIA's libcudart.so.13, pinned in realprogs) under the bundled shim, which
plays a CUDA 12.9 driver: cudart 13 asks the driver's version first and wants 13000. Real gdb,
the real cudart 13, tests/programs/rt_probe.c (a program using the runtime directly)."""
from conftest import BUILD, SHIM_BUILD, env_with, run_report

from gdb_cudashim import realprogs
from gdb_cudashim.core import cudafiles


def cudart13():
    return realprogs.path("cudart13")  # make test fetched it (make real-programs)


def test_cuda12_driver_under_cudart13_is_named_with_the_13000_it_needs(tmp_path):
    rt = cudart13()
    proc, report = run_report(tmp_path, [BUILD / "rt_probe", rt], env_with(LD_LIBRARY_PATH=SHIM_BUILD))
    assert "failed to initialize CUDA: CUDA driver version is insufficient for CUDA runtime version" in proc.stderr
    assert proc.returncode == 1
    first = report["findings"][0]
    assert first["rule"] == "driver-version", [f["rule"] for f in report["findings"]]
    assert "older than the CUDA 13 runtime needs (13000)" in first["summary"]
    assert "called from libcudart.so.13, set *driverVersion = 12090 (12.9)" in "\n".join(first["evidence"])
    assert "at least 13000 (13.0)" in first["fix"]
    (lib,) = report["libraries"]
    (f,) = [f for f in lib["files"] if f["path"] == str(rt)]
    assert f["kind"] == "NVIDIA runtime" and cudafiles.is_nvidia_runtime(str(rt))
    # its ~440 entry-point lookups are one row of the calls table, not 440
    rows = [line for line in proc.stdout.splitlines() if "cuGetProcAddress_v2" in line and " dlsym " not in line]
    assert len(rows) == 1 and "entry points asked for" in rows[0], rows[:3]


def test_a_cuda13_driver_version_gets_past_the_check(tmp_path):
    """Reported as 13.0, cudart 13 goes on to cuInit and the private tables (the fake shim lacks
    CUDART_INTERFACE): no driver-version finding, the next cause instead."""
    rt = cudart13()
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, CUDASHIM_DRIVER_VERSION="13000")
    proc, report = run_report(tmp_path, [BUILD / "rt_probe", rt], env)
    rules = [f["rule"] for f in report["findings"]]
    assert "driver-version" not in rules and rules, proc.stdout
    assert any(c["function"] == "cuInit" for c in report["calls"])
