"""Inside real gdb, on the real stack: cuda-state and cuda-patch."""
import json
import os
import subprocess
import tempfile

import gdb

ROOT = os.environ["INGDB_ROOT"]
PROBE = os.environ["INGDB_PROBE"]
SHIM = os.path.join(ROOT, "shim", "build")


def _out(cmd):
    return gdb.execute(cmd, to_string=True)


def _stop_in(function, libdir=SHIM):
    gdb.execute(f"set environment LD_LIBRARY_PATH={libdir}")
    gdb.execute(f"file {PROBE}")
    bp = gdb.Breakpoint(function, internal=True)
    gdb.execute("run", to_string=True)
    bp.delete()


def _refused(pairs):
    """Each (command, words): gdb refuses it with one line holding WORDS."""
    for cmd, words in pairs:
        try:
            gdb.execute(cmd, to_string=True)
        except gdb.error as exc:
            assert words in str(exc) and "\n" not in str(exc), (cmd, str(exc))
        else:
            raise AssertionError(cmd)


def _error_of_run():
    """Run the probe to its end; return ggml's error line (captured by catch-init-error)."""
    gdb.execute("catch-init-error --no-follow-children", to_string=True)
    out = tempfile.mktemp(suffix=".json")
    gdb.execute(f"cuda-run --no-report --json {out}", to_string=True)
    report = json.load(open(out))
    gdb.execute("catch-init-error --disarm", to_string=True)
    return report


def test_cuda_state_with_dwarf():
    _stop_in("cuGetProcAddress_v2")
    gdb.execute("finish", to_string=True)
    state = json.loads(_out("cuda-state --json"))[0]
    roles = {r["role"]: r for r in state["roles"]}
    assert roles["driver"]["kind"] == "bundled cudashim" and roles["driver"]["debug_info"]
    assert roles["runtime"]["kind"] == "NVIDIA runtime" and roles["runtime"]["soname"] == "libcudart.so.12"
    assert roles["ggml-cuda"]["kind"] == "ggml CUDA backend"
    (shim,) = state["shim_state"]
    g = shim["globals"]
    assert shim["how"] == "DWARF"
    assert g["g_gpu_info"]["value"]["cc_major"] == 9 and g["g_gpu_info"]["value"]["name"].startswith("NVIDIA H100")
    assert g["g_gpu_info"]["type"] == "struct shim_gpu_info"
    assert g["g_proc_lookups"]["value"] >= 1 and g["g_mode"]["value"] == "SHIM_MODE_FAKE"
    assert state["environment"]["LD_LIBRARY_PATH"] == SHIM
    assert "detach-on-fork" in state["gdb_settings"]
    text = _out("cuda-state --color never --var g_initialized --var g_nope")
    assert "g_initialized" in text and "not a variable in this shim: g_nope;" in text
    assert not any(line.startswith("g_call_count") for line in text.splitlines()), text  # named, not shown
    gdb.execute("kill", to_string=True)


def test_cuda_state_without_dwarf():
    tmp = tempfile.mkdtemp()
    subprocess.run(["strip", "-g", "-o", os.path.join(tmp, "libcuda.so.1"), os.path.join(SHIM, "libcuda.so.1")],
                   check=True)
    _stop_in("cuGetExportTable", tmp)
    state = json.loads(_out("cuda-state --json"))[0]
    (shim,) = state["shim_state"]
    assert shim["how"] == "ELF symbol table"
    g = shim["globals"]
    assert g["g_driver_version"]["value"] == 12090 and g["g_driver_version"]["size"] == 4
    assert g["g_gpu_info"]["size"] == 144 and isinstance(g["g_gpu_info"]["value"], str)  # raw bytes, hex
    assert "raw integer" in g["g_initialized"]["source"]
    gdb.execute("kill", to_string=True)


def test_cuda_state_bad_input():
    for cmd, words in (("cuda-state", "no process"), ("cuda-state --pid 1", "no process: "),
                       ("cuda-state --pid x", "invalid int value")):
        try:
            gdb.execute(cmd, to_string=True)
        except gdb.error as exc:
            assert words in str(exc), (cmd, str(exc))
        else:
            raise AssertionError(cmd)


def test_cuda_patch_on_the_real_stack():
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}")
    gdb.execute(f"file {PROBE}")
    out = _out("cuda-patch cuInit --return CUDA_ERROR_NO_DEVICE")
    assert "#1" in out and "pending" in out
    report = _error_of_run()
    assert report["errors"][0]["text"].endswith("no CUDA-capable device is detected\n")
    patched = [c for c in report["calls"] if c["args"].get("cuda-patch") == 1]
    assert patched and patched[0]["patched_from"] == 0 and patched[0]["result"] == 100
    _out("cuda-patch cuDriverGetVersion --return SUCCESS --out 0=11080")
    report = _error_of_run()
    assert "insufficient for CUDA runtime version" in report["errors"][0]["text"]
    listing = _out("cuda-patch list")
    assert "#1 cuInit" in listing and "#2 cuDriverGetVersion" in listing and "libcuda.so.1" in listing
    _out("cuda-patch delete 2")
    assert "no CUDA-capable device" in _error_of_run()["errors"][0]["text"]
    _out("cuda-patch delete all")
    assert "named symbol not found" in _error_of_run()["errors"][0]["text"]  # the original behaviour
    assert not [b for b in gdb.breakpoints() if b.is_valid() and b.location == "cuInit"]


def test_cuda_patch_writes_strings_bytes_and_fields_within_the_callers_buffer():
    """--out str: into nvmlSystemGetDriverVersion's buffer is cut to its length argument (the
    discovery passes 80 bytes: 79 characters and the NUL), hex: writes a UUID's 16 bytes, and
    INDEX.FIELD one struct field; the recorded calls show what the program then read."""
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}")
    gdb.execute(f"file {os.path.join(ROOT, 'build', 'discover')}")
    long = "570." + "1" * 196  # ollama's reading (the text before the first '.') still sees 570
    _out(f"cuda-patch nvmlSystemGetDriverVersion --return SUCCESS --out 0=str:{long}")
    _out("cuda-patch cuDeviceGetUuid_v2 --return SUCCESS --out 0=hex:GPU-00112233-4455-6677-8899-aabbccddeeff")
    _out("cuda-patch nvmlDeviceGetMemoryInfo --return SUCCESS --out 1.total=4096")
    assert "--out 0=hex:GPU-00112233" in _out("cuda-patch list")
    out = tempfile.mktemp(suffix=".json")
    gdb.execute(f"cuda-run --no-report --json {out}", to_string=True)
    calls = json.load(open(out))["calls"]
    (version,) = [c["args"]["version"] for c in calls if c["function"] == "nvmlSystemGetDriverVersion"
                  and c["args"].get("version")]
    assert version == long[:79], len(version)
    uuids = [c["args"]["uuid"]["uuid"] for c in calls if c["function"] == "cuDeviceGetUuid_v2" and "uuid" in c["args"]]
    assert uuids == ["GPU-00112233-4455-6677-8899-aabbccddeeff"], uuids
    _out("cuda-patch delete all")
    _refused((("cuda-patch cudaGetDeviceProperties_v2 --return 0 --out 0.major=8:8", "4 bytes (int), not 8"),
              ("cuda-patch cudaGetDeviceProperties_v2 --return 0 --out 0.nope=1", "has no field 'nope'"),
              ("cuda-patch cuDeviceGetUuid_v2 --return 0 --out 0=hex:" + "00" * 17, "do not fit in argument 0 of cuDeviceGetUuid_v2"),
              ("cuda-patch cuInit --return 0 --out 0.x=1", "not a struct I know")))


def test_cuda_patch_skip_does_not_run_the_function():
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}")
    gdb.execute(f"file {PROBE}")
    _out("cuda-patch cuInit --return 100 --skip --count 1")
    bp = gdb.Breakpoint("cudaGetErrorString", internal=True)  # ggml asks for the message after the failure
    gdb.execute("run", to_string=True)
    assert int(gdb.parse_and_eval("$rdi")) == 100  # cudart passed the skipped cuInit's value through
    assert int(gdb.parse_and_eval("g_initialized")) == 0  # cuInit's body never ran
    assert int(gdb.parse_and_eval("g_in_init_phase")) == 0
    assert "hits 1" in _out("cuda-patch list")
    bp.delete()
    gdb.execute("kill", to_string=True)
    _out("cuda-patch delete all")


def test_cuda_patch_bad_input_leaves_nothing_armed():
    before = len(gdb.breakpoints())
    _refused((("cuda-patch frobnicate --return 1", "no function 'frobnicate'"),
              ("cuda-patch cuInit --return BANANA", "neither a number nor a known"),
              ("cuda-patch cuDeviceGetCount --return 0 --out 1=1", "beyond cuDeviceGetCount's 1 argument"),
              ("cuda-patch cuInit", "give --return VALUE"),
              ("cuda-patch delete 7", "no patch #7"),
              ("cuda-patch cuInit --return 0 --count 0", "--count must be")))
    assert len(gdb.breakpoints()) == before
    assert "no patches" in _out("cuda-patch list")


def test_cuda_whatif_proves_each_wall_in_this_gdb_and_leaves_the_users_patches():
    """The what-if chain from inside gdb: two walls (the NVML version string, then the all-zero
    UUID), each proven by a run in this same gdb; the user's own patch stays (it applied to every
    run), ours are gone, nothing is left armed; and its refusals are one line each."""
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}")
    gdb.execute("set environment CUDASHIM_UUID=zero")
    gdb.execute("set environment CUDASHIM_NVML_DRIVER_VERSION=12.4")
    gdb.execute(f"file {os.path.join(ROOT, 'build', 'discover')}")
    _out("cuda-patch cuDeviceGetCount --return SUCCESS --out 0=1")  # the user's: one device, as the shim says
    out = tempfile.mktemp(suffix=".json")
    text = _out(f"cuda-whatif --json {out}")
    report = json.load(open(out))
    w1, w2 = report["walls"]
    assert (w1["rule"], w1["verdict"], w2["rule"], w2["verdict"]) == (
        "nvml-driver-version", "proven", "device-uuid-zero", "proven"), report["walls"]
    assert "no wall left" in text and "wall 2: the shim answers an all-zero UUID" in text
    listing = _out("cuda-patch list")
    assert "cuDeviceGetCount" in listing and "nvmlSystemGetDriverVersion" not in listing and "Uuid" not in listing
    assert not any(b.is_valid() and b.number > 0 for b in gdb.breakpoints())
    _out("cuda-patch delete all")
    for env in ("CUDASHIM_UUID", "CUDASHIM_NVML_DRIVER_VERSION"):
        gdb.execute(f"unset environment {env}")
    mine = tempfile.mktemp(suffix=".txt")
    with open(mine, "w") as f:
        f.write("the user's own notes\n")
    _refused([(f"cuda-whatif --json {mine}", "not a gdb-cudashim report; not replacing it")])  # before any run
    assert open(mine).read() == "the user's own notes\n"
    _refused((("cuda-whatif --max-walls 0", "--max-walls must be 1 or more"),
              ("cuda-whatif --timeout -1", "--timeout")))
    gdb.execute("catch-init-error", to_string=True)
    _refused([("cuda-whatif", "catch-init-error is armed")])
    gdb.execute("catch-init-error --disarm", to_string=True)
