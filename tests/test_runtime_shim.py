"""Runtime shims are first-class in `run` (issue #11 item 3): a libcudart that is not NVIDIA's,
preloaded, dropped in or under its own soname. Real gdb, the real libggml-cuda, NVIDIA's real
libcudart beside it, the bundled fake runtime's variants (shim/Makefile) and real llama-server."""

from conftest import FAKERT, FAKERT_NOFAT, FAKERT_OWN, FAKERT_PARTIAL, FAKERT_V1, VARIANTS, env_with, run_report

SEED = VARIANTS / "seed"


def run(stack, probe, tmp_path, **env):
    env.setdefault("LD_LIBRARY_PATH", SEED)
    return run_report(tmp_path, [probe], env_with(GGML_CUDA_LIB=stack.ggml_cuda, **env))


def libraries(report, pid=None):
    (lib,) = [l for l in report["libraries"] if pid is None or l["pid"] == pid]
    return lib, {f["path"]: f for f in lib["files"]}


def rules_of(report):
    return [f["rule"] for f in report["findings"]]


def test_preloaded_fake_runtime_is_recognised_with_its_state(stack, probe, tmp_path):
    proc, report = run(stack, probe, tmp_path, LD_PRELOAD=FAKERT)
    lib, files = libraries(report)
    assert lib["when"] == "after init"
    rt = files[str(FAKERT)]
    assert (rt["role"], rt["kind"], rt["how"]) == ("runtime", "runtime replacement", "LD_PRELOAD")
    bundled = stack.ggml_cuda.parent / "libcudart.so.12"
    assert str(bundled) not in files  # the preload took NVIDIA's soname: the bundled copy never loaded
    assert any(f"so the bundled copy ({bundled}) is never loaded" in n for n in lib["notes"]), lib["notes"]
    (check,) = lib["imports"]
    assert check["missing"] == [] and check["imported"] == 57 and check["version"] == "libcudart.so.12"
    state = next(s for s in lib["shims"] if s["library"] == str(FAKERT))
    g = state["globals"]
    assert state["how"] == "DWARF"
    assert g["g_layout"]["value"] == "FAKERT_HANDMADE" and g["g_device_name"]["value"] == "Fake GPU (fakert)"
    assert g["g_driver_init_result"]["value"] == 0 and g["g_device_count"]["value"] == 1
    out = proc.stdout
    assert "runtime    runtime replacement  LD_PRELOAD" in out
    assert "g_device_name='Fake GPU (fakert)'" in out and "g_layout='FAKERT_HANDMADE'" in out
    # the driver shim behind it is there too: the fake runtime dlopen()s it itself
    driver = files[str(SEED / "libcuda.so.1")]
    assert driver["kind"] == "bundled cudashim" and driver["how"] == 'dlopen("libcuda.so.1") by libcudart.so.12'
    # and which step of ld.so's search found it, with the process's environment (cuda-state's answer too)
    assert driver["found"] == "LD_LIBRARY_PATH" and "found" not in rt, (driver, rt)
    ggml = files[str(stack.ggml_cuda)]
    assert ggml["found"] == "by path (dlopen or DT_NEEDED)", ggml  # ggml's backend loader dlopen()s it by path


def test_missing_v2_name_is_a_runtime_finding(stack, probe, tmp_path):
    shim = FAKERT_V1
    proc, report = run(stack, probe, tmp_path, LD_PRELOAD=shim)
    assert proc.returncode == 1
    first = report["findings"][0]
    assert first["rule"] == "runtime-shim-missing-symbols", rules_of(report)
    assert f"the runtime shim {shim} lacks cudaGetDeviceProperties_v2" in first["summary"]
    ev = "\n".join(first["evidence"])
    assert "undefined symbol: cudaGetDeviceProperties_v2, version libcudart.so.12" in ev
    assert "it exports cudaGetDeviceProperties, but CUDA 12's headers #define" in ev
    assert "in ggml_cuda_init" in ev and "resolved every import at dlopen" in ev
    assert "under the version node libcudart.so.12" in first["fix"] and "libcuda.so.1" not in first["fix"]
    lib, files = libraries(report)
    assert lib["when"] == "at a failed load" and files[str(shim)]["kind"] == "runtime replacement"


def test_missing_fat_binary_registration(stack, probe, tmp_path):
    shim = FAKERT_NOFAT
    proc, report = run(stack, probe, tmp_path, LD_PRELOAD=shim)
    first = report["findings"][0]
    assert first["rule"] == "runtime-shim-missing-symbols"
    assert "lacks __cudaRegisterFatBinary and 1 more" in first["summary"]
    assert any(e.startswith("__cudaRegisterFatBinaryEnd: needed at dlopen, before any CUDA call") for e in first["evidence"])


def test_drop_in_on_ld_library_path_is_bypassed(stack, probe, tmp_path):
    """libggml-cuda's DT_RPATH $ORIGIN is searched before LD_LIBRARY_PATH: the fake is never loaded,
    NVIDIA's cudart runs and fails on the seed driver; the user must hear about the fake first."""
    proc, report = run(stack, probe, tmp_path, LD_LIBRARY_PATH=f"{FAKERT.parent}:{SEED}")
    assert proc.returncode == 1
    first = report["findings"][0]
    assert first["rule"] == "runtime-shim-bypassed", rules_of(report)
    bundled = stack.ggml_cuda.parent / "libcudart.so.12"
    assert f"the runtime shim {FAKERT} on LD_LIBRARY_PATH is never loaded" in first["summary"]
    assert f"came from {bundled} (NVIDIA runtime)" in first["summary"]
    assert any("DT_RPATH ['$ORIGIN'] is searched before LD_LIBRARY_PATH" in e for e in first["evidence"])
    assert first["fix"].startswith(f"preload it: LD_PRELOAD={FAKERT}")
    assert "missing-cuGetExportTable" in rules_of(report)  # what NVIDIA's cudart then hit, after it
    _, files = libraries(report)
    assert files[str(bundled)]["kind"] == "NVIDIA runtime" and str(FAKERT) not in files


def test_partial_shim_under_its_own_soname_is_two_runtimes(stack, probe, tmp_path):
    shim = FAKERT_PARTIAL
    proc, report = run(stack, probe, tmp_path, LD_PRELOAD=shim)
    assert "CUDA error" in proc.stderr  # ggml's CUDA_CHECK aborted on NVIDIA's cudart's error
    first = report["findings"][0]
    assert first["rule"] == "two-runtimes", rules_of(report)
    ev = "\n".join(first["evidence"])
    assert "calls that landed in NVIDIA's runtime: cudaDeviceGetAttribute" in ev
    assert "libggml-cuda's imports the shim lacks bind to NVIDIA's: " in ev
    lib, files = libraries(report)
    assert lib["when"] == "at its SIGABRT"  # read before the abort took the process
    assert files[str(shim)]["kind"] == "runtime shim under its own soname"
    assert files[str(stack.ggml_cuda.parent / "libcudart.so.12")]["kind"] == "NVIDIA runtime"


def test_complete_shim_under_its_own_soname_leaves_nvidias_unused(stack, probe, tmp_path):
    shim = FAKERT_OWN
    proc, report = run(stack, probe, tmp_path, LD_PRELOAD=shim)
    assert "two-runtimes" not in rules_of(report)
    lib, files = libraries(report)
    assert any("is loaded but never called by ggml" in n for n in lib["notes"]), lib["notes"]
    assert {c["library"].rsplit("/", 1)[-1] for c in report["calls"] if c["function"].startswith("cuda")} \
        == {"libfakert.so"}


def test_seed_driver_shim_state_in_the_run_report(stack, probe, tmp_path):
    proc, report = run(stack, probe, tmp_path)
    lib, files = libraries(report)
    driver = files[str(SEED / "libcuda.so.1")]
    assert driver["kind"] == "bundled cudashim"
    state = next(s for s in lib["shims"] if s["library"] == str(SEED / "libcuda.so.1"))
    assert state["globals"]["g_in_init_phase"]["value"] == 0 and state["globals"]["g_initialized"]["value"] == 1
    assert lib["imports"] == []  # NVIDIA's runtime is not checked against ggml's imports
    nv = files[str(stack.ggml_cuda.parent / "libcudart.so.12")]
    assert (nv["kind"], nv["how"]) == ("NVIDIA runtime", f"DT_NEEDED of {stack.ggml_cuda.name}")


def test_ld_so_preload_entries_are_listed(stack, probe, tmp_path):
    listing = tmp_path / "ld.so.preload"
    listing.write_text(f"# a comment\n{FAKERT}\n")
    proc, report = run(stack, probe, tmp_path, GDB_CUDASHIM_LD_SO_PRELOAD=listing)
    assert report["ld_so_preload"] == {"file": str(listing), "entries": [str(FAKERT)]}
    assert f"{listing}: {FAKERT} (preloaded into every process)" in proc.stdout


def test_real_llama_server_with_the_fake_runtime(tmp_path):
    """llama.cpp's own llama-server, its CUDA backend (ggml 0.27) and the fake runtime preloaded:
    the fake's device is listed with 0 MiB, and the tool names the runtime and its state."""
    from gdb_cudashim import realprogs

    server, backend = realprogs.path("llama-server"), realprogs.path("ggml-cuda")  # make test fetched them
    env = env_with(LD_PRELOAD=FAKERT, LD_LIBRARY_PATH=SEED, GGML_BACKEND_PATH=backend)
    proc, report = run_report(tmp_path, [server, "--list-devices"], env)
    assert "CUDA0: Fake GPU (fakert) (0 MiB, 0 MiB free)" in proc.stdout
    assert {"device-compute-capability", "device-no-memory"} <= set(rules_of(report))
    lib, files = libraries(report)
    assert files[str(FAKERT)]["kind"] == "runtime replacement"
    assert files[str(backend)]["how"] == f'dlopen("{backend.name}") by libggml.so.0'
    (check,) = lib["imports"]
    assert check["missing"] == [] and check["consumer"] == str(backend)


def test_real_llama_server_with_a_runtime_that_lacks_an_import(tmp_path):
    from gdb_cudashim import realprogs

    server, backend = realprogs.path("llama-server"), realprogs.path("ggml-cuda")
    shim = FAKERT_V1
    env = env_with(LD_PRELOAD=shim, LD_LIBRARY_PATH=SEED, GGML_BACKEND_PATH=backend)
    proc, report = run_report(tmp_path, [server, "--list-devices"], env)
    assert proc.returncode == 1
    first = report["findings"][0]
    assert first["rule"] == "runtime-shim-missing-symbols" and "cudaGetDeviceProperties_v2" in first["summary"]


def test_a_bare_name_in_ld_preload_is_found_like_ld_so_finds_it(stack, probe, tmp_path):
    """LD_PRELOAD=libfakert.so (no slash): ld.so searches LD_LIBRARY_PATH for it, not the cwd."""
    proc, report = run(stack, probe, tmp_path, LD_PRELOAD="libfakert.so",
                       LD_LIBRARY_PATH=f"{FAKERT_OWN.parent}:{SEED}")
    _, files = libraries(report)
    own = files[str(FAKERT_OWN)]
    assert (own["kind"], own["how"]) == ("runtime shim under its own soname", "LD_PRELOAD")


def test_two_shims_exporting_the_same_global_share_one_variable(stack, probe, tmp_path):
    """fakert-globals exports g_device_count and g_call_count, as the seed driver shim does: ld.so
    binds the driver shim's references to the preloaded fake's copies. FAKERT_DEVICES=2 then
    becomes 1 device, because the driver shim's cuInit writes the same variable."""
    from conftest import VARIANTS as V

    shim = V / "fakert-globals" / "libcudart.so.12"
    proc, report = run(stack, probe, tmp_path, LD_PRELOAD=shim, FAKERT_DEVICES="2", FAKERT_LAYOUT="good")
    assert "found 1 CUDA devices" in proc.stderr  # the fake meant 2
    (f,) = [f for f in report["findings"] if f["rule"] == "shared-globals"]
    assert f["summary"].startswith("fakert-globals/libcudart.so.12 and libcuda.so.1 both export the global "
                                   "variables g_call_count, g_device_count")
    assert "the preloaded fakert-globals/libcudart.so.12's copies" in f["summary"]
    assert "-Wl,-Bsymbolic" in f["fix"]
    # the bundled fake keeps its globals local: no such finding, and its state is still read
    (tmp_path / "plain").mkdir()
    proc, report = run(stack, probe, tmp_path / "plain", LD_PRELOAD=FAKERT)
    assert "shared-globals" not in rules_of(report)


def test_a_fake_runtime_stripped_of_its_section_headers_is_still_traced(stack, probe, tmp_path):
    """sstrip removes the section headers ld.so never reads: the tool reads the dynamic symbols the
    same way (PT_DYNAMIC), so its calls are traced and placed, not 'No CUDA init failure seen'."""
    from test_runtime_core import _without_section_headers

    stripped = _without_section_headers(FAKERT, tmp_path / "sstrip" / "libcudart.so.12")
    proc, report = run(stack, probe, tmp_path, LD_PRELOAD=stripped)
    calls = [c for c in report["calls"] if c["function"] == "cudaGetDeviceProperties_v2"]
    assert calls and calls[0]["library"] == str(stripped), report["calls"][:3]
    assert "libcudart.so.12 (runtime replacement)" in proc.stdout
    assert {"device-compute-capability", "device-no-memory"} <= set(rules_of(report))
    lib, files = libraries(report)
    assert files[str(stripped)]["kind"] == "runtime replacement"
    (check,) = lib["imports"]
    assert check["missing"] == []


def test_attach_reports_the_cuda_files_and_shim_state_of_a_running_server(tmp_path):
    """A server attached to long after its CUDA init (no init window is ever seen): the report still
    names its CUDA files and the shim's globals, read when it was left running."""
    import json
    import subprocess

    from conftest import BUILD, SHIM_BUILD, run_cli

    # preloaded, the shim stays mapped between the looper's dlopen/dlclose ticks
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, LD_PRELOAD=SHIM_BUILD / "libcuda.so.1", LOOPER_TICK_MS=50)
    server = subprocess.Popen([str(BUILD / "looper")], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        server.stdout.readline()
        out = tmp_path / "a.json"
        proc = run_cli(["attach", str(server.pid), "--timeout", "2", "--json", str(out)], env=env)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        (lib,) = json.loads(out.read_text())["libraries"]
        # read as the watch began (the files were mapped before it), or when it was left running
        assert lib["when"] in ("when the watch began", "when it was left running") and lib["pid"] == server.pid
        (driver,) = [f for f in lib["files"] if f["role"] == "driver"]
        assert (driver["kind"], driver["how"]) == ("bundled cudashim", "LD_PRELOAD")
        (state,) = lib["shims"]
        assert state["globals"]["g_initialized"]["value"] == 1
        assert server.poll() is None and "TracerPid:\t0" in open(f"/proc/{server.pid}/status").read()
    finally:
        server.kill()
        server.wait()


def test_a_device_query_asked_thousands_of_times_after_init_stops_being_traced(tmp_path):
    """ggml's memory fitting asks the same device queries over and over after init: the first
    calls are kept, then that function is no longer a stop in that process (it was two each)."""
    from conftest import BUILD

    env = env_with(LD_LIBRARY_PATH=SEED, RT_PROBE_REPEAT="5000")
    proc, report = run_report(tmp_path, [BUILD / "rt_probe", FAKERT], env)
    asked = [c for c in report["calls"] if c["function"] == "cudaGetDeviceCount"]
    assert len(asked) == 64, len(asked)
    assert report["stops"] < 1000, report["stops"]  # 10002 had every call been traced
    assert any("called cudaGetDeviceCount more than 64 times after its CUDA init" in n for n in report["notes"])


def test_real_llama_cli_using_the_fake_device_runs_to_its_end(gemma_model, tmp_path):
    """llama-cli with the fake runtime goes past init and uses the device: ggml_cuda_info() is
    called by every CUDA operation and the device queries by the memory fitting, tens of thousands
    of times. Each window breakpoint and each over-asked query stops being a stop in that process,
    so the program ends by itself instead of crawling: the fake runtime now has memory, so llama-cli
    loads the model and ggml aborts at its first kernel launch, on a device it was told is 0.0."""
    from gdb_cudashim import realprogs

    cli, backend = realprogs.path("llama-cli"), realprogs.path("ggml-cuda")
    env = env_with(LD_PRELOAD=FAKERT, LD_LIBRARY_PATH=SEED, GGML_BACKEND_PATH=backend)
    proc, report = run_report(tmp_path, [cli, "-m", gemma_model, "-p", "Hello", "-n", "8", "--temp", "0",
                                         "--single-turn", "--simple-io", "-t", "2", "-c", "512"], env, timeout=240)
    (end,) = [p for p in report["processes"] if p["what"] == "exit"]
    assert end["signal"] == "SIGABRT" and not report.get("left_running"), report["notes"]
    assert report["stops"] < 5000, report["stops"]  # ~130,000 when every call was a stop
    assert {"device-compute-capability", "device-no-memory", "first-launch-no-kernel-image"} <= set(rules_of(report))
    launch = next(f for f in report["findings"] if f["rule"] == "first-launch-no-kernel-image")
    assert "the device reports compute capability 0.0" in launch["summary"]
