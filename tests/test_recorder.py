"""The in-process recorder (shim/audit.c, core/recorder.py, gdb/recording.py): lookups and CUDA
calls recorded inside the traced process, on the real cudart and libggml-cuda, with gdb stopping
only for what is rare (issue #17). Every test runs the real programs; the pure reader is checked
on rings the real recorder wrote."""
import os
import subprocess
import sys

import pytest

from conftest import BUILD, ROOT, SHIM_BUILD, env_with, run_gdb, run_report

pytestmark = pytest.mark.usefixtures("each_gdb")  # the recorder under gdb 13 (system) and gdb 18 (the wheel's)

SEED = SHIM_BUILD / "variants" / "seed"
AUDIT = SHIM_BUILD / "libcudashim-audit.so"
STOPS_TARGET = 50  # issue #17: debugger stops per process


def probe_env(stack, libdir, **extra):
    return env_with(LD_LIBRARY_PATH=libdir, GGML_CUDA_LIB=stack.ggml_cuda, **extra)


def observed(report, pid=None):
    rows = [o for o in report["observed"] if pid is None or o["pid"] == pid]
    assert rows, report["observed"]
    return rows


def test_the_spec_header_is_generated_from_the_calls_the_rules_read():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_audit_specs.py")], capture_output=True,
                         text=True, check=True).stdout
    assert out == (ROOT / "shim" / "audit_specs.h").read_text(), "run: python3 tools/gen_audit_specs.py > shim/audit_specs.h"
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_audit_specs.py"), "--versioned"],
                         capture_output=True, text=True, check=True).stdout
    assert out == (ROOT / "shim" / "versioned.h").read_text(), \
        "run: python3 tools/gen_audit_specs.py --versioned > shim/versioned.h"


def test_the_reader_decodes_a_ring_the_real_recorder_wrote(stack, probe, tmp_path):
    """No gdb at all: the seed shim's run recorded by the audit library alone, read back."""
    from gdb_cudashim.core import recorder

    rings = tmp_path / "rings"
    rings.mkdir()
    env = probe_env(stack, SEED, LD_AUDIT=AUDIT, GDB_CUDASHIM_RING_DIR=rings)
    proc = subprocess.run([str(probe)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert "API call is not supported" in proc.stderr
    (path,) = recorder.ring_paths(str(rings))
    reader = recorder.Reader(recorder.Ring(path))
    events = [e for _t, e in reader.read(final=True)]
    assert reader.ring.exe == str(probe) and reader.ring.pid == proc_pid(path)
    lookups = {(e.symbol, e.found) for e in events if e.kind == "lookup"}
    assert ("cuGetProcAddress_v2", False) in lookups and ("cuGetExportTable", False) in lookups
    assert ("cuInit", True) in lookups
    calls = {e.function: e for e in events if e.kind == "call"}
    assert calls["cudaGetDeviceCount"].result == 36 and calls["cudaGetDeviceCount"].library.endswith("libcudart.so.12")
    assert calls["cudaGetDeviceCount"].caller.endswith(os.path.basename(stack.ggml_cuda))
    assert calls["cuDriverGetVersion"].args["driverVersion"] == 12090
    assert calls["cuDriverGetVersion"].library.endswith("seed/libcuda.so.1")  # a relative LD_LIBRARY_PATH name
    assert calls["cudaGetErrorString"].result == "API call is not supported in the installed CUDA driver"
    # ld.so's own search, for whom: what the loader model can explain a missing library with
    assert any(s["path"].endswith("seed/libcuda.so.1") for s in reader.searches)


def proc_pid(path):
    return int(os.path.basename(path).split(".")[0])


def test_the_recorder_never_changes_what_dlsym_answers(tmp_path):
    """RTLD_NEXT, RTLD_DEFAULT, a local handle, dlvsym, and the real dlsym taken the way an
    interposer takes it: the same answers with the recorder in the process as without."""
    prog = [str(BUILD / "dlsym_semantics")]
    plain = subprocess.run(prog, capture_output=True, text=True, check=True).stdout
    rings = tmp_path / "rings"
    rings.mkdir()
    recorded = subprocess.run(prog, capture_output=True, text=True, check=True,
                              env=dict(os.environ, LD_AUDIT=str(AUDIT), GDB_CUDASHIM_RING_DIR=str(rings))).stdout
    assert recorded == plain
    assert "next malloc libc.so.6 malloc" in plain and "default missing NULL" in plain
    assert os.listdir(rings), "the recorder was not in the process"


def test_the_seed_case_costs_a_few_stops_and_says_how_it_was_recorded(stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SEED))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rules = [f["rule"] for f in report["findings"]]
    assert rules[:2] == ["missing-cuGetExportTable", "missing-cuGetProcAddress_v2"], rules
    (row,) = observed(report)
    assert row["how"] == "in-process" and row["stops"] <= STOPS_TARGET, row
    # cudart's ~420 fallback lookups are all there, recorded, none of them a stop
    lookups = report["lookups"]
    assert len(lookups) > 400 and {l["found_by"] for l in lookups} == {"recorded"}
    assert report["stops"] == row["stops"] and "in-process" in proc.stdout


def test_a_get_proc_address_shim_costs_a_few_stops_in_each_failing_shape(stack, probe, tmp_path):
    """The bundled shim exports cuGetProcAddress_v2: cudart's ~440 queries were 2,300+ stops."""
    shapes = {"export-table-failed": {}, "driver-error-passed-through": {"CUDASHIM_INIT_RESULT": "100"},
              "driver-version": {"CUDASHIM_DRIVER_VERSION": "11080"}}
    for rule, extra in shapes.items():
        (tmp_path / rule).mkdir()
        proc, report = run_report(tmp_path / rule, [probe], probe_env(stack, SHIM_BUILD, **extra))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        (row,) = observed(report)
        assert row["how"] == "in-process" and row["stops"] <= STOPS_TARGET, (rule, row)
        queries = [c for c in report["calls"] if c["function"] == "cuGetProcAddress_v2"]
        assert len(queries) > (400 if rule != "driver-version" else 2), (rule, len(queries))
        asked = {c["args"]["symbol"]: c for c in queries}
        # the query's symbol, cudaVersion, flags, result, status and the pointer handed back
        init = asked.get("cuInit") or asked["cuGetProcAddress"]
        assert init["returned"] and init["result"] == 0 and init["args"]["pfn"] and "cudaVersion" in init["args"]
        assert init["lands_in"].endswith("shim/build/libcuda.so.1"), init  # the file the pointer lies in
        assert [f["rule"] for f in report["findings"]][0] == rule, report["findings"]


def test_the_test_interposer_is_diagnosed_through_its_dlsym_hook(stack, probe, tmp_path):
    env = probe_env(stack, SHIM_BUILD, LD_PRELOAD=BUILD / "libvgpu.so")
    proc, report = run_report(tmp_path, [probe], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (row,) = observed(report)
    assert row["how"] == "in-process" and row["stops"] <= STOPS_TARGET, row
    # cudart's dlsym went to the interposer's hook; the hook's own lookups went to libc's dlsym
    hooked = [l for l in report["lookups"] if l["caller"].endswith("libcudart.so.12")]
    assert hooked and all(l["hook"] and l["hook"].endswith("libvgpu.so") for l in hooked), hooked
    inner = [l for l in report["lookups"] if l["caller"].endswith("libvgpu.so")]
    assert inner and all(l["hook"] is None and l["found"] for l in inner)
    # a call followed through both files
    calls = report["calls"]
    i = next(i for i, c in enumerate(calls) if c["function"] == "cuInit" and c["library"].endswith("libvgpu.so"))
    assert calls[i + 1]["function"] == "cuInit" and calls[i + 1]["library"].endswith("libcuda.so.1")
    assert "export-table-failed" in [f["rule"] for f in report["findings"]]


def test_a_child_started_without_the_recorder_is_traced_with_stops_and_said_so(stack, probe, tmp_path):
    """A parent that sets its child's environment (env -u LD_AUDIT) strips the recorder: that
    child is seen the old way, and the report says why."""
    proc, report = run_report(tmp_path, ["/usr/bin/env", "-u", "LD_AUDIT", probe], probe_env(stack, SEED))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (row,) = observed(report)
    assert row["how"].startswith("started without the recorder in LD_AUDIT"), row
    assert any("started without the recorder" in n for n in report["notes"])
    rules = [f["rule"] for f in report["findings"]]
    assert "missing-cuGetExportTable" in rules  # the same diagnosis, from breakpoints
    assert {l["found_by"] for l in report["lookups"]} <= {"return", "symbol table"}


def test_a_discovery_child_killed_in_cuinit_is_killed_there_under_the_tool(stack, tmp_path):
    """The child hangs in cuInit; the parent gives it 2 s. Recorded in the child, the calls that
    never returned are read after its death (the ring is a file)."""
    env = probe_env(stack, SHIM_BUILD, CUDASHIM_HANG="cuInit")
    parent = [sys.executable, ROOT / "tests" / "programs" / "pyparent.py", "--kill-after", "2", BUILD / "probe"]
    proc, report = run_report(tmp_path, parent, env, extra=["--timeout", "60"])
    assert report is not None, proc.stderr
    (kill,) = [f for f in report["findings"] if f["rule"] == "killed-by-signal"]
    # seen at the parent's kill(): the capture window of a single-threaded child is opened with a
    # real stop when other processes run, so the parent's system calls are watched too
    assert "by pid" in kill["summary"] and "its parent" in kill["summary"] and "while in cuInit" in kill["summary"], kill
    # the call in progress, recorded at its entry inside the child, read from its ring after its death
    assert any("cuInit()" in e and "never returned" in e for e in kill["evidence"]), kill["evidence"]
    (init,) = [c for c in report["calls"] if c["function"] == "cuInit" and c["pid"] == kill["pid"]]
    assert not init["returned"]
    child = [o for o in report["observed"] if o["pid"] == kill["pid"]]
    assert child and child[0]["how"] == "in-process"
    # gdb lands the SIGKILL itself (capture.land_kill): the parent reaps what it would without the tool
    assert "pyparent: child exited with -9" in proc.stdout, proc.stdout[-2000:]
    (end,) = [p for p in report["processes"] if p["pid"] == kill["pid"] and p["what"] == "exit"]
    assert end["signal"] == "SIGKILL" and end["exit_code"] is None, end


def test_no_ring_is_left_behind_by_a_run_in_gdb(stack, probe, tmp_path):
    """A batch gdb quits without a disarm: the recorder's folder goes at gdb's exit."""
    env = probe_env(stack, SEED, TMPDIR=tmp_path)
    proc = run_gdb(["catch-init-error", "cuda-run"], args=[probe], env=env)
    assert "missing-cuGetExportTable" in proc.stdout or "cuGetExportTable" in proc.stdout, proc.stdout[-2000:]
    assert not [p for p in os.listdir(tmp_path) if p.startswith("gdb-cudashim")], os.listdir(tmp_path)


def test_recorder_off_is_the_breakpoints_way(stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SEED, GDB_CUDASHIM_NO_RECORDER=1))
    assert proc.returncode == 1
    (row,) = observed(report)
    assert row["how"] == "no in-process recorder" and row["stops"] > 400, row


def test_a_null_from_an_interposers_hook_is_the_hooks_not_the_drivers(stack, probe, tmp_path):
    """The interposer's dlsym hook says NULL for cuGetExportTable although libcuda.so.1 exports it:
    the finding names the hook, not the driver, and never calls RTLD_DEFAULT a library (#18)."""
    from conftest import build_lib

    hook = build_lib(ROOT / "tests" / "programs" / "lib" / "interposer.c", tmp_path / "hide" / "libvgpu.so",
                     "-Wl,-soname,libvgpu.so", "-DHIDE_EXPORT_TABLE", "-Wno-nonnull-compare")
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SHIM_BUILD, LD_PRELOAD=hook))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (f,) = [f for f in report["findings"] if f["rule"] == "missing-cuGetExportTable"]
    assert f["summary"].startswith("libvgpu.so's dlsym hook answered NULL for cuGetExportTable, though libcuda.so.1 "
                                   "exports cuGetExportTable"), f["summary"]
    assert "libvgpu.so's dlsym hook" in f["fix"] and "does not export" not in f["summary"]
    (v2,) = [f for f in report["findings"] if f["rule"] == "missing-cuGetProcAddress_v2"]
    assert v2["summary"].startswith("libvgpu.so's dlsym hook answered NULL for cuGetProcAddress_v2, though"), v2
    assert "found (libvgpu.so's dlsym hook)" in proc.stdout or "NULL (libvgpu.so's dlsym hook)" in proc.stdout


def test_the_kill_is_attributed_in_gdb_as_in_the_cli(stack, each_gdb, tmp_path):
    """catch-init-error + cuda-run in plain gdb (the batch recipe) names the killer, the time and
    where the child was, as `gdb-cudashim run` does (#21 section 4)."""
    env = probe_env(stack, SHIM_BUILD, CUDASHIM_HANG="cuInit")
    proc = subprocess.run([each_gdb, "-batch", "-x", str(ROOT / "commands" / "catch-init-error.gdb"), "--args",
                           sys.executable, str(ROOT / "tests" / "programs" / "pyparent.py"), "--kill-after", "2",
                           str(BUILD / "probe")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert "was killed with SIGKILL by pid" in out and "its parent) after 2." in out and "while in cuInit" in out, \
        out[-3000:] + proc.stderr[-2000:]
