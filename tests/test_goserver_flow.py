"""The ollama-shaped Go server's two-pass discovery (issue #19 item 1), ollama 0.30+'s flow:
pass 1 runs `goserver runner` (the real libggml-cuda) and `goserver probe` (what `ollama
gpu-discover` calls, on the bundled driver and NVML shims), filters with ollama's log lines,
then pass 2 re-runs the runner per device under CUDA_VISIBLE_DEVICES and GGML_CUDA_INIT=1.
Plain runs, no gdb.

The bundled driver shim cannot get NVIDIA's cudart past cuGetExportTable, so the runner finds
a device only with the fake runtime (shim/build/variants/fakert, FAKERT_LAYOUT=good) preloaded:
libggml-cuda is still the real one, and its own cuDeviceGet goes to the driver shim, which
applies CUDA_VISIBLE_DEVICES. The pinned libggml-cuda is built for sm_75 only (its ARCHS),
so the healthy device is a 7.5 one."""
from __future__ import annotations

import re

import pytest

from conftest import FAKERT, SHIM_BUILD
from test_real_programs import go_env, run_plain

# The bundled shim's default UUID: "cudashim" and the ordinal, as ollama and nvidia-smi print it
UUID0 = "GPU-63756461-7368-696d-0000-000000000000"
SERVE = ("serve", "--exit-after-discovery")


def flow_env(backend, **extra):
    """The healthy set-up, then EXTRA; no other CUDASHIM_/GOSERVER_/FAKERT_ knob from outside."""
    want = {"LD_PRELOAD": FAKERT, "FAKERT_LAYOUT": "good", "CUDASHIM_CC": "7.5", "GOSERVER_FLOW": "two-pass",
            **extra}
    env = go_env(backend, shim=SHIM_BUILD, **want)
    for k in list(env):
        if k.startswith(("CUDASHIM_", "GOSERVER_", "FAKERT_", "GGML_CUDA_INIT")) and k not in want:
            del env[k]
    return env


def serve(goserver, backend, **extra):
    proc = run_plain([goserver, *SERVE], flow_env(backend, **extra))
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def pass2_visible(log):
    """The CUDA_VISIBLE_DEVICES each second-pass runner got."""
    return re.findall(r'msg="started runner" pid=\d+ env="CUDA_VISIBLE_DEVICES=(\S+) GGML_CUDA_INIT=1"', log)


def computes(log):
    return re.findall(r'msg="inference compute" (.*)', log)


def test_two_pass_finds_the_device(goserver, ggml_cuda_backend):
    log = serve(goserver, ggml_cuda_backend)
    assert "flow=two-pass" in log
    assert pass2_visible(log) == ["0"]  # 0.30+: the ordinal
    [line] = computes(log)
    assert line.startswith(f"id={UUID0} library=CUDA compute=7.5 name=CUDA0 "), line
    assert 'description="Fake GPU (fakert)"' in line and "driver=12.9" in line and "pci_id=0000:00:05.0" in line
    assert 'total="80.0 GiB"' in line  # the driver's cuDeviceTotalMem_v2 (the probe), not the runtime's
    assert "filtering" not in log and "skipping" not in log


def test_per_libdir_stays_the_default(goserver, ggml_cuda_backend):
    env = flow_env(ggml_cuda_backend)
    del env["GOSERVER_FLOW"]
    proc = run_plain([goserver, *SERVE], env)
    assert proc.returncode == 0, proc.stderr
    assert "flow=two-pass" not in proc.stderr and not pass2_visible(proc.stderr)
    [line] = computes(proc.stderr)
    assert line.startswith('id=0 library=cuda name="Fake GPU (fakert)"'), line
    # and the flag picks the two-pass flow without the variable
    log = run_plain([goserver, *SERVE, "--flow", "two-pass"], env).stderr
    assert pass2_visible(log) == ["0"] and f"id={UUID0} library=CUDA" in log


def test_old_nvml_driver_leaves_cpu(goserver, ggml_cuda_backend):
    """A fake NVML answering "12.4" (a CUDA version) reads as driver 12."""
    log = serve(goserver, ggml_cuda_backend, CUDASHIM_NVML_DRIVER_VERSION="12.4")
    assert 'msg="NVIDIA driver too old" driver="12.4"' in log
    assert not pass2_visible(log)
    assert computes(log) == ['id=cpu library=cpu compute="" name=cpu total_vram="0 B"']


def test_zero_memory_is_a_pseudo_device(goserver, ggml_cuda_backend):
    log = serve(goserver, ggml_cuda_backend, CUDASHIM_VRAM_MIB=0)
    assert f'msg="skipping pseudo-device with zero memory" id={UUID0} library=CUDA' in log
    assert not pass2_visible(log)
    assert computes(log)[0].startswith("id=cpu library=cpu")


def test_compute_capability_not_in_archs(goserver, ggml_cuda_backend):
    log = serve(goserver, ggml_cuda_backend, CUDASHIM_CC="9.0")
    assert (f'msg="compute capability not in compiled architectures" id={UUID0} library=CUDA compute=9.0 '
            'archs="750"') in log
    assert computes(log)[0].startswith("id=cpu library=cpu")
    # the list the backend reports can be overridden
    log = serve(goserver, ggml_cuda_backend, CUDASHIM_CC="9.0", GOSERVER_ARCHS="750,900")
    assert computes(log)[0].startswith(f"id={UUID0} library=CUDA compute=9.0")


@pytest.mark.parametrize("visible, shim_bug, kept", [
    ("uuid", None, True),  # the shim parses GPU- tokens like the driver: 0.13-0.24 works
    ("uuid", {"CUDASHIM_VISIBLE": "ordinals-only"}, False),  # ollama #13800's shim
    ("ordinal", {"CUDASHIM_VISIBLE": "ordinals-only"}, True),  # 0.30+ passes ordinals
    ("uuid", {"CUDASHIM_UUID": "per-process"}, False),  # ollama #14031: the UUID moved
    ("ordinal", {"CUDASHIM_UUID": "per-process"}, True),
], ids=["uuid", "uuid-ordinals-only-shim", "ordinal-ordinals-only-shim", "uuid-per-process-uuid",
        "ordinal-per-process-uuid"])
def test_second_pass(goserver, ggml_cuda_backend, visible, shim_bug, kept):
    log = serve(goserver, ggml_cuda_backend, GOSERVER_VISIBLE=visible, **(shim_bug or {}))
    [given] = pass2_visible(log)
    if visible == "ordinal":
        assert given == "0"
    else:
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", given), given
    filtered = f'msg="filtering device which didn\'t fully initialize" id={given} library=CUDA'
    if kept:
        assert filtered not in log
        assert computes(log)[0].startswith("id=GPU-") and "library=CUDA compute=7.5" in computes(log)[0]
    else:
        assert filtered in log
        assert computes(log)[0].startswith("id=cpu library=cpu")


def probe_env(**extra):
    env = go_env(None, shim=SHIM_BUILD, **extra)
    for k in list(env):
        if k.startswith("CUDASHIM_") and k not in extra:
            del env[k]
    return env


def test_probe_prints_what_gpu_discover_reads(goserver):
    proc = run_plain([goserver, "probe"], probe_env(CUDASHIM_UUID="GPU-0123ABCD-4567-89ab-cdef-0123456789a0",
                                                    CUDASHIM_DEVICE_COUNT=2, CUDASHIM_CC="8.6"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == ('device ordinal=0 uuid="GPU-0123abcd-4567-89ab-cdef-0123456789a0" cc=8.6 '
                        'name="NVIDIA H100 80GB HBM3 (cudashim)" total=85899345920 pci="0000:00:05.0"')
    # the shim's second device: its UUID's last byte plus the ordinal (the shim gives every
    # device the one CUDASHIM_PCI_BUS_ID, so the bus id is not pinned here)
    device1 = (r'device ordinal=1 uuid="GPU-0123abcd-4567-89ab-cdef-0123456789a1" cc=8.6 '
               r'name="NVIDIA H100 80GB HBM3 \(cudashim\)" total=85899345920 pci="[0-9a-f:.]+"')
    assert re.fullmatch(device1, lines[1]), lines[1]
    assert lines[2:] == ['driver cuda=12090 nvml="575.57.08"', "devices=2"]


def test_probe_names_failing_calls_and_goes_on(goserver):
    proc = run_plain([goserver, "probe"], probe_env(
        CUDASHIM_FAIL="cuDeviceGetUuid_v2=500,cuDeviceTotalMem_v2=1,nvmlSystemGetDriverVersion=999"))
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == ["goserver probe: cuDeviceTotalMem_v2 failed: result=1",
                                        "goserver probe: cuDeviceGetUuid_v2 failed: result=500",
                                        "goserver probe: nvmlSystemGetDriverVersion failed: result=999"]
    # cuDeviceGetUuid answered instead; no memory; no NVML version
    assert f'uuid="{UUID0}"' in proc.stdout and " total=0 " in proc.stdout and 'nvml=""' in proc.stdout
    # cuInit failing: no devices, the driver version is still asked for
    proc = run_plain([goserver, "probe"], probe_env(CUDASHIM_FAIL="cuInit=100"))
    assert proc.stderr.splitlines() == ["goserver probe: cuInit failed: result=100"]
    assert proc.stdout.splitlines() == ['driver cuda=12090 nvml="575.57.08"', "devices=0"]


def test_a_stuck_probe_is_killed(goserver, ggml_cuda_backend):
    log = serve(goserver, ggml_cuda_backend, CUDASHIM_HANG="cuDeviceGetName", GOSERVER_PROBE_TIMEOUT="1s")
    assert re.search(r'msg="probe did not finish before the timeout: killed" pid=\d+ signal=SIGKILL timeout=1s', log)
    assert len(computes(log)) == 1  # discovery still ends
