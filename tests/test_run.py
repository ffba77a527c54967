"""gdb-cudashim run on the real stack: real gdb, NVIDIA's libcudart 12.9, a real libggml-cuda,
the bundled shim and defect variants of it, real child processes."""
import json
import os
import subprocess

import pytest

from conftest import BUILD, ROOT, SHIM_BUILD, build_variant, env_with, gdb_path, run_cli, run_gdb, run_report

SEED = SHIM_BUILD / "variants" / "seed"


def rules_of(report):
    return [f["rule"] for f in report["findings"]]


def probe_env(stack, libdir, **extra):
    return env_with(LD_LIBRARY_PATH=libdir, GGML_CUDA_LIB=stack.ggml_cuda, **extra)


def test_seed_case_full_message_and_cause(each_gdb, stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SEED))
    assert proc.returncode == 1, proc.stderr
    (err,) = report["errors"]
    assert err["text"] == ("ggml_cuda_init: failed to initialize CUDA: "
                           "API call is not supported in the installed CUDA driver\n")
    assert len(err["text"].encode()) == 98 and err["fd"] == 2
    assert any("ggml_cuda_init" in f["function"] for f in err["backtrace"])
    assert "libggml-base" in err["origin"]
    assert rules_of(report) == ["missing-cuGetExportTable", "missing-cuGetProcAddress_v2"]
    missing_v2 = [l for l in report["lookups"] if l["symbol"] == "cuGetProcAddress_v2"]
    assert missing_v2 and all(l["found"] is False for l in missing_v2)
    assert missing_v2[0]["caller"].endswith("libcudart.so.12")
    assert len(report["lookups"]) > 400  # cudart's plain-dlsym fallback
    calls = {c["function"]: c for c in report["calls"]}
    assert calls["cuInit"]["result"] == 0 and calls["cuDriverGetVersion"]["args"]["driverVersion"] == 12090
    assert calls["cudaGetDeviceCount"]["result"] == 36
    assert "cuDeviceGetCount" not in calls  # never reached, as the seeds saw
    assert calls["cuInit"]["library"].endswith("libcuda.so.1")
    assert report["stops"] > 0 and report["hang"] is None
    # the readable report names the fix
    assert "export cuGetProcAddress_v2" in proc.stdout and "98 bytes" in proc.stdout
    assert "cuBLAS stub called" not in proc.stdout + proc.stderr


def test_fake_shim_fails_at_the_private_export_table(stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SHIM_BUILD))
    assert proc.returncode == 1
    assert "named symbol not found" in report["errors"][0]["text"]
    assert "export-table-failed" in rules_of(report)
    tables = [c for c in report["calls"] if c["function"] == "cuGetExportTable"]
    assert any(c["args"]["pExportTableId"].startswith("6bd5fb6c") and c["result"] == 500 for c in tables)
    lookups = [c for c in report["calls"] if c["function"] == "cuGetProcAddress_v2"]
    assert len(lookups) > 300 and any(c["args"]["symbol"] == "cuInit" for c in lookups)


def test_cuinit_error_traced_back_to_the_call(stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SHIM_BUILD, CUDASHIM_INIT_RESULT=100))
    assert proc.returncode == 1
    assert report["errors"][0]["text"].endswith("no CUDA-capable device is detected\n")
    f = next(f for f in report["findings"] if f["rule"] == "driver-error-passed-through")
    assert "cuInit" in f["summary"] and "CUDA_ERROR_NO_DEVICE" in f["summary"]
    assert "unset in the process" in f["fix"]


def test_empty_cuda_visible_devices_is_named_in_the_fix(stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SHIM_BUILD, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 1
    f = next(f for f in report["findings"] if f["rule"] == "driver-error-passed-through")
    assert "CUDA_VISIBLE_DEVICES=''" in f["fix"]
    cuinit = next(c for c in report["calls"] if c["function"] == "cuInit")
    assert cuinit["result"] == 100  # the shim honours CUDA_VISIBLE_DEVICES, as the driver does


def test_old_driver_version(stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SHIM_BUILD, CUDASHIM_DRIVER_VERSION=11080))
    assert proc.returncode == 1
    assert "insufficient for CUDA runtime version" in report["errors"][0]["text"]
    f = next(f for f in report["findings"] if f["rule"] == "driver-version")
    assert "11080" in f["summary"]
    assert not any(c["function"] == "cuInit" for c in report["calls"])  # cudart stops before cuInit


def test_driver_not_found(stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], env_with(GGML_CUDA_LIB=stack.ggml_cuda))
    assert proc.returncode == 1
    rules = rules_of(report)
    assert "backend-load-failed" in rules  # libggml-cuda NEEDs libcuda.so.1 directly
    load = next(l for l in report["loads"] if "ggml-cuda" in l["path"])
    assert load["ok"] is False and "libcuda.so.1" in load["error"]


def test_shim_missing_a_vmm_symbol(stack, probe, tmp_path, variant_dir):
    lib = build_variant(stack, variant_dir, "novmm", hide=["cuMemCreate"])
    proc, report = run_report(tmp_path, [probe], probe_env(stack, lib.parent))
    assert proc.returncode == 1
    f = next(f for f in report["findings"] if f["rule"] == "backend-load-failed")
    assert "cuMemCreate" in f["summary"] and "export cuMemCreate" in f["fix"]
    assert any("undefined symbol: cuMemCreate" in e for e in f["evidence"])
    assert any("load_backend: failed to load" in e["text"] for e in report["errors"])


def test_preload_soname_trap_two_drivers(stack, probe, tmp_path, variant_dir):
    preloaded = build_variant(stack, variant_dir, "preload", soname="libcudashim.so")
    env = probe_env(stack, SEED, LD_PRELOAD=preloaded)
    proc, report = run_report(tmp_path, [probe], env)
    assert proc.returncode == 1
    f = next(f for f in report["findings"] if f["rule"] == "two-drivers")
    assert any("libcudashim.so" in e for e in f["evidence"]) and any("libcuda.so.1" in e for e in f["evidence"])


def test_child_with_stderr_to_devnull(each_gdb, stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [BUILD / "spawner", probe, "--exit-count"], probe_env(stack, SEED))
    assert proc.returncode == 1
    assert 'library=cpu' in proc.stdout and 'total_vram="0 B"' in proc.stdout
    starts = [p for p in report["processes"] if p["what"] == "start"]
    assert len(starts) == 2
    parent, child = starts
    assert child["parent"] == parent["pid"]
    (err,) = report["errors"]
    assert err["pid"] == child["pid"] and "API call is not supported" in err["text"]
    assert "missing-cuGetExportTable" in rules_of(report)


def test_raw_syscall_writer(stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe, "--raw-log"], probe_env(stack, SEED))
    assert proc.returncode == 1
    (err,) = report["errors"]
    assert "API call is not supported" in err["text"]
    assert err["backtrace"][0]["function"] in ("raw_write", "raw_log")
    assert not any("libc.so" in (f["library"] or "") for f in err["backtrace"][:1])


def test_hang_inside_the_shim(each_gdb, stack, probe, tmp_path):
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SHIM_BUILD, CUDASHIM_HANG="cuInit"),
                              extra=["--timeout", "4"])
    assert proc.returncode == 3, proc.stdout + proc.stderr
    hang = report["hang"]
    waiting = [t for t in hang["threads"] if t["waiting_in"]]
    assert waiting and "cuInit" in waiting[0]["waiting_in"] and "cudashim.c" in waiting[0]["waiting_in"]
    assert "shim_wait_forever" in [f["function"] for f in waiting[0]["frames"]]


def test_no_cuda_at_all_is_nothing_to_diagnose(tmp_path):
    """Not a clean bill (#21): a run that loaded no CUDA library says so, and exits 4."""
    proc, report = run_report(tmp_path, ["/bin/sh", "-c", "echo hello; echo CUDA-free >&2"], env_with())
    assert proc.returncode == 4, proc.stdout
    assert [f["rule"] for f in report["findings"]] == ["no-cuda-loaded"]
    assert report["errors"] == [] and report["calls"] == []
    assert "No CUDA init failure seen" not in proc.stdout and "Nothing to diagnose" in proc.stdout


def test_recipe_batch_run(each_gdb, stack, probe):
    env = probe_env(stack, SEED)
    proc = subprocess.run([gdb_path(), "-batch", "-x", "commands/catch-init-error.gdb", "--args", str(probe)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "does not export cuGetProcAddress_v2" in proc.stdout
    # from another directory, the recipe finds the package by its own path
    proc = subprocess.run([gdb_path(), "-batch", "-x", str(ROOT / "commands/catch-init-error.gdb"), "--args", "/bin/true"],
                          cwd="/", env=env_with(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # /bin/true loads no CUDA: nothing to diagnose


@pytest.mark.parametrize("args,words", [
    (["run", "--", "/no/such/program"], "no such program"),
    (["run", "--pattern", "(", "--", "/bin/true"], "bad --pattern"),
    (["run", "--json", "", "--", "/bin/true"], "--json needs a file name"),
    (["run", "--json", "/proc/x/y.json", "--", "/bin/true"], "cannot write --json"),
    (["run"], "no program given"),
    (["run", "--timeout", "-1", "--", "/bin/true"], "--timeout"),
])
def test_bad_input_is_one_line(args, words):
    proc = run_cli(args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr


def test_unusable_tmpdir_is_one_line():
    proc = run_cli(["run", "--", "/bin/true"], env=env_with(TMPDIR="/no/such/dir"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "gdb-cudashim: cannot make a temporary directory in /no/such/dir (TMPDIR): No such file or directory"]


def test_program_killed_mid_trace(tmp_path):
    """A process that dies by a signal says so, in the table and the JSON, and a crash
    before CUDA init is a finding, not "No CUDA init failure seen"."""
    proc, report = run_report(tmp_path, ["/bin/sh", "-c", "kill -9 $$"], env_with())
    assert proc.returncode == 1 and report is not None, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (end,) = [p for p in report["processes"] if p["what"] == "exit"]
    assert end["signal"] == "SIGKILL" and end["exit_code"] is None
    (finding,) = report["findings"]
    assert finding["rule"] == "killed-by-signal" and "before CUDA init" in finding["summary"]
    assert "No CUDA init failure seen" not in proc.stdout and "SIGKILL" in proc.stdout


def test_forward_mode_passes_everything_through(stack, probe, tmp_path):
    """No GPU here: a second copy of the fake shim stands in for the real driver, so the real
    cudart goes through the forwarding shim's cuGetProcAddress_v2 and cuGetExportTable."""
    real = tmp_path / "driver" / "libcuda.so.1"
    real.parent.mkdir()
    real.write_bytes((SHIM_BUILD / "libcuda.so.1").read_bytes())
    env = probe_env(stack, SHIM_BUILD, CUDASHIM_MODE="forward", CUDASHIM_REAL_DRIVER=real)
    proc, report = run_report(tmp_path, [probe], env)
    assert proc.returncode == 1
    assert "named symbol not found" in report["errors"][0]["text"]  # the stand-in's answer, passed through
    forward, driver = str(SHIM_BUILD / "libcuda.so.1"), str(real)

    def landed(fn, lib):
        return [c for c in report["calls"] if c["function"] == fn and os.path.realpath(c["library"]) == lib]

    # cudart -> forwarding shim -> stand-in driver, for the init calls and the private table
    for fn in ("cuInit", "cuDriverGetVersion", "cuGetExportTable", "cuGetProcAddress_v2"):
        assert landed(fn, forward), fn
        assert landed(fn, driver), fn
        assert all(os.path.realpath(c["caller"]) == forward for c in landed(fn, driver)), fn
    table = [c for c in landed("cuGetExportTable", driver) if c["args"]["pExportTableId"].startswith("6bd5fb6c")]
    assert table and table[0]["result"] == 500
    load = next(l for l in report["loads"] if l["path"] == driver)
    assert load["ok"] and os.path.realpath(load["caller"]) == forward
    rules = rules_of(report)
    assert "export-table-failed" in rules and "two-drivers" not in rules


def test_forward_mode_asks_the_driver_for_the_v2_entry_points(tmp_path):
    """cuda.h renames cuDeviceTotalMem, cuMemGetInfo and cuDevicePrimaryCtxRelease to their _v2
    entry points; forwarding must ask the real driver for those, not the old 32-bit ones (on an
    H100 the old name reported 81079 MiB as 4095). The stand-in driver exports only _v2 names."""
    real = tmp_path / "driver" / "libcuda.so.1"
    real.parent.mkdir()
    real.write_bytes((SHIM_BUILD / "libcuda.so.1").read_bytes())
    env = env_with(CUDASHIM_MODE="forward", CUDASHIM_REAL_DRIVER=real, CUDASHIM_VRAM_MIB=81079)
    out = subprocess.run([str(BUILD / "forward_check"), str(SHIM_BUILD / "libcuda.so.1")], env=env,
                         capture_output=True, text=True, check=True).stdout
    results = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert results["cuDeviceTotalMem_v2"] == ["0", str(81079 << 20)], out
    assert results["cuMemGetInfo_v2"] == ["0", str(81079 << 20)], out
    assert results["cuDevicePrimaryCtxRelease_v2"] == ["0"], out


def test_attach_to_a_running_parent_and_detach(each_gdb, stack, probe, tmp_path):
    """Like ollama under systemd: a server already running spawns a runner later."""
    env = probe_env(stack, SEED, SPAWNER_DELAY=3, SPAWNER_LINGER=30)
    server = subprocess.Popen([str(BUILD / "spawner"), str(probe), "--exit-count"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        proc = run_cli(["attach", str(server.pid), "--timeout", "8", "--json", str(tmp_path / "a.json")], env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        import json
        report = json.loads((tmp_path / "a.json").read_text())
        child = [p for p in report["processes"] if p["what"] == "start" and p["parent"] == server.pid]
        assert child and report["errors"] and report["errors"][0]["pid"] == child[0]["pid"]
        assert "missing-cuGetExportTable" in rules_of(report)
        assert any(f"detached from {server.pid}" in n for n in report["notes"])
        # left running, untraced, unpatched
        assert server.poll() is None
        status = open(f"/proc/{server.pid}/status").read()
        assert "TracerPid:\t0" in status
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("args,words", [
    (["attach", "999999999"], "no process 999999999"),
    (["attach", "no-such-program-name"], "no process named"),
    (["attach", "1", "--timeout", "0"], "--timeout"),
])
def test_attach_bad_input(args, words):
    proc = run_cli(args)
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_attach_name_matching_several_processes_without_a_tty():
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        proc = run_cli(["attach", "sleep"])
        assert proc.returncode == 2
        assert "processes match 'sleep'" in proc.stderr and str(sleepers[0].pid) in proc.stderr
    finally:
        for s in sleepers:
            s.kill()


def test_attach_checks_json_before_attaching():
    proc = run_cli(["attach", "1", "--json", "/proc/x/a.json"])
    assert proc.returncode == 2 and "cannot write --json" in proc.stderr


def _two_runs(tmp_path, probe, env):
    """The same program run twice: the default, and with every lookup watched to its return."""
    reports = []
    for name, extra in (("fast", []), ("slow", ["--every-return"])):
        (tmp_path / name).mkdir()
        proc, report = run_report(tmp_path / name, [probe], env, extra=extra)
        assert report is not None, proc.stderr
        reports.append(report)
    return reports


def _lookup_facts(report):
    return [(l["symbol"], l["handle_library"], l["found"], l["provider"], l["caller"]) for l in report["lookups"]]


def test_lookups_answered_from_symbol_tables_match_watched_returns(stack, probe, tmp_path):
    """The default answers most of cudart's ~420 fallback lookups from the driver's symbol tables
    (one stop each); --every-return watches every return (two stops and a finish breakpoint each).
    Both must say the same of every lookup, and the default must cost about half the stops."""
    # the breakpoints' way (a process that cannot record in-process: attached, setuid, static)
    fast, slow = _two_runs(tmp_path, probe, probe_env(stack, SEED, GDB_CUDASHIM_NO_RECORDER=1))
    assert _lookup_facts(fast) == _lookup_facts(slow)
    by = {}
    for l in fast["lookups"]:
        by.setdefault(l["found_by"], []).append(l)
    assert len(by["symbol table"]) > 400 and {l["found_by"] for l in slow["lookups"]} == {"return"}
    # the lookups the findings rest on are always watched
    assert all(l["found_by"] == "return" for l in fast["lookups"]
               if l["symbol"] in ("cuGetProcAddress_v2", "cuGetExportTable", "cuInit"))
    assert rules_of(fast) == rules_of(slow) == ["missing-cuGetExportTable", "missing-cuGetProcAddress_v2"]
    assert fast["stops"] < 0.6 * slow["stops"] and not fast["notes"]


def test_interposed_dlsym_is_always_watched(stack, probe, tmp_path):
    """A preload that interposes dlsym (HAMi-core style) answers lookups the driver cannot:
    those must be watched at their return, not answered from the driver's symbol tables."""
    from conftest import build_lib

    hook = build_lib(ROOT / "tests" / "programs" / "lib" / "dlsym_hook.c", tmp_path / "hook" / "dlsym_hook.so")
    fast, slow = _two_runs(tmp_path, probe, probe_env(stack, SEED, LD_PRELOAD=hook, GDB_CUDASHIM_NO_RECORDER=1))
    assert _lookup_facts(fast) == _lookup_facts(slow)
    hooked = [l for l in fast["lookups"] if l["symbol"].startswith("cuMemPool") and l["caller"].endswith("libcudart.so.12")]
    assert hooked and all(l["found"] and l["found_by"] == "return" and l["provider"].endswith("dlsym_hook.so")
                          for l in hooked)
    # the interposer's own answers are expected to differ from the driver's tables: no note, and the
    # C library's dlsym beneath it (called by the hook) is still answered from the tables
    assert not fast["notes"]
    beneath = [l for l in fast["lookups"] if l["caller"].endswith("dlsym_hook.so")]
    assert beneath and sum(l["found_by"] == "symbol table" for l in beneath) > 400


@pytest.mark.parametrize("how", ["--fork", "--fork-after-load"])
def test_forked_child_without_exec_is_traced(each_gdb, stack, probe, tmp_path, how):
    """A forked child (no exec) runs the parent's libraries at the parent's addresses: the
    breakpoints placed in the parent must work in the child, whether it loads them or inherits them."""
    proc, report = run_report(tmp_path, [probe, how], probe_env(stack, SEED))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    parent, child = [p["pid"] for p in report["processes"] if p["what"] == "start"]
    (err,) = report["errors"]
    assert err["pid"] == child != parent
    assert {c["pid"] for c in report["calls"]} == {child}
    assert len([l for l in report["lookups"] if l["pid"] == child]) > 400
    assert rules_of(report) == ["missing-cuGetExportTable", "missing-cuGetProcAddress_v2"]


def test_child_that_execs_a_program_with_none_of_the_parents_libraries(tmp_path):
    """After exec, the parent's breakpoint addresses mean nothing in the child (here nothing is
    mapped there at all): gdb must not be asked to insert them ("Cannot insert breakpoint")."""
    proc, report = run_report(tmp_path, [BUILD / "spawner", BUILD / "static_child"], env_with())
    assert proc.returncode == 4, proc.stdout + proc.stderr  # no CUDA anywhere: nothing to diagnose
    assert "Cannot insert" not in proc.stdout + proc.stderr
    assert [p["exit_code"] for p in report["processes"] if p["what"] == "exit"] == [0, 0]


@pytest.mark.parametrize("args", [[], ["--reload"]], ids=["seed", "reload"])
def test_breakpoints_by_address_and_by_name_see_the_same_run(stack, probe, tmp_path, args):
    """The default places breakpoints at addresses read from each file; --by-name lets gdb find
    the functions by name. Every call, lookup and error must be the same either way."""
    reports = []
    for mode in ("", "--by-name"):
        out = tmp_path / f"r{mode}.json"
        proc = run_gdb([f"catch-init-error {mode}", f"cuda-run --no-report --quit --json {out}"], [probe, *args],
                       env=probe_env(stack, SEED))
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        reports.append(json.loads(out.read_text()))
    by_address, by_name = reports

    def calls(r):
        return [(c["function"], c["library"], c["caller"], c["args"], c["result"]) for c in r["calls"]]

    assert calls(by_address) == calls(by_name) and len(calls(by_address)) >= 4
    assert _lookup_facts(by_address) == _lookup_facts(by_name)
    assert [e["text"] for e in by_address["errors"]] == [e["text"] for e in by_name["errors"]]
    assert rules_of(by_address) == rules_of(by_name) and not by_address["notes"]


def test_threads_started_inside_a_traced_call_do_not_lose_its_return(tmp_path):
    """NVIDIA's driver starts threads inside cuInit. A write() from one of them while the call
    runs used to make gdb 13 drop the call's FinishBreakpoint (it looked for the frame in the
    writing thread): the return was never seen and the window never closed."""
    proc, report = run_report(tmp_path, [BUILD / "threaded_init"], env_with())
    assert report is not None, proc.stderr
    (call,) = [c for c in report["calls"] if c["function"] == "cudaGetDeviceCount"]
    assert call["returned"] and call["result"] == 100, call
    texts = [e["text"] for e in report["errors"]]
    assert any("failed to initialize CUDA" in t for t in texts)
    # the window closed at the return: the 1000 lines after it were not captured or stopped on
    assert not any("after init" in t for t in texts) and report["stops"] < 200, report["stops"]


def test_the_cause_of_what_ggml_printed_comes_first(stack, probe, tmp_path):
    """Seed shim (no cuGetProcAddress_v2, no cuGetExportTable) whose cuInit says NO_DEVICE:
    ggml prints error 100, so the cuInit finding comes first, and the export-table finding
    does not claim the 36 this run never had."""
    proc, report = run_report(tmp_path, [probe], probe_env(stack, SEED, CUDASHIM_INIT_RESULT=100))
    assert proc.returncode == 1
    assert "no CUDA-capable device" in report["errors"][0]["text"]
    first, *rest = report["findings"]
    assert first["rule"] == "driver-error-passed-through" and "cuInit" in first["summary"] and first["explains"] == 100
    table = next(f for f in rest if f["rule"] == "missing-cuGetExportTable")
    claim = next(e for e in table["evidence"] if "(36)" in e)
    assert claim.startswith("this run failed earlier, with cudaError 100")


def test_twenty_children_at_once_are_all_followed(stack, probe, tmp_path):
    """A parent starting 20 workers at once: every child's init is seen. A traced call's return
    breakpoint got a location in every process, and inserting it where nothing was mapped made
    gdb's continue fail: 13-18 of 21 processes, all SIGKILLed, 'No CUDA init failure seen'."""
    proc, report = run_report(tmp_path, [BUILD / "forkn", "20", probe], probe_env(stack, SEED), timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    starts = [p for p in report["processes"] if p["what"] == "start"]
    exits = [p for p in report["processes"] if p["what"] == "exit"]
    assert len(starts) == 21 and len(exits) == 21
    assert all(e["exit_code"] == 0 for e in exits), exits
    assert len(report["errors"]) == 20 and not report.get("partial")
    assert not any("continue failed" in n for n in report["notes"])


def test_batch_run_keeps_gdb_index_in_its_own_cache(stack, probe, tmp_path, monkeypatch):
    """#17: a batch run's gdb indexes the DWARF it reads once, into gdb-cudashim's cache (keyed by
    build-id), and reads it back on the next run: the same diagnosis, gdb's own setting untouched."""
    from gdb_cudashim import cachedir
    from gdb_cudashim.core.elf import read_elf

    cache = tmp_path / "cache"
    env = dict(probe_env(stack, SEED), GDB_CUDASHIM_CACHE=str(cache))
    first_proc, first = run_report(tmp_path, [probe], env)
    index = cache / cachedir.GDB_INDEX / f"{read_elf(str(probe)).build_id}.gdb-index"
    assert index.is_file() and index.stat().st_size > 0, sorted(p.name for p in cache.rglob("*"))
    written = index.stat().st_mtime_ns
    second_proc, second = run_report(tmp_path, [probe], env)
    assert index.stat().st_mtime_ns == written  # read back, not indexed again
    assert first_proc.returncode == second_proc.returncode == 1
    assert [f["rule"] for f in first["findings"]] == [f["rule"] for f in second["findings"]]
    # old index files beyond the cap go, the newest stay
    for n in range(cachedir.GDB_INDEX_KEEP + 5):
        old = cache / cachedir.GDB_INDEX / f"{n:040x}.gdb-index"
        old.write_bytes(b"x")
        os.utime(old, ns=(n, n))
    monkeypatch.setenv("GDB_CUDASHIM_CACHE", str(cache))
    assert cachedir.gdb_index() == str(cache / cachedir.GDB_INDEX)
    left = sorted(p.name for p in (cache / cachedir.GDB_INDEX).iterdir())
    assert len(left) == cachedir.GDB_INDEX_KEEP // 2 and index.name in left
