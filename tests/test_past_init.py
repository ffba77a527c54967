"""Past init (issue #11): the real ggml accepts a device the shim describes wrongly. Real gdb, the
real libggml-cuda, the bundled fake runtime (shim/fakert.c) preloaded in place of NVIDIA's
libcudart.so.12, and the seed-style driver shim as libcuda.so.1."""
from conftest import SHIM_BUILD, env_with, run_report

FAKERT = SHIM_BUILD / "variants" / "fakert" / "libcudart.so.12"
SEED = SHIM_BUILD / "variants" / "seed"


def fakert_run(stack, probe, tmp_path, layout):
    assert FAKERT.exists(), "shim/build/variants/fakert missing: run 'make -C shim'"
    env = env_with(LD_PRELOAD=FAKERT, LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda, FAKERT_LAYOUT=layout)
    return run_report(tmp_path, [probe], env)


def props_of(report):
    return [c["args"]["prop"] for c in report["calls"]
            if c["function"] == "cudaGetDeviceProperties_v2" and c["returned"]]


def test_wrong_layout_compute_capability_0_0_and_0_bytes(stack, probe, tmp_path):
    proc, report = fakert_run(stack, probe, tmp_path, "handmade")
    # what the write-ups saw: ggml carries on with a device it cannot use
    assert "compute capability 0.0, VMM: yes, VRAM: 0 MiB" in proc.stderr
    assert "probe: cuda devices: 1" in proc.stdout
    assert proc.returncode == 1, proc.stdout
    assert report["errors"] == []
    findings = {f["rule"]: f for f in report["findings"]}
    assert set(findings) == {"device-compute-capability", "device-no-memory"}
    cc = findings["device-compute-capability"]
    assert "compute capability 0.0 for device 0, below what libggml-cuda" in cc["summary"]
    assert "(sm_75 and PTX compute_75)" in cc["summary"]
    ev = "\n".join(cc["evidence"])
    assert "set prop.major = 0, prop.minor = 0 (offsets 360/364)" in ev
    assert "a compute capability 8.9 at offsets 264/268, which CUDA 12 reads as uuid" in ev
    assert "lacks what CUDA 12 has in between (uuid, luid, luidDeviceNodeMask)" in ev
    assert "didn't fully initialize" in ev and "driver_types.h" in cc["fix"]
    mem = findings["device-no-memory"]
    assert "prop.totalGlobalMem (offset 288) = 0 bytes" in "\n".join(mem["evidence"])
    assert "(24.0 GiB) at offset 256" in "\n".join(mem["evidence"])
    (prop, *_) = props_of(report)
    assert prop["name"] == "Fake GPU (fakert)" and (prop["major"], prop["minor"], prop["totalGlobalMem"]) == (0, 0, 0)
    # the calls table shows the struct by field name
    assert "prop: name='Fake GPU (fakert)', major=0, minor=0, totalGlobalMem=0" in proc.stdout


def test_blank_properties(stack, probe, tmp_path):
    proc, report = fakert_run(stack, probe, tmp_path, "zero")
    assert "Device 0: , compute capability 0.0" in proc.stderr
    assert proc.returncode == 1
    (f,) = report["findings"]
    assert f["rule"] == "device-without-properties" and "cudaGetDeviceCount says 1 device(s)" in f["summary"]
    assert "left all 1032 bytes of cudaDeviceProp zero" in "\n".join(f["evidence"])


def test_good_device_is_no_finding(stack, probe, tmp_path):
    proc, report = fakert_run(stack, probe, tmp_path, "good")
    assert "Fake GPU (fakert), compute capability 8.9, VMM: yes, VRAM: 24576 MiB" in proc.stderr
    assert proc.returncode == 0, proc.stdout
    assert report["findings"] == [] and "No CUDA init failure seen." in proc.stdout
    (prop, *_) = props_of(report)
    assert (prop["major"], prop["minor"], prop["totalGlobalMem"], prop["multiProcessorCount"]) == (8, 9, 24 << 30, 128)
    assert prop["uuid"].startswith("GPU-6e1f2a44")
