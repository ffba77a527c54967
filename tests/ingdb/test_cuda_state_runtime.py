"""Inside real gdb: cuda-state on a live probe whose CUDA runtime is a shim (issue #11 item 3):
the fake runtime preloaded under NVIDIA's soname, under its own soname beside NVIDIA's, as a
drop-in the loader bypassed, and missing an import libggml-cuda needs (stopped in ld.so's error)."""
import json
import os
import tempfile

import gdb

from .fakert_build import build_fakert

ROOT = os.environ["INGDB_ROOT"]
PROBE = os.environ["INGDB_PROBE"]
STACK_LIB = os.path.realpath(os.environ["INGDB_STACK_LIB"])
VARIANTS = os.path.realpath(os.path.join(ROOT, "shim", "build", "variants"))  # /proc/PID/maps names real paths
SEED = os.path.join(VARIANTS, "seed")
FAKERT = os.path.join(VARIANTS, "fakert", "libcudart.so.12")
FAKERT_OWN = os.path.join(VARIANTS, "fakert-own", "libfakert.so")
NVIDIA_CUDART = os.path.join(STACK_LIB, "libcudart.so.12")


def _out(cmd):
    return gdb.execute(cmd, to_string=True)


def _stop_in(function, preload="", library_path=SEED):
    gdb.execute(f"set environment LD_LIBRARY_PATH={library_path}")
    gdb.execute(f"set environment LD_PRELOAD={preload}")
    gdb.execute(f"file {PROBE}")
    bp = gdb.Breakpoint(function, internal=True)
    gdb.execute("run", to_string=True)
    bp.delete()
    assert gdb.selected_inferior().pid, f"the probe never reached {function}"


def _state():
    return json.loads(_out("cuda-state --json"))[0]


def _roles(state):
    return {os.path.realpath(r["path"]): r for r in state["roles"]}


def test_runtime_replacement_preloaded():
    _stop_in("ggml_backend_cuda_get_device_count", FAKERT)
    state = _state()
    roles = _roles(state)
    fake = roles[FAKERT]
    assert (fake["role"], fake["kind"], fake["loaded_via"]) == ("runtime", "runtime replacement", "LD_PRELOAD")
    assert roles[os.path.join(SEED, "libcuda.so.1")]["loaded_via"] == "LD_LIBRARY_PATH"
    assert NVIDIA_CUDART not in roles  # replaced, never loaded
    # its globals, typed through DWARF; never libggml-cuda's
    shims = {s["library"]: s for s in state["shim_state"]}
    assert set(shims) == {FAKERT, os.path.join(SEED, "libcuda.so.1")}
    g = shims[FAKERT]["globals"]
    assert shims[FAKERT]["how"] == "DWARF"
    assert g["g_layout"]["value"] == "FAKERT_HANDMADE" and g["g_layout"]["type"] == "enum fakert_layout"
    assert g["g_device_name"]["value"] == "Fake GPU (fakert)" and g["g_device_count"]["value"] == 1
    assert g["g_vram_bytes"]["value"] == 24 << 30 and (g["g_cc_major"]["value"], g["g_cc_minor"]["value"]) == (8, 9)
    assert g["g_call_count"]["value"] >= 1 and g["g_driver_init_result"]["value"] == 0
    assert g["g_driver"]["value"].startswith("0x") and g["g_driver"]["type"] == "void *"
    (check,) = state["runtime_imports"]
    assert check["missing"] == [] and check["imported"] == 57 and check["version"] == "libcudart.so.12"
    assert check["summary"].startswith("fakert/libcudart.so.12 exports all 57 symbols libggml-cuda")
    (note,) = state["notes"]
    assert "preloaded under NVIDIA's soname libcudart.so.12" in note and f"({NVIDIA_CUDART}) is never loaded" in note
    assert state["versions"]["cudart file (libcudart.so.12)"] == \
        "libcudart.so.12 is the shim's soname, not a CUDA version"
    text = _out("cuda-state --color never")
    assert "loaded via" in text and "runtime replacement" in text
    assert "runtime exports: fakert/libcudart.so.12 exports all 57 symbols" in text
    assert "note: fakert/libcudart.so.12 is preloaded under NVIDIA's soname" in text
    assert "state of " + FAKERT in text and "'Fake GPU (fakert)'" in text and "'FAKERT_HANDMADE'" in text
    gdb.execute("kill", to_string=True)


def test_runtime_shim_under_its_own_soname():
    _stop_in("ggml_backend_cuda_get_device_count", FAKERT_OWN)
    state = _state()
    roles = _roles(state)
    assert (roles[FAKERT_OWN]["kind"], roles[FAKERT_OWN]["loaded_via"]) == ("runtime shim under its own soname",
                                                                              "LD_PRELOAD")
    nvidia = roles[NVIDIA_CUDART]
    assert nvidia["kind"] == "NVIDIA runtime" and nvidia["loaded_via"].startswith("DT_RPATH of libggml-cuda")
    assert {s["library"] for s in state["shim_state"]} == {FAKERT_OWN, os.path.join(SEED, "libcuda.so.1")}
    (w,) = [w for w in state["warnings"] if w.startswith("two runtimes")]
    assert "bind to libfakert.so for the 57 of 57 it defines" in w and "none of them binds to it" in w
    assert state["versions"]["cudart file (libfakert.so)"] == "libfakert.so is the shim's soname, not a CUDA version"
    assert state["versions"]["cudart file (libcudart.so.12)"] == "12"
    gdb.execute("kill", to_string=True)


def test_own_soname_without_the_v2_name_splits_the_imports():
    """cudaGetDeviceProperties_v2 binds to NVIDIA's runtime, the other 56 to the preload."""
    own_v1 = build_fakert(os.path.join(tempfile.mkdtemp(), "libfakertv1.so"), "libfakertv1.so",
                          hide=("cudaGetDeviceProperties_v2",),
                          include=os.path.join(os.path.dirname(STACK_LIB), "include"))
    _stop_in("cudaGetDeviceCount", own_v1)  # ggml's first runtime call, in the preload
    state = _state()
    (w,) = [w for w in state["warnings"] if w.startswith("two runtimes")]
    assert "bind to libfakertv1.so for the 56 of 57" in w
    assert w.endswith("to libcudart.so.12 for the other 1 (cudaGetDeviceProperties_v2)")
    (check,) = state["runtime_imports"]
    assert [m["symbol"] for m in check["missing"]] == ["cudaGetDeviceProperties_v2"]
    gdb.execute("kill", to_string=True)


def test_missing_imports_while_ld_so_refuses_libggml_cuda():
    """Stopped where ld.so raises "symbol lookup error": libggml-cuda is still mapped."""
    _stop_in("_dl_signal_exception", os.path.join(VARIANTS, "fakert-nofat", "libcudart.so.12"))
    state = _state()
    (check,) = state["runtime_imports"]
    assert {m["symbol"]: m["stage"] for m in check["missing"]} == {"__cudaRegisterFatBinary": "registration",
                                                                   "__cudaRegisterFatBinaryEnd": "registration"}
    text = _out("cuda-state --color never")
    assert "runtime exports: fakert-nofat/libcudart.so.12 lacks 2 of the 57 symbols" in text
    assert "missing (registration, needed at dlopen" in text and "__cudaRegisterFatBinary@libcudart.so.12" in text
    gdb.execute("kill", to_string=True)


def test_drop_in_bypassed_by_ggmls_rpath():
    _stop_in("ggml_backend_cuda_get_device_count", "", f"{os.path.dirname(FAKERT)}:{SEED}")
    state = _state()
    assert FAKERT not in _roles(state) and _roles(state)[NVIDIA_CUDART]["kind"] == "NVIDIA runtime"
    (w,) = [w for w in state["warnings"] if "bypassed" in w]
    assert w.startswith(f"{FAKERT} (LD_LIBRARY_PATH) is bypassed: libggml-cuda")
    assert "DT_RPATH, searched before LD_LIBRARY_PATH" in w and "LD_PRELOAD it instead" in w
    assert state["runtime_imports"] == [] and state["notes"] == []
    gdb.execute("kill", to_string=True)


def test_odd_preload_and_library_path_entries():
    """Relative, missing and empty entries in the process's LD_PRELOAD and LD_LIBRARY_PATH: one
    answer, no traceback."""
    weird = tempfile.mkdtemp()
    os.mkfifo(os.path.join(weird, "libcudart.so.12"))  # a FIFO named like the runtime: never opened
    gdb.execute(f"cd {os.path.dirname(os.path.dirname(FAKERT))}")
    _stop_in("ggml_backend_cuda_get_device_count", "fakert/libcudart.so.12 /nonexistent/libx.so",
             f"::{weird}:relative/dir:{SEED}")
    state = _state()
    assert _roles(state)[FAKERT]["loaded_via"] == "LD_PRELOAD"
    assert not [w for w in state["warnings"] if "bypassed" in w]
    _out("cuda-state --color never --var g_layout --var g_nope")
    gdb.execute("kill", to_string=True)
