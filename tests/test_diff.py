"""gdb-cudashim diff and run --compare: real runs of the probe under the bundled shim (the
reference) and its defect variants, and the alignment and noise rules on small hand-made reports."""
import json

import pytest

from conftest import BUILD, SHIM_BUILD, build_variant, env_with, run_cli, run_report
from gdb_cudashim.core import diff
from gdb_cudashim.core.report import SCHEMA

SEED = SHIM_BUILD / "variants" / "seed"


def probe_env(stack, libdir, **extra):
    return env_with(LD_LIBRARY_PATH=libdir, GGML_CUDA_LIB=stack.ggml_cuda, **extra)


def recorded(tmp_path_factory, name, program_args, env):
    """A real run --json report, written where diff can read it."""
    d = tmp_path_factory.mktemp(name)
    proc, report = run_report(d, program_args, env)
    assert report is not None, proc.stderr
    assert report["schema"] == SCHEMA
    return d / "report.json", report


@pytest.fixture(scope="module")
def reference(stack, probe, tmp_path_factory):
    """The bundled shim, faking the driver: what every defect variant is compared with."""
    return recorded(tmp_path_factory, "ref", [probe], probe_env(stack, SHIM_BUILD))


def first(ref_path, run_path):
    proc = run_cli(["diff", "--json", str(ref_path), str(run_path)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return json.loads(proc.stdout)["divergences"][0], proc


@pytest.mark.parametrize("variant,extra,subject,ref,run", [
    ("seed", {}, "dlsym(libcuda.so.1, 'cuGetProcAddress_v2')", "found", "NULL"),
    ("nov2", {}, "dlsym(libcuda.so.1, 'cuGetProcAddress_v2')", "found", "NULL"),
    ("bundled", {"CUDASHIM_INIT_RESULT": 100}, "cuInit(flags=0)", "0 CUDA_SUCCESS", "100 CUDA_ERROR_NO_DEVICE"),
    ("bundled", {"CUDASHIM_DRIVER_VERSION": 11080}, "cuDriverGetVersion()",
     "driverVersion 12090 (12.9)", "driverVersion 11080 (11.8)"),
])
def test_each_defect_variant_gives_its_first_divergence(stack, probe, tmp_path_factory, variant_dir, reference,
                                                        variant, extra, subject, ref, run):
    libdir = {"seed": SEED, "bundled": SHIM_BUILD}.get(variant)
    if variant == "nov2":
        libdir = build_variant(stack, variant_dir, "diff-nov2", hide=["cuGetProcAddress_v2"]).parent
    run_path, _ = recorded(tmp_path_factory, variant, [probe], probe_env(stack, libdir, **extra))
    d, proc = first(reference[0], run_path)
    assert (d["role"], d["subject"], d["ref"], d["run"]) == ("probe", subject, ref, run)
    text = run_cli(["diff", str(reference[0]), str(run_path)]).stdout
    assert f"First divergence: [probe] {subject}: REF {ref}, RUN {run}" in text


def test_what_follows_the_first_divergence(stack, probe, tmp_path_factory, reference):
    """After the seed's missing cuGetProcAddress_v2: the calls it never got, cudart's plain
    dlsym fallback folded into one row, the export tables never asked for, the error text."""
    run_path, _ = recorded(tmp_path_factory, "seed-rest", [probe], probe_env(stack, SEED))
    proc = run_cli(["diff", "--json", str(reference[0]), str(run_path)])
    ds = json.loads(proc.stdout)["divergences"]
    lookups = next(d for d in ds if d["event"] == "lookup" and d["kind"] == "only-in-run")
    assert lookups["count"] > 400  # ~420 dlsyms, one row
    assert any(d["subject"] == "cuGetExportTable(CUDART_INTERFACE)" and d["kind"] == "only-in-ref" for d in ds)
    count = next(d for d in ds if d["subject"] == "cudaGetDeviceCount()")
    assert (count["ref"], count["run"]) == ("500 cudaErrorSymbolNotFound", "36 cudaErrorCallRequiresNewerDriver")
    assert ds[-1]["event"] == "error" and ds[-1]["run"].endswith("API call is not supported in the installed CUDA driver")
    # in the order they happened: cudart's result comes after the driver calls it wrapped
    assert ds.index(count) > ds.index(lookups)


def test_a_report_against_itself_and_forwarding_are_the_same(stack, probe, tmp_path_factory, reference):
    proc = run_cli(["diff", str(reference[0]), str(reference[0])])
    assert proc.returncode == 0 and "No difference" in proc.stdout, proc.stdout + proc.stderr
    # the bundled shim forwarding to a copy of itself: other pids, pointers and paths, the shim's
    # own calls into the driver behind it; what cudart and ggml saw is the same
    real = tmp_path_factory.mktemp("driver") / "libcuda.so.1"
    real.write_bytes((SHIM_BUILD / "libcuda.so.1").read_bytes())
    run_path, run = recorded(tmp_path_factory, "forward", [probe],
                             probe_env(stack, SHIM_BUILD, CUDASHIM_MODE="forward", CUDASHIM_REAL_DRIVER=real))
    assert any(c["library"] == str(real) for c in run["calls"])  # the forwarded calls are in the report
    proc = run_cli(["diff", str(reference[0]), str(run_path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_reports_of_different_programs_or_schemas_are_refused(stack, probe, tmp_path_factory, reference, tmp_path):
    other, _ = recorded(tmp_path_factory, "spawner", [BUILD / "spawner", probe, "--exit-count"],
                        probe_env(stack, SHIM_BUILD))
    proc = run_cli(["diff", str(reference[0]), str(other)])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "gdb-cudashim: not the same program: REF ran probe, RUN ran spawner; diff compares two " \
                          "runs of one program\n"
    report = json.loads(reference[0].read_text())
    cases = {"old.json": {k: v for k, v in report.items() if k != "schema"}, "future.json": dict(report, schema=4)}
    for name, content in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, words in [("old.json", "has no schema version"), ("future.json", "is report schema 4; this gdb-cudashim "
                        "reads schemas 1, 2 and 3"), ("text.json", "is not JSON"), ("list.json", "is not a gdb-cudashim run --json"),
                        ("missing.json", "cannot read RUN")]:
        proc = run_cli(["diff", str(reference[0]), str(tmp_path / name)])
        assert proc.returncode == 2 and words in proc.stderr, (name, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


def test_run_compare_shows_the_difference_and_uses_the_reference_as_evidence(stack, probe, reference, tmp_path):
    proc = run_cli(["run", "--color", "never", "--json", str(tmp_path / "r.json"), "--compare", str(reference[0]),
                    "--", str(probe)], env=probe_env(stack, SHIM_BUILD, CUDASHIM_INIT_RESULT=100))
    assert proc.returncode == 1, proc.stderr
    assert "First divergence: [probe] cuInit(flags=0): REF 0 CUDA_SUCCESS, RUN 100 CUDA_ERROR_NO_DEVICE" in proc.stdout
    assert proc.stdout.index("Diagnosis") < proc.stdout.index("Differences from the reference")
    finding = next(f for f in json.loads((tmp_path / "r.json").read_text())["findings"]
                   if f["rule"] == "driver-error-passed-through")
    assert "the reference's cuInit(flags=0) gave 0 CUDA_SUCCESS here; your shim's gave 100 CUDA_ERROR_NO_DEVICE" \
        in finding["evidence"]
    # a REF diff cannot read is refused before anything runs
    (tmp_path / "bad.json").write_text("{}")
    proc = run_cli(["run", "--compare", str(tmp_path / "bad.json"), "--", str(probe)], env=probe_env(stack, SEED))
    assert proc.returncode == 2 and "is not a gdb-cudashim run --json report" in proc.stderr
    assert "CUDA calls" not in proc.stdout


# -- the rules, on hand-made reports ----------------------------------------------------------

def test_a_fake_runtime_in_place_of_nvidias_is_the_first_divergence(stack, probe, tmp_path_factory, reference):
    """The reference ran NVIDIA's libcudart.so.12; the run a fake one preloaded: that comes first,
    before any of the calls that differ because of it. Where the files lie does not count."""
    from conftest import FAKERT

    run_path, _ = recorded(tmp_path_factory, "fakert", [probe], probe_env(stack, SHIM_BUILD, LD_PRELOAD=FAKERT))
    d, proc = first(reference[0], run_path)
    assert (d["event"], d["subject"]) == ("library", "the CUDA runtime"), d
    assert d["ref"].startswith("NVIDIA runtime, lib/libcudart.so.12 (DT_NEEDED of libggml-cuda")
    assert d["run"] == "runtime replacement, fakert/libcudart.so.12 (LD_PRELOAD)"
    same = run_cli(["diff", str(run_path), str(run_path)])
    assert same.returncode == 0, same.stdout


def report(processes, calls=(), lookups=(), loads=(), errors=()):
    return {"schema": SCHEMA, "meta": {}, "processes": processes, "calls": list(calls), "lookups": list(lookups),
            "loads": list(loads), "errors": list(errors), "findings": []}


def start(pid, program, parent=None, seq=0):
    return {"what": "start", "pid": pid, "detail": program, "parent": parent, "seq": seq}


def call(pid, seq, function, result=0, library="/opt/a/libcuda.so.1", caller="/opt/a/libcudart.so.12", **args):
    return {"seq": seq, "pid": pid, "tid": pid, "function": function, "library": library, "caller": caller,
            "args": args, "result": result, "returned": True}


def test_roles_come_from_the_process_tree_and_program_names_not_pids():
    a = report([start(10, "/x/server"), start(11, "/x/server", 10), {"what": "exec", "pid": 11, "detail": "/x/runner"},
                start(12, "/x/server", 10)])
    b = report([start(90, "/y/server"), start(95, "/y/server", 90), start(91, "/y/server", 90),
                {"what": "exec", "pid": 91, "detail": "/y/runner"}])
    assert sorted(r for r, _ in diff.roles_of(a).values()) == ["server", "server > runner", "server > server"]
    assert sorted(r for r, _ in diff.roles_of(b).values()) == sorted(r for r, _ in diff.roles_of(a).values())
    c = report([start(1, "/p"), start(2, "/p", 1), start(3, "/p", 1)])
    assert [r for r, _ in diff.roles_of(c).values()] == ["p", "p > p", "p > p #2"]


def test_noise_never_differs():
    ref = report([start(10, "/a/probe")],
                 calls=[call(10, 5, "cuGetProcAddress_v2", symbol="cuInit", cudaVersion=2000, flags=0, pfn=0x7f001234),
                        call(10, 6, "cuGetExportTable", pExportTableId="6bd5fb6c-5bf4-e74a-8987-d93912fd9df9",
                             ppExportTable=0x7f00aaaa)],
                 loads=[{"seq": 2, "pid": 10, "path": "libcuda.so.1", "ok": True, "resolved": "/usr/lib/libcuda.so.1"}],
                 errors=[{"seq": 9, "pid": 10, "tid": 10, "fd": 2, "text": "0.00.023.537 E failed in /a/b/x.so at 0x7fff12345678\n"}])
    run = report([start(77, "/home/me/probe")],
                 calls=[call(77, 50, "cuGetProcAddress_v2", symbol="cuInit", cudaVersion=2000, flags=0, pfn=0x5555,
                             library="/shim/libcuda.so.1", caller="/venv/libcudart.so.12"),
                        call(77, 51, "cuInit", library="/usr/lib/libcuda.so.535.1", caller="/shim/libcuda.so.1", flags=0),
                        call(77, 52, "cuGetExportTable", pExportTableId="6bd5fb6c-5bf4-e74a-8987-d93912fd9df9",
                             ppExportTable=0x1)],
                 loads=[{"seq": 3, "pid": 77, "path": "libcuda.so.1", "ok": True, "resolved": "/shim/libcuda.so.1"}],
                 errors=[{"seq": 60, "pid": 77, "tid": 77, "fd": 2, "text": "1.20.000.001 E failed in /c/x.so at 0x7ffe00000000\n"}])
    assert diff.compare(ref, run) == []


def test_results_out_values_and_presence_are_decoded():
    table = "6bd5fb6c-5bf4-e74a-8987-d93912fd9df9"
    ref = report([start(1, "/p")], calls=[
        call(1, 1, "cuDriverGetVersion", driverVersion=12090), call(1, 2, "cuInit", flags=0),
        call(1, 3, "cuGetExportTable", pExportTableId=table, ppExportTable=0x7f0000001000),
        call(1, 4, "cuDeviceGetCount", count=1)])
    run = report([start(2, "/p")], calls=[
        call(2, 1, "cuDriverGetVersion", driverVersion=12090), call(2, 2, "cuInit", flags=0),
        call(2, 3, "cuGetExportTable", result=500, pExportTableId=table, ppExportTable=0x7f0000001000),
        call(2, 4, "cuDeviceGetCount", count=0), call(2, 5, "cuDeviceGet", ordinal=0, device=0)])
    ds = diff.compare(ref, run)
    assert [(d.kind, d.subject, d.ref, d.run) for d in ds] == [
        ("differs", "cuGetExportTable(CUDART_INTERFACE)", "0 CUDA_SUCCESS", "500 CUDA_ERROR_NOT_FOUND"),
        ("differs", "cuDeviceGetCount()", "count 1", "count 0"),
        ("only-in-run", "cuDeviceGet(ordinal=0)", None, "0 CUDA_SUCCESS; device 0"),
    ]
    findings = [{"summary": "cuGetExportTable(CUDART_INTERFACE) failed in libcuda.so.1", "evidence": []}]
    diff.reference_evidence(findings, ds)
    assert findings[0]["evidence"] == ["the reference returned a table for CUDART_INTERFACE here; your shim returned 500"]


def test_a_missing_child_and_a_different_exit_are_divergences():
    ref = report([start(1, "/srv"), start(2, "/runner", 1), {"what": "exit", "pid": 2, "exit_code": 0, "seq": 8},
                  {"what": "exit", "pid": 1, "exit_code": 0, "seq": 9}])
    run = report([start(5, "/srv"), {"what": "exit", "pid": 5, "signal": "SIGSEGV", "seq": 4}])
    ds = diff.compare(ref, run)
    assert [(d.kind, d.subject, d.ref, d.run) for d in ds] == [
        ("differs", "process srv ended", "exit 0", "SIGSEGV"), ("only-in-ref", "process srv > runner", "started", None)]


def test_folding_keeps_the_first_and_counts_the_rest():
    ref = report([start(1, "/p")])
    run = report([start(1, "/p")], lookups=[
        {"seq": i, "pid": 1, "tid": 1, "how": "dlsym", "symbol": f"cuF{i}", "handle_library": "/x/libcuda.so.1",
         "found": True, "caller": "/x/libcudart.so.12"} for i in range(10)])
    (d,) = diff.compare(ref, run)
    assert (d.count, d.subject, d.more[:2]) == (10, "dlsym(libcuda.so.1, 'cuF0')", ["'cuF1'", "'cuF2'"])


@pytest.mark.parametrize("bad,words", [
    ({"calls": []}, "not a gdb-cudashim run --json report"),
    (report([]) | {"schema": None}, "has no schema version"),
    (report([]) | {"schema": "1"}, "is report schema '1'"),
    (report([]) | {"calls": [1, 2]}, "calls is malformed"),
])
def test_check_refuses_in_one_line(bad, words):
    with pytest.raises(diff.ReportError, match=words):
        diff.check(bad, "REF x.json")


def test_walls_and_the_findings_tested_beside_them_are_compared_by_verdict():
    """run --what-if's two lists: the walls place by place (a chain), the findings tested beside them
    by finding (a set: one more in front shifts nothing), after the walls; a schema 2 report (no
    "tested") compares its walls only."""
    wall = {"wall": 1, "rule": "driver-version", "summary": "11.8", "verdict": "proven", "why": "gone",
            "simulation": ["cuda-patch", "cuDriverGetVersion"]}
    test = {"test": 1, "rule": "missing-cuGetProcAddress_v2", "summary": "no v2", "verdict": "not the cause",
            "why": "the same", "simulation": ["cuda-patch", "dlsym"], "on_walls": [1]}
    ref = report([start(1, "/p")]) | {"walls": [wall], "tested": [test]}
    run = report([start(2, "/p")]) | {"walls": [wall], "tested": [test | {"verdict": "proven"}]}
    diff.check(ref, "REF")
    (d,) = diff.compare(ref, run)
    assert (d.kind, d.event, d.subject, d.ref, d.run) == (
        "differs", "wall", "tested: missing-cuGetProcAddress_v2", "missing-cuGetProcAddress_v2: not the cause",
        "missing-cuGetProcAddress_v2: proven")
    other = test | {"test": 1, "rule": "device-uuid-zero", "summary": "zero"}  # one more in front: no shift
    run = report([start(2, "/p")]) | {"walls": [wall], "tested": [other, test]}
    (d,) = diff.compare(ref, run)
    assert (d.kind, d.subject, d.ref, d.run) == ("only-in-run", "tested: device-uuid-zero", None,
                                                 "device-uuid-zero: not the cause")
    old = report([start(3, "/p")]) | {"schema": 2, "walls": [wall]}
    assert diff.compare(old, run) == []
    with pytest.raises(diff.ReportError, match="tested is malformed at tested\\[0\\]"):
        diff.check(report([]) | {"tested": [{"test": "1"}]}, "RUN")
