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
    assert report["schema"] == 2
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


def test_a_wall_that_is_a_string_says_it_cannot_be_simulated(tmp_path):
    from conftest import BUILD

    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, CUDASHIM_NVML_DRIVER_VERSION="12.4")
    proc, report = run_report(tmp_path, [BUILD / "discover"], env, extra=["--what-if"], timeout=300)
    (wall,) = report["walls"]
    assert (wall["rule"], wall["verdict"]) == ("nvml-driver-version", "cannot simulate") and "string" in wall["why"]
