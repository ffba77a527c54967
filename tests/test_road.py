"""The road past init (#19): each wall a shim meets after cuInit succeeds, named with the calls that
show it. The program is build/discover (tests/programs/discover.c: ollama's probe calls, its drops
and its verifying second pass in children), the goserver's two-pass flow and the real probe; the
shim is the bundled one with the knob that reproduces each defect."""
import pytest

from conftest import BUILD, SHIM_BUILD, env_with, run_report

ROAD = ("nvml-driver-version", "memory-query-failed", "visible-devices", "device-uuid-zero", "proc-address-target")


def discover(tmp_path, **knobs):
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, **knobs)
    proc, report = run_report(tmp_path, [BUILD / "discover"], env)
    assert report is not None, proc.stderr
    return proc, report, [f for f in report["findings"] if f["rule"] in ROAD]


def test_a_healthy_two_pass_discovery_meets_no_wall(tmp_path):
    """The control: two devices, verified by UUID, through a shim that does it right."""
    proc, report, road = discover(tmp_path, DISCOVER_VERIFY="uuid", CUDASHIM_DEVICE_COUNT=2)
    assert road == [] and proc.returncode == 0, (road, proc.stdout)
    assert proc.stdout.count('msg="inference compute" id=GPU-') == 2, proc.stdout  # the program kept both
    children = [p for p in report["processes"] if p["what"] == "start" and p.get("parent")
                and (p.get("env") or {}).get("CUDA_VISIBLE_DEVICES", "").startswith("GPU-")]
    assert len(children) == 2, report["processes"]  # each re-exec of itself carries its own environment


@pytest.mark.parametrize("bug,words", [
    ("ordinals-only", "does not accept GPU- tokens"),
    ("ignore", "the shim ignores CUDA_VISIBLE_DEVICES in 2 children"),
])
def test_the_verifying_pass_with_a_shim_that_mishandles_visible_devices(tmp_path, bug, words):
    proc, report, road = discover(tmp_path, DISCOVER_VERIFY="uuid", CUDASHIM_DEVICE_COUNT=2, CUDASHIM_VISIBLE=bug)
    (f,) = [f for f in road if f["rule"] == "visible-devices"]
    assert words in f["summary"], f["summary"]
    assert report["findings"][0]["rule"] == "visible-devices", [x["rule"] for x in report["findings"]]
    # the children of one parent are one finding, each with its token and what the shim answered
    assert sum("started with CUDA_VISIBLE_DEVICES='GPU-" in e for e in f["evidence"]) == 2, f["evidence"]
    assert any("cuDeviceGetUuid answered device 0: GPU-" in e for e in f["evidence"]), f["evidence"]


def test_a_uuid_that_changes_between_processes(tmp_path):
    """Two first passes (ollama runs llama-server and its own probe) saw two UUIDs for device 0."""
    script = f"{BUILD / 'discover'} >/dev/null; DISCOVER_VERIFY=uuid {BUILD / 'discover'}"
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, CUDASHIM_UUID="per-process")
    proc, report = run_report(tmp_path, ["/bin/sh", "-c", script], env)
    (f,) = [f for f in report["findings"] if f["rule"] == "visible-devices"]
    assert "UUID differs between processes" in f["summary"] and "fixed UUID" in f["fix"], f
    assert any(e.startswith("the same device, two UUIDs: device 0: GPU-") for e in f["evidence"]), f["evidence"]


def test_an_all_zero_uuid(tmp_path):
    _, _, road = discover(tmp_path, CUDASHIM_UUID="zero")
    (f,) = road
    assert f["rule"] == "device-uuid-zero" and "GPU-00000000-0000-0000-0000-000000000000" in f["evidence"][0], f


@pytest.mark.parametrize("version,words", [
    ("12.4", "not a driver version in NVIDIA's form"),
    ("535.104.05", "branch 535, older than ollama's CUDA libraries accept"),
])
def test_nvml_driver_version_ollama_cannot_take(tmp_path, version, words):
    proc, report, road = discover(tmp_path, CUDASHIM_NVML_DRIVER_VERSION=version)
    (f,) = road
    assert f["rule"] == "nvml-driver-version" and words in f["summary"], f
    assert any("cuDriverGetVersion answered 12090" in e for e in f["evidence"]), f["evidence"]


def test_memory_queries_that_fail(tmp_path):
    _, _, road = discover(tmp_path, CUDASHIM_FAIL="cuDevicePrimaryCtxRetain=201,cuMemGetInfo_v2=201")
    (f,) = road
    assert f["rule"] == "memory-query-failed" and f["summary"].startswith("cuDevicePrimaryCtxRetain fails with "
                                                                          "CUDA_ERROR_INVALID_CONTEXT"), f
    assert "(0 MiB, 0 MiB free)" in f["summary"]
    assert any("cuMemGetInfo_v2() in libcuda.so.1" in e for e in f["evidence"]), f["evidence"]
    assert any("primary context" in e for e in f["evidence"]), f["evidence"]


@pytest.mark.parametrize("bad,words", [("cuDeviceGetCount=unmapped", "which lies in no mapped file"),
                                       ("cuDeviceGetName=libc", "libc.so.6"),
                                       # the legacy ABI where cudart's cudaVersion (12090) needs the v2
                                       # the legacy ABI where the cudaVersion cudart asks with (12000) needs the
                                       # v2 (without symbolStatus); cudart's own v1 query (11030) is no finding
                                       ("cuGetProcAddress=legacy", "which is cuGetProcAddress in libcuda.so.1: the "
                                                                   "legacy ABI, where cudaVersion 12000 needs "
                                                                   "cuGetProcAddress_v2")])
def test_cugetprocaddress_handing_back_the_wrong_thing(stack, tmp_path, bad, words):
    """The real cudart asks the shim for its entry points; one answer points elsewhere."""
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda, CUDASHIM_GPA_BAD=bad)
    proc, report = run_report(tmp_path, [BUILD / "probe"], env)
    (f,) = [f for f in report["findings"] if f["rule"] == "proc-address-target"]
    assert bad.split("=")[0] in f["summary"] and words in f["summary"], f
    assert "libcudart.so.12" in f["evidence"][0], f["evidence"]


def test_a_pointer_into_nothing_that_the_process_then_jumps_to_ranks_before_the_crash(stack, tmp_path):
    """cuInit handed back as 0x10: cudart calls it and dies of SIGSEGV there. Nothing is printed, so
    the crash is what the user sees; the pointer is why, and comes first, tied to the fault."""
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda, CUDASHIM_GPA_BAD="cuInit=unmapped")
    proc, report = run_report(tmp_path, [BUILD / "probe"], env)
    rules = [f["rule"] for f in report["findings"]]
    assert rules[:2] == ["proc-address-target", "killed-by-signal"], rules
    first, crash = report["findings"][:2]
    assert first["summary"].endswith("and the process died of SIGSEGV there")
    assert any(e.endswith("died of SIGSEGV at 0x10: a call through that pointer") for e in first["evidence"])
    assert any("a call to 0x10, where nothing is mapped" in e for e in crash["evidence"]), crash["evidence"]


def test_goservers_two_pass_flow_under_the_tool(goserver, ggml_cuda_backend, tmp_path):
    """ollama's flow (goserver --flow two-pass, UUID tokens as 0.13-0.24) with a shim that cannot
    parse them: the runner children of the verifying pass are named, with the probe's UUID."""
    from test_goserver_flow import flow_env  # the healthy set-up its own tests use

    env = flow_env(ggml_cuda_backend, GOSERVER_VISIBLE="uuid", CUDASHIM_VISIBLE="ordinals-only")
    proc, report = run_report(tmp_path, [goserver, "serve", "--flow", "two-pass", "--exit-after-discovery"], env,
                              timeout=300)
    assert report is not None, proc.stderr
    (f,) = [f for f in report["findings"] if f["rule"] == "visible-devices"]
    assert "does not accept GPU- tokens" in f["summary"], f
    assert any("(goserver)" in e and "CUDA_VISIBLE_DEVICES='GPU-" in e for e in f["evidence"]), f["evidence"]


def test_the_devices_each_process_was_told_are_in_the_report(tmp_path):
    proc, report, road = discover(tmp_path, CUDASHIM_DEVICE_COUNT=2)
    rows = [d for d in report["devices"] if d["uuid"]]
    assert [(d["device"], d["cc"], d["total"], d["free"]) for d in rows] == [(0, "9.0", 80 << 30, 80 << 30),
                                                                           (1, "9.0", 80 << 30, 80 << 30)], rows
    assert rows[1]["uuid"] == "GPU-63756461-7368-696d-0000-000000000001"
    assert "Devices as each process was told" in proc.stdout


def test_llama_server_list_devices_decoded(llama_server, ggml_cuda_backend, tmp_path):
    """What llama-server --list-devices prints ("CUDA0: NAME (TOTAL MiB, FREE MiB free)", the figures
    ollama's first pass reads) is in the report from the calls behind it, beside the program's line."""
    from conftest import FAKERT

    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_BACKEND_PATH=ggml_cuda_backend, LD_PRELOAD=FAKERT,
                   FAKERT_LAYOUT="good", CUDASHIM_CC="7.5")
    proc, report = run_report(tmp_path, [llama_server, "--list-devices"], env)
    (printed,) = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("CUDA0: ")]
    (dev,) = [d for d in report["devices"] if d["device"] == 0]
    assert printed == f"CUDA0: {dev['name']} ({dev['total'] >> 20} MiB, {dev['free'] >> 20} MiB free)", (printed, dev)


def test_the_probes_compute_capability_against_the_runs_libggml_cuda(goserver, ggml_cuda_backend, tmp_path):
    """ollama's probe reads the capability from the driver (attributes 75/76), not from cudaDeviceProp:
    5.0 there is below the sm_75 the run's libggml-cuda carries, whatever ggml's own path said."""
    from test_goserver_flow import flow_env

    env = flow_env(ggml_cuda_backend, CUDASHIM_CC="5.0")
    proc, report = run_report(tmp_path, [goserver, "serve", "--flow", "two-pass", "--exit-after-discovery"], env,
                              timeout=300)
    (f,) = [f for f in report["findings"] if f["rule"] == "device-compute-capability"]
    assert "compute capability 5.0 for device 0" in f["summary"] and "sm_75" in f["summary"], f
    assert "ComputeCapabilityMajor (75) = 5" in f["evidence"][0], f["evidence"]


def test_a_capability_ggml_could_jit_but_ollama_does_not_list(goserver, ggml_cuda_backend, tmp_path):
    """ollama 0.30+ keeps a device only if its capability is exactly one of the backend's ARCHS: 9.0
    against a libggml-cuda built for 7.5 (sm_75 and PTX compute_75) is skipped by the Go server, though
    ggml alone would JIT the PTX. The tool names that rule, with the list, beside the server's line."""
    from test_goserver_flow import flow_env

    env = flow_env(ggml_cuda_backend, CUDASHIM_CC="9.0")
    proc, report = run_report(tmp_path, [goserver, "serve", "--flow", "two-pass", "--exit-after-discovery"], env,
                              timeout=300)
    assert 'msg="compute capability not in compiled architectures"' in proc.stdout + proc.stderr
    (f,) = [f for f in report["findings"] if f["rule"] == "device-compute-capability"]
    assert "compute capability 9.0 for device 0" in f["summary"] and "not one of the architectures" in f["summary"]
    assert "JIT" in f["summary"] and any("ARCHS = 750" in e for e in f["evidence"]), f
    assert "one of 750" in f["fix"], f["fix"]


def test_compressed_code_under_a_driver_older_than_cuda_12_4(goserver, ggml_cuda_backend, tmp_path):
    """The run's libggml-cuda carries sm_75 cubins and compressed compute_75 PTX: a device of 8.9 needs
    the PTX, and the driver the shim reports (CUDA 12.2) predates compressed code. Read from the fat
    binary's entry flags, against the probe's own answers (attributes 75/76, cuDriverGetVersion)."""
    from test_goserver_flow import flow_env

    env = flow_env(ggml_cuda_backend, CUDASHIM_CC="8.9", CUDASHIM_DRIVER_VERSION="12020")
    proc, report = run_report(tmp_path, [goserver, "serve", "--flow", "two-pass", "--exit-after-discovery"], env,
                              timeout=300)
    (f,) = [f for f in report["findings"] if f["rule"] == "compressed-fatbin"]
    assert "(PTX compute_75) compressed" in f["summary"] and "CUDA 12.2" in f["summary"], f["summary"]
    assert any("flags hold 0x2000" in e for e in f["evidence"]) and "CMAKE_CUDA_ARCHITECTURES=89" in f["fix"]
    # the same device under a driver that reads compressed code: no such finding
    env = flow_env(ggml_cuda_backend, CUDASHIM_CC="8.9", CUDASHIM_DRIVER_VERSION="12040")
    proc, report = run_report(tmp_path, [goserver, "serve", "--flow", "two-pass", "--exit-after-discovery"], env,
                              timeout=300)
    assert not [f for f in report["findings"] if f["rule"] == "compressed-fatbin"], report["findings"]


def test_a_probe_told_compute_capability_0_0(tmp_path):
    """No libggml-cuda in this run: only 0.0 is known to be wrong."""
    proc, report, _ = discover(tmp_path, CUDASHIM_CC="0.0")
    (f,) = [f for f in report["findings"] if f["rule"] == "device-compute-capability"]
    assert "compute capability 0.0" in f["summary"], f
