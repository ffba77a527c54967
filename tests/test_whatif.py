"""run --what-if (core/walls.py): each finding's fix simulated with cuda-patch and the program run
again, on the real cudart and libggml-cuda (issue #20): proven walls, the next wall, and walls that
cannot be simulated, with the reason."""
from conftest import SHIM_BUILD, env_with, run_report

SEED = SHIM_BUILD / "variants" / "seed"


def test_an_old_driver_then_cuinit_100_are_two_proven_walls(stack, probe, tmp_path):
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda, CUDASHIM_INIT_RESULT=100,
                   CUDASHIM_DRIVER_VERSION=11080)
    proc, report = run_report(tmp_path, [probe], env, extra=["--what-if"], timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    assert report["schema"] == 3
    w1, w2, w3 = report["walls"]
    assert (w1["rule"], w1["verdict"]) == ("driver-version", "proven"), w1
    assert w1["simulation"][:2] == ["cuda-patch", "cuDriverGetVersion"] and "no CUDA-capable device" in w1["error_after"]
    assert (w2["rule"], w2["verdict"]) == ("driver-error-passed-through", "proven"), w2
    assert w2["simulation"][:2] == ["cuda-patch", "cuInit"] and "named symbol not found" in w2["error_after"]
    assert (w3["rule"], w3["verdict"]) == ("export-table-failed", "cannot simulate") and "NVIDIA's driver" in w3["why"]
    assert "wall 1: " in proc.stdout and "-- proven (with cuda-patch cuDriverGetVersion" in proc.stdout
    assert report["status"] == 1 and report["errors"][0]["text"].endswith("CUDA runtime version\n")  # the first run's


def test_the_seed_shims_first_wall_cannot_be_simulated_and_says_why(stack, probe, tmp_path):
    env = env_with(LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [probe], env, extra=["--what-if", "--max-walls", "3"], timeout=300)
    (wall,) = report["walls"]
    assert (wall["rule"], wall["verdict"]) == ("missing-cuGetExportTable", "cannot simulate")
    assert "private export tables" in wall["why"] and wall["simulation"] is None
    assert "cannot simulate: NVIDIA's private export tables" in proc.stdout


def test_a_lookup_miss_cudart_tolerates_is_tested_and_ranked_down(stack, probe, tmp_path):
    """#20's decoy: the seed shim exports no cuGetProcAddress_v2, and cudart tolerates that (it falls
    back to plain dlsym and goes on to cuInit). With its driver saying 11.8 the first run ranks that
    miss second, above the missing export table. The chain proves the driver version, then stops at
    the export table (nothing simulates it); the miss no wall reached is tested beside them: with
    the stand-in cuGetProcAddress_v2 the run fails the same way, so it is not the cause and drops
    below the export table, with the re-run's evidence."""
    env = env_with(LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda, CUDASHIM_DRIVER_VERSION=11080)
    proc, first = run_report(tmp_path, [probe], env)
    assert [f["rule"] for f in first["findings"]] == ["driver-version", "missing-cuGetProcAddress_v2",
                                                      "missing-cuGetExportTable"], first["findings"]
    proc, report = run_report(tmp_path, [probe], env, extra=["--what-if"], timeout=300)
    assert report["schema"] == 3
    assert [(w["rule"], w["verdict"]) for w in report["walls"]] == [
        ("driver-version", "proven"), ("missing-cuGetExportTable", "cannot simulate")], report["walls"]
    (test,) = report["tested"]
    assert (test["rule"], test["verdict"], test["on_walls"]) == ("missing-cuGetProcAddress_v2", "not the cause", [1])
    assert test["simulation"][:4] == ["cuda-patch", "dlsym", "--return", "sym:cudashim_standin_cuGetProcAddress_v2"]
    assert "API call is not supported" in test["error_before"] and test["error_after"] == test["error_before"]
    assert [f["rule"] for f in report["findings"]] == ["driver-version", "missing-cuGetExportTable",
                                                       "missing-cuGetProcAddress_v2"], report["findings"]
    decoy = report["findings"][-1]
    assert decoy["not_the_cause"] and decoy["evidence"][-1].startswith("what-if test 1, with the fix of wall 1: "
                                                                       "not the cause (with cuda-patch dlsym")
    assert "also tested (with wall 1's fix): libcuda.so.1 does not export cuGetProcAddress_v2" in proc.stdout
    assert "1 other finding(s) tested beside them" in proc.stdout


def test_a_device_count_ggml_cannot_take_is_answered_with_one_device(stack, probe, tmp_path):
    """The fake runtime over the seed shim. 99999 devices: ggml aborts on its 16-device assertion,
    with no CUDA error written; answered with one device the run initialises and meets no wall.
    0 devices with success: answered with one, ggml asks that device's properties, which the fake
    (having none) refuses: the failed call, the cudaError ggml's CUDA_CHECK aborted on, is the next
    wall, ranked before the abort; answering it alone is not enough (the next device call fails the
    same way), which is what a runtime with no device does."""
    from conftest import FAKERT

    def run(count):
        env = env_with(LD_PRELOAD=FAKERT, LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda, FAKERT_LAYOUT="good",
                       FAKERT_DEVICES=count)
        return run_report(tmp_path, [probe], env, extra=["--what-if"], timeout=300)

    proc, report = run(99999)
    (wall,) = report["walls"]
    assert (wall["rule"], wall["verdict"]) == ("device-count", "proven"), wall
    assert wall["simulation"] == ["cuda-patch", "cudaGetDeviceCount", "--return", "SUCCESS", "--out", "0=1"]
    assert wall["status_after"] == 0 and wall["rules_after"] == []
    assert report["tested"] == []
    proc, report = run(0)
    w1, w2 = report["walls"]
    assert (w1["rule"], w1["verdict"]) == ("device-count", "proven"), w1
    assert w1["error_before"] is None and w1["error_after"].startswith("CUDA error: fakert"), w1
    assert w1["rules_after"][:2] == ["device-without-properties", "killed-by-signal"], w1
    assert (w2["rule"], w2["verdict"]) == ("device-without-properties", "cannot simulate"), w2
    assert "answering cudaGetDeviceProperties_v2 alone is not enough: the next call, cudaDeviceGetAttribute" in w2["why"]


def test_properties_that_describe_nothing_are_answered_and_proven(stack, probe, tmp_path):
    """The fake runtime's all-zero cudaDeviceProp: a name, 8.9 and 8 GiB written into the struct
    for that device; ggml then registers it, and no wall is left. With no error text on either
    side, the evidence is the program's own output in the init window, which the report keeps."""
    from conftest import FAKERT

    env = env_with(LD_PRELOAD=FAKERT, LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda, FAKERT_LAYOUT="zero")
    proc, report = run_report(tmp_path, [probe], env, extra=["--what-if"], timeout=300)
    (wall,) = report["walls"]
    assert (wall["rule"], wall["verdict"]) == ("device-without-properties", "proven"), wall
    assert wall["simulation"][:4] == ["cuda-patch", "cudaGetDeviceProperties_v2", "--return", "SUCCESS"]
    assert "0.major=8" in wall["simulation"] and wall["simulation"][-2:] == ["--if", "$rsi == 0"]
    assert wall["status_after"] == 0 and wall["rules_after"] == []
    # not only the finding gone: what ggml itself wrote in the init window differs, and the wall says so
    assert "the program's output changed: 'ggml_cuda_init: found 1 CUDA devices (Total VRAM: 0 MiB):' became " \
           "'ggml_cuda_init: found 1 CUDA devices (Total VRAM: 8192 MiB):'" in wall["why"], wall["why"]
    assert any("Device 0: , compute capability 0.0" in o["text"] for o in report["output"]), report["output"]


def test_memory_queries_past_init_are_two_proven_walls(tmp_path):
    """The road past init (#19): the context first, then the memory query, each proven by its re-run;
    with both answered the discovery meets no wall. The runs' pids differ: that alone is no change."""
    from conftest import BUILD

    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, CUDASHIM_FAIL="cuDevicePrimaryCtxRetain=201,cuMemGetInfo_v2=2")
    proc, report = run_report(tmp_path, [BUILD / "discover"], env, extra=["--what-if"], timeout=300)
    w1, w2 = report["walls"]
    assert (w1["rule"], w1["verdict"], w1["simulation"][1]) == ("memory-query-failed", "proven",
                                                                "cuDevicePrimaryCtxRetain"), w1
    assert "cuMemGetInfo_v2 fails" in w1["why"], w1["why"]
    assert (w2["rule"], w2["verdict"], w2["simulation"][1:]) == (
        "memory-query-failed", "proven", ["cuMemGetInfo_v2", "--return", "SUCCESS", "--out", "0=8589934592:8",
                                          "--out", "1=8589934592:8"]), w2
    assert w2["why"] == "the run went further (no finding is left)", w2["why"]


def test_a_wall_that_is_a_string_is_answered_in_nvidias_form_and_proven(tmp_path):
    """The NVML driver version '12.4' (a CUDA version where a driver branch belongs): cuda-patch
    writes a string answer through the out-parameter, and the re-run meets no wall."""
    from conftest import BUILD

    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, CUDASHIM_NVML_DRIVER_VERSION="12.4")
    proc, report = run_report(tmp_path, [BUILD / "discover"], env, extra=["--what-if"], timeout=300)
    (wall,) = report["walls"]
    assert (wall["rule"], wall["verdict"]) == ("nvml-driver-version", "proven"), wall
    assert wall["simulation"] == ["cuda-patch", "nvmlSystemGetDriverVersion", "--return", "SUCCESS",
                                  "--out", "0=str:570.133.20"]
    assert wall["status_after"] == 0 and wall["rules_after"] == []
    assert "no wall left: with the simulated fix above, CUDA initialised" in proc.stdout


def test_an_all_zero_uuid_is_answered_for_that_device_and_proven(tmp_path):
    from conftest import BUILD

    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, CUDASHIM_UUID="zero")
    proc, report = run_report(tmp_path, [BUILD / "discover"], env, extra=["--what-if"], timeout=300)
    (wall,) = report["walls"]
    assert (wall["rule"], wall["verdict"]) == ("device-uuid-zero", "proven"), wall
    assert wall["simulation"][1] == "cuDeviceGetUuid_v2" and "--if" in wall["simulation"]
    assert any(a.startswith("0=hex:GPU-") for a in wall["simulation"]), wall["simulation"]


def test_the_fake_runtimes_bad_properties_are_walls_until_none_is_left(tmp_path):
    """Real llama-server --list-devices over the bundled fake runtime, whose cudaDeviceProp is laid
    out by hand (CUDA 12's fields 32 bytes early): compute capability 0.0, proven by answering the
    capability the run's libggml-cuda was built for in prop.major/minor; then 0 MiB, from two places
    (prop.totalGlobalMem and cudaMemGetInfo), both answered in one wall; then no wall left. The
    second wall's answer for cudaGetDeviceProperties_v2 joins the first's (one patch per function)."""
    from gdb_cudashim import realprogs
    from gdb_cudashim.core.devprops import fatbin_targets

    from conftest import FAKERT, VARIANTS

    server, backend = realprogs.path("llama-server"), realprogs.path("ggml-cuda")
    env = env_with(LD_PRELOAD=FAKERT, LD_LIBRARY_PATH=VARIANTS / "seed", GGML_BACKEND_PATH=backend)
    proc, report = run_report(tmp_path, [server, "--list-devices"], env, extra=["--what-if"], timeout=300)
    assert "CUDA0: Fake GPU (fakert) (0 MiB, 0 MiB free)" in proc.stdout
    w1, w2 = report["walls"]
    low = min(fatbin_targets(str(backend))["sm"])
    assert (w1["rule"], w1["verdict"]) == ("device-compute-capability", "proven"), w1
    assert w1["simulation"][:4] == ["cuda-patch", "cudaGetDeviceProperties_v2", "--return", "SUCCESS"]
    assert f"0.major={low // 10}" in w1["simulation"] and f"0.minor={low % 10}" in w1["simulation"]
    assert w1["rules_after"] == ["device-no-memory"], w1
    assert (w2["rule"], w2["verdict"]) == ("device-no-memory", "proven"), w2
    commands = " ".join(w2["simulation"]).split(" ; ")
    assert commands == ["cuda-patch cudaGetDeviceProperties_v2 --return SUCCESS --out 0.totalGlobalMem=8589934592 "
                        "--if $rsi == 0",
                        "cuda-patch cudaMemGetInfo --return SUCCESS --out 0=8589934592:8 --out 1=8589934592:8"]
    assert w2["status_after"] == 0 and w2["rules_after"] == []
    assert "no wall left: with the 2 simulated fixes above" in proc.stdout


def test_what_if_chains_are_compared_by_diff(tmp_path):
    """Two reports' walls, wall by wall, after their events (the same program: one run's shim
    answers the driver version wrong, the other's a zero UUID)."""
    import json

    from conftest import BUILD, run_cli

    runs = {}
    for name, extra in (("a", {"CUDASHIM_NVML_DRIVER_VERSION": "12.4"}), ("b", {"CUDASHIM_UUID": "zero"})):
        d = tmp_path / name
        d.mkdir()
        env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, **extra)
        proc, report = run_report(d, [BUILD / "discover"], env, extra=["--what-if"], timeout=300)
        assert report["walls"], proc.stdout
        runs[name] = d / "report.json"
    proc = run_cli(["diff", "--json", str(runs["a"]), str(runs["b"])])
    divergences = json.loads(proc.stdout)["divergences"]
    (wall,) = [d for d in divergences if d["event"] == "wall"]
    assert wall["subject"] == "wall 1" and wall["ref"] == "nvml-driver-version: proven", wall
    assert wall["run"] == "device-uuid-zero: proven", wall
    assert divergences[-1]["event"] == "wall"  # a conclusion of re-runs: after every event of the run
    assert "what-if    wall 1" in run_cli(["diff", str(runs["a"]), str(runs["b"])]).stdout


def test_an_answer_that_is_not_enough_says_so_and_ggmls_own_driver_check_ranks_first(stack, probe, tmp_path):
    """The fake runtime over the driver shim whose cuInit fails: ggml calls the driver itself
    (cuDeviceGet, CU_CHECK) and aborts with 'CUDA error: CUDA_ERROR_NO_DEVICE'. The cause (cuInit's
    100) ranks before the abort it leads to. Answering cuInit with success is not enough (the shim
    never set itself up, so cuDeviceGet fails the same way): the wall says that, never 'proven' on
    the strength of its own finding having gone, nor 'not the cause'."""
    from conftest import FAKERT

    env = env_with(LD_PRELOAD=FAKERT, FAKERT_LAYOUT="good", LD_LIBRARY_PATH=SHIM_BUILD, CUDASHIM_INIT_RESULT=100,
                   GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [probe], env, extra=["--what-if"], timeout=300)
    assert "CUDA error: CUDA_ERROR_NO_DEVICE" in report["errors"][0]["text"]
    assert [f["rule"] for f in report["findings"]][:2] == ["init-call-failed", "killed-by-signal"], report["findings"]
    (wall,) = report["walls"]
    assert (wall["rule"], wall["verdict"]) == ("init-call-failed", "cannot simulate"), wall
    assert "answering cuInit alone is not enough: the next call, cuDeviceGet, fails the same way" in wall["why"]


def test_a_wall_that_claims_no_error_and_cannot_be_simulated_does_not_end_the_chain(stack, probe, tmp_path):
    """A preload ld.so ignored (a typo in LD_PRELOAD, a decoy here: CUDA never needed it) ranks
    first and cannot be simulated; it claims none of the errors the run printed, so the chain goes
    on to the findings that do, and does not come back to it in the re-runs (another pid, the
    same finding)."""
    env = env_with(LD_PRELOAD=tmp_path / "libdecoy.so", LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda,
                   CUDASHIM_INIT_RESULT=100, CUDASHIM_DRIVER_VERSION=11080)
    proc, report = run_report(tmp_path, [probe], env, extra=["--what-if"], timeout=300)
    assert [(w["rule"], w["verdict"]) for w in report["walls"]] == [
        ("preload-ignored", "cannot simulate"), ("driver-version", "proven"),
        ("driver-error-passed-through", "proven"), ("export-table-failed", "cannot simulate")], report["walls"]


def test_a_shim_that_rejects_uuid_tokens_is_simulated_reading_them(tmp_path):
    """#20's visible-devices token: ollama's verifying pass gives each child CUDA_VISIBLE_DEVICES=GPU-<uuid>;
    the ordinals-only shim finds no device there. The simulation rewrites each child's token, at its
    exec, to the ordinal the shim's own cuDeviceGetUuid answered for that UUID: both devices are then
    verified and the wall is proven. The shim that ignores the variable cannot be simulated so."""
    from conftest import BUILD

    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, DISCOVER_VERIFY="uuid", CUDASHIM_DEVICE_COUNT=2,
                   CUDASHIM_VISIBLE="ordinals-only")
    proc, report = run_report(tmp_path, [BUILD / "discover"], env, extra=["--what-if"], timeout=300)
    wall = report["walls"][0]
    assert (wall["rule"], wall["verdict"]) == ("visible-devices", "proven"), report["walls"]
    sim = wall["simulation"]
    assert sim[:2] == ["cuda-patch", "env:CUDA_VISIBLE_DEVICES"] and sim.count("--map") == 2, sim
    assert any(w.startswith("GPU-") and w.endswith("=0") for w in sim) and any(w.endswith("=1") for w in sim), sim
    assert "visible-devices" not in wall["rules_after"], wall
    env["CUDASHIM_VISIBLE"] = "ignore"
    proc, report = run_report(tmp_path, [BUILD / "discover"], env, extra=["--what-if"], timeout=300)
    wall = next(w for w in report["walls"] if w["rule"] == "visible-devices")
    assert wall["verdict"] == "cannot simulate" and "not a value the variable could be given" in wall["why"]


def test_a_stand_in_cugetprocaddress_behind_an_interposer_then_the_next_two_walls(stack, probe, tmp_path):
    """#20's stand-in and dlsym answer: HAMi-core's shape (build/libvgpu.so) in front of the seed shim,
    whose driver reports 11.8. The first finding is the missing cuGetProcAddress_v2; simulated with the
    bundled stand-in (preloaded, and handed back by dlsym for that name), cudart gets its entry points,
    prints the same words for another reason (the old driver: proven all the same, with that cause
    named), then the driver version is answered and the export table is the wall nothing simulates."""
    from conftest import BUILD

    env = env_with(LD_PRELOAD=BUILD / "libvgpu.so", LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda,
                   CUDASHIM_DRIVER_VERSION=11080)
    proc, report = run_report(tmp_path, [probe], env, extra=["--what-if"], timeout=300)
    assert [(w["rule"], w["verdict"]) for w in report["walls"]] == [
        ("missing-cuGetProcAddress_v2", "proven"), ("driver-version", "proven"),
        ("export-table-failed", "cannot simulate")], report["walls"]
    first = report["walls"][0]
    assert first["simulation"][:5] == ["cuda-patch", "dlsym", "--return", "sym:cudashim_standin_cuGetProcAddress_v2",
                                       "--if"] and first["simulation"][-2] == "--preload", first["simulation"]
    assert "met another cause behind it: driver-version" in first["why"]
    assert first["error_after"] == first["error_before"]  # the same words, a different cause
