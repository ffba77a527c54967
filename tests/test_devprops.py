"""The device a shim reports (issue #11): CUDA 12's cudaDeviceProp decoded from real bytes (the
bundled fake runtime's, loaded here with ctypes), the layout generated from NVIDIA's headers,
the fatbin targets of the real libggml-cuda, and the rules on timelines of such calls."""
import ctypes
import struct
import sys

import pytest

from conftest import ROOT, SHIM_BUILD
from gdb_cudashim.core import devprops, devprops_layout
from gdb_cudashim.core.calls import SPECS, decode_struct, struct_size
from gdb_cudashim.core.rules import analyze
from gdb_cudashim.core.timeline import Call, Timeline

# the build that exports its g_* globals: the test switches g_layout through ctypes
FAKERT = SHIM_BUILD / "variants" / "fakert-globals" / "libcudart.so.12"
LAYOUTS = {"handmade": 0, "zero": 1, "good": 2}
RT, CU = "/x/libcudart.so.12", "/x/libggml-cuda.so"


def test_layout_is_regenerated_identically_from_the_headers(stack):
    sys.path.insert(0, str(ROOT / "tools"))
    import gen_devprops

    assert gen_devprops.generate(stack.include) == (ROOT / "gdb_cudashim/core/devprops_layout.py").read_text()


def test_layout_matches_the_measured_offsets():
    f = {name: (off, size) for name, off, size, _ in devprops_layout.FIELDS}
    assert devprops_layout.SIZE == 1032
    assert f["totalGlobalMem"] == (288, 8) and f["major"][0] == 360 and f["minor"][0] == 364
    assert f["multiProcessorCount"][0] == 388 and f["name"] == (0, 256)


@pytest.fixture(scope="module")
def fakert():
    assert FAKERT.exists(), "shim/build/variants/fakert missing: run 'make -C shim'"
    lib = ctypes.CDLL(str(FAKERT))
    count = ctypes.c_int()
    assert lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 and count.value == 1

    def prop(layout):
        ctypes.c_int.in_dll(lib, "g_layout").value = LAYOUTS[layout]
        buf = ctypes.create_string_buffer(b"\xaa" * 1032, 1032)
        assert lib.cudaGetDeviceProperties_v2(buf, 0) == 0
        return decode_struct(SPECS["cudaGetDeviceProperties_v2"].args[0][1], buf.raw)

    return prop


def test_decode_good_device(fakert):
    p = fakert("good")
    assert p["name"] == "Fake GPU (fakert)" and (p["major"], p["minor"]) == (8, 9)
    assert p["totalGlobalMem"] == 24 << 30 and p["multiProcessorCount"] == 128 and p["pciBusID"] == 5
    assert p["uuid"].startswith("GPU-6e1f2a44-") and p["warpSize"] == 32
    assert devprops.raw(p)[288:296] == struct.pack("<Q", 24 << 30)


def test_decode_handmade_layout_says_where_the_values_went(fakert):
    p = fakert("handmade")
    assert p["name"] == "Fake GPU (fakert)" and (p["major"], p["minor"], p["totalGlobalMem"]) == (0, 0, 0)
    assert devprops.written_fields(p) == ["name", "uuid", "luid"]
    text = " ".join(devprops.misplaced(p))
    assert "24.0 GiB) at offset 256" in text and "compute capability 8.9 at offsets 264/268" in text
    assert "32 bytes early" in text and "uuid, luid, luidDeviceNodeMask" in text


def test_decode_blank_and_nvml_memory(fakert):
    assert devprops.is_blank(fakert("zero"))
    kind = SPECS["nvmlDeviceGetMemoryInfo"].args[1][1]
    assert struct_size(kind) == 24
    assert decode_struct(kind, struct.pack("<QQQ", 10, 4, 6)) == {"total": 10, "free": 4, "used": 6}
    assert decode_struct(kind, b"short") is None


def test_fatbin_targets_of_the_real_libggml_cuda(stack):
    t = devprops.fatbin_targets(str(stack.ggml_cuda))
    assert t == {"sm": [75], "ptx": [75], "compressed_sm": [], "compressed_ptx": [75]}  # its PTX is compressed
    assert devprops.code_for(t, 7, 5) == ("sm", 75) and devprops.code_for(t, 8, 9) == ("ptx", 75)
    assert devprops.code_for(t, 6, 1) is None
    assert not devprops.runs_on(t, 0, 0) and not devprops.runs_on(t, 6, 1)
    assert devprops.runs_on(t, 7, 5) and devprops.runs_on(t, 8, 9)
    assert devprops.fatbin_targets(str(FAKERT)) is None


# -- the rules, on timelines of calls carrying those bytes ---------------------------------------

def timeline(*calls):
    tl = Timeline()
    for function, args in calls:
        lib = "/x/libnvidia-ml.so.1" if function.startswith("nvml") else "/x/libcuda.so.1" if function.startswith("cuD") else RT
        tl.add(Call(seq=tl.next_seq(), pid=7, tid=7, function=function, library=lib, caller=CU, args=args,
                    result=0, returned=True))
    return tl


def rules(tl):
    return [f.rule for f in analyze(tl)]


def test_handmade_device_findings(fakert):
    tl = timeline(("cudaGetDeviceCount", {"count": 1}),
                  ("cudaGetDeviceProperties_v2", {"device": 0, "prop": fakert("handmade")}),
                  ("cudaMemGetInfo", {"free": 0, "total": 0}),
                  ("cudaDeviceGetAttribute", {"attr": 75, "device": 0, "value": 8}))
    findings = {f.rule: f for f in analyze(tl)}
    assert set(findings) == {"device-compute-capability", "device-no-memory"}
    cc = findings["device-compute-capability"]
    assert "compute capability 0.0" in cc.summary
    ev = "\n".join(cc.evidence)
    assert "prop.major = 0, prop.minor = 0 (offsets 360/364)" in ev
    assert "cudaDeviceGetAttribute(ComputeCapabilityMajor) in libcudart.so.12 = 8: the two answers disagree" in ev
    assert "uuid, luid" in ev and "compute capability 8.9 at offsets 264/268" in ev
    assert "didn't fully initialize" in ev and "major at 360" in cc.fix
    mem = findings["device-no-memory"]
    assert "cudaGetDeviceProperties_v2, cudaMemGetInfo" in mem.summary
    assert "total_vram=\"0 B\"" in "\n".join(mem.evidence) and "cudaMemGetInfo" in mem.fix


def test_compute_capability_below_the_built_targets(fakert, stack):
    p = fakert("good")
    p["major"], p["minor"] = 6, 1
    tl = timeline(("cudaGetDeviceProperties_v2", {"device": 0, "prop": p}))
    tl.calls[0].caller = str(stack.ggml_cuda)
    (f,) = analyze(tl)
    assert f.rule == "device-compute-capability" and "6.1 for device 0, below what" in f.summary and "sm_75" in f.summary
    assert "needs 7.5 or newer" in f.fix


def test_blank_device_is_one_finding_not_four(fakert):
    tl = timeline(("cudaGetDeviceCount", {"count": 1}),
                  ("cudaGetDeviceProperties_v2", {"device": 0, "prop": fakert("zero")}))
    (f,) = analyze(tl)
    assert f.rule == "device-without-properties" and "described nothing" in f.summary
    assert "all 1032 bytes of cudaDeviceProp zero" in "\n".join(f.evidence)


def test_failed_properties_with_a_device_count():
    tl = timeline(("cudaGetDeviceCount", {"count": 2}), ("cudaGetDeviceProperties_v2", {"device": 0}))
    tl.calls[1].result = 101
    assert "device-without-properties" in rules(tl)


def test_empty_name(fakert):
    p = fakert("good")
    p["name"] = ""
    tl = timeline(("cudaGetDeviceProperties_v2", {"device": 0, "prop": p}), ("cuDeviceGetName", {"name": "", "dev": 0}))
    (f,) = analyze(tl)
    assert f.rule == "device-empty-name" and "prop.name" in f.evidence[0] and "cuDeviceGetName" in f.evidence[1]


def test_nvml_and_cuda_disagree(fakert):
    tl = timeline(("cudaGetDeviceCount", {"count": 1}), ("nvmlDeviceGetCount_v2", {"deviceCount": 2}),
                  ("cudaGetDeviceProperties_v2", {"device": 0, "prop": fakert("good")}),
                  ("nvmlDeviceGetMemoryInfo", {"memory": {"total": 8 << 30, "free": 8 << 30, "used": 0}}))
    (f,) = analyze(tl)
    assert f.rule == "nvml-cuda-disagree"
    ev = "\n".join(f.evidence)
    assert "= 1 devices, nvmlDeviceGetCount_v2() in libnvidia-ml.so.1 = 2" in ev and "(8192 MiB)" in ev


def test_nvml_zero_memory_and_cuda_total_mem(fakert):
    tl = timeline(("cuDeviceTotalMem_v2", {"bytes": 0, "dev": 0}),
                  ("nvmlDeviceGetMemoryInfo", {"memory": {"total": 0, "free": 0, "used": 0}}))
    (f,) = analyze(tl)
    assert f.rule == "device-no-memory" and "cuDeviceTotalMem_v2, nvmlDeviceGetMemoryInfo" in f.summary


def test_healthy_device_gives_no_finding(fakert):
    tl = timeline(("cudaGetDeviceCount", {"count": 1}), ("nvmlDeviceGetCount_v2", {"deviceCount": 1}),
                  ("cudaGetDeviceProperties_v2", {"device": 0, "prop": fakert("good")}),
                  ("cudaMemGetInfo", {"free": 23 << 30, "total": 24 << 30}),
                  ("cuDeviceGetAttribute", {"pi": 8, "attrib": 75, "dev": 0}),
                  ("cuDeviceGetName", {"name": "Fake GPU (fakert)", "dev": 0}),
                  ("cuDeviceTotalMem_v2", {"bytes": 24 << 30, "dev": 0}),
                  ("nvmlDeviceGetMemoryInfo", {"memory": {"total": 24 << 30, "free": 23 << 30, "used": 1 << 30}}))
    assert analyze(tl) == []


def test_one_wrong_field_is_not_called_another_layout(fakert):
    p = fakert("good")
    p["major"] = p["minor"] = 0
    p["nonzero"] = [r for r in p["nonzero"] if r[0] != 360]  # the bytes agree with the decoded fields
    tl = timeline(("cudaGetDeviceProperties_v2", {"device": 0, "prop": p}))
    (f,) = analyze(tl)
    assert f.rule == "device-compute-capability" and not any("another layout" in e for e in f.evidence)
