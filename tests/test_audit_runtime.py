"""gdb-cudashim audit on runtime shims (issue #11 item 3): a libcudart that is not NVIDIA's.

Each case is checked twice: the audit's verdict from the files, and the real loader's on the same
files and environment (build/probe loads the real libggml-cuda with RTLD_NOW, as ggml's backend
loader does), so a verdict that disagrees with ld.so fails here.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import (FAKERT, FAKERT_NOFAT, FAKERT_OWN, FAKERT_V1, ROOT, VARIANTS, env_with,
                      run_cli)

SEED = VARIANTS / "seed" / "libcuda.so.1"


def audit(args, env):
    proc = run_cli(["audit", "--json", *map(str, args)], env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, json.loads(proc.stdout)


def text(args, env):
    proc = run_cli(["audit", *map(str, args)], env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def probe(stack, env):
    """The real loader and ggml_cuda_init on the same environment: stdout + stderr."""
    env = dict(env, GGML_CUDA_LIB=str(stack.ggml_cuda))
    proc = subprocess.run([str(ROOT / "build" / "probe")], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc.stdout + proc.stderr


def problems(result, kind):
    return [p for p in result["problems"] if p["kind"] == kind]


def warnings(result, kind):
    return [p for p in result["warnings"] if p["kind"] == kind]


def fakert_build(stack, out, mapfile, soname="libcudart.so.12"):
    """fakert.c built like shim/Makefile's variants, with another version script or soname."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cc", "-g", "-O0", "-fPIC", "-fvisibility=hidden", "-Wno-deprecated-declarations",
                    f"-I{ROOT / 'shim' / 'standin'}", f"-I{stack.include}", "-shared", f"-Wl,-soname,{soname}",
                    f"-Wl,--version-script={mapfile}", "-o", str(out), str(ROOT / "shim" / "fakert.c"), "-ldl"],
                   check=True)
    return out


@pytest.fixture(scope="module", autouse=True)
def _built():
    for f in (SEED, FAKERT, FAKERT_V1, FAKERT_NOFAT, FAKERT_OWN, ROOT / "build" / "probe"):
        assert f.exists(), f"{f} missing: run 'make -C shim' and 'make programs'"


def test_files_table_tells_the_two_libcudart_so_12_apart(stack):
    """A fake libcudart.so.12 and NVIDIA's share a file name: the rows say which is which."""
    env = env_with(LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", FAKERT_V1], env)
    what = {f["path"]: (f["label"], f["what"]) for f in result["files"]}
    assert what[str(FAKERT_V1)] == ("fakert-v1/libcudart.so.12", "runtime replacement")
    assert what[str(stack.cudart)] == ("lib/libcudart.so.12", "NVIDIA runtime")
    assert what[str(stack.ggml_cuda)][1] == "ggml CUDA backend"
    out = text(["--shim", FAKERT_V1], env).stdout.splitlines()
    assert "what it is" in out[0]
    rows = {line.split()[0]: line for line in out[2:5]}
    assert "runtime replacement" in rows["fakert-v1/libcudart.so.12"]
    assert "NVIDIA runtime" in rows["lib/libcudart.so.12"]
    assert result["runtimes"][0]["globals"] and all(g.startswith("g_") for g in result["runtimes"][0]["globals"])


def test_exports_only_the_v1_device_properties(stack):
    env = env_with(LD_PRELOAD=FAKERT_V1, LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", FAKERT_V1], env)
    assert proc.returncode == 1
    (need,) = [n for n in result["needs"] if not n["present"]]
    assert need["symbol"] == "cudaGetDeviceProperties_v2" and need["provider"] == "fakert-v1/libcudart.so.12"
    assert "#define cudaGetDeviceProperties to cudaGetDeviceProperties_v2" in need["note"]
    assert need["note"] in need["why"] and "ggml_cuda_init" in need["why"]
    message = "undefined symbol: cudaGetDeviceProperties_v2, version libcudart.so.12"
    assert message in need["why"]
    assert "version node libcudart.so.12" in need["fix"]
    (p,) = problems(result, "missing-symbol")
    assert p["why"] == need["why"]
    assert message in probe(stack, env)  # what the real loader says
    (rt,) = result["runtimes"]
    assert rt["loaded"] == "LD_PRELOAD" and "never loaded" in rt["interplay"]
    assert "lacks 1 of the 57 symbols" in rt["summary"] and "init: cudaGetDeviceProperties_v2" in rt["summary"]
    assert f"- fakert-v1/libcudart.so.12 (runtime replacement): {rt['summary']}" in text(["--shim", FAKERT_V1],
                                                                                         env).stdout


def test_lacks_the_fat_binary_registration(stack):
    env = env_with(LD_PRELOAD=FAKERT_NOFAT, LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", FAKERT_NOFAT], env)
    assert proc.returncode == 1
    missing = {n["symbol"]: n for n in result["needs"] if not n["present"]}
    assert set(missing) == {"__cudaRegisterFatBinary", "__cudaRegisterFatBinaryEnd"}
    why = missing["__cudaRegisterFatBinary"]["why"]
    message = "undefined symbol: __cudaRegisterFatBinary, version libcudart.so.12"
    assert message in why and "at dlopen, before any CUDA call" in why
    assert message in probe(stack, env)


def test_preloaded_replacement_takes_the_bundled_cudarts_place(stack):
    env = env_with(LD_PRELOAD=FAKERT, LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", FAKERT], env)
    assert proc.returncode == 0, result["problems"]
    assert result["problems"] == [] and result["warnings"] == []
    (rt,) = result["runtimes"]
    assert rt["loaded"] == "LD_PRELOAD" and rt["chosen"] == str(FAKERT)
    assert f"the bundled copy ({stack.cudart}) is never loaded" in rt["interplay"]
    nvidia = next(f for f in result["files"] if f["path"] == str(stack.cudart))
    assert nvidia["replaced_by"] == str(FAKERT)  # its own needs no longer count
    assert "Fake GPU (fakert)" in probe(stack, env)


def test_drop_in_on_ld_library_path_is_bypassed_by_dt_rpath(stack):
    env = env_with(LD_LIBRARY_PATH=f"{FAKERT.parent}:{SEED.parent}")
    proc, result = audit(["--shim", FAKERT], env)
    assert proc.returncode == 1
    (p,) = problems(result, "runtime-bypassed")
    assert p["subject"] == str(FAKERT) and "on LD_LIBRARY_PATH" in p["detail"]
    assert str(stack.cudart) in p["detail"] and "NVIDIA runtime" in p["detail"]
    assert f"DT_RPATH $ORIGIN of {stack.ggml_cuda.name}" in p["detail"]
    assert f"LD_PRELOAD={FAKERT}" in p["fix"] and "replace" in p["fix"]
    assert not problems(result, "several-candidates")  # said once, by the runtime finding
    out = probe(stack, env)
    assert "Fake GPU" not in out and "API call is not supported in the installed CUDA driver" in out


def test_not_on_any_search_path(stack):
    env = env_with(LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", FAKERT, "--consumer", stack.ggml_cuda], env)
    assert proc.returncode == 0
    (w,) = warnings(result, "runtime-not-loaded")
    assert f"it loads {stack.cudart} (NVIDIA runtime, via DT_RPATH $ORIGIN" in w["detail"]
    assert w["fix"].startswith(f"LD_PRELOAD={FAKERT}")


def test_own_soname_complete(stack):
    env = env_with(LD_PRELOAD=FAKERT_OWN, LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", FAKERT_OWN], env)
    assert proc.returncode == 0 and result["problems"] == []
    (w,) = warnings(result, "runtime-beside-bundled")
    assert "all 57 of" in w["detail"] and str(stack.cudart) in w["detail"]
    assert next(f for f in result["files"] if f["path"] == str(FAKERT_OWN))["what"] == \
        "runtime shim under its own soname"
    assert "Fake GPU (fakert)" in probe(stack, env)


def test_own_soname_incomplete_splits_the_runtime(stack, tmp_path):
    """Under its own soname without the _v2 name: that one call lands in NVIDIA's cudart."""
    lib = fakert_build(stack, tmp_path / "libfakert.so", ROOT / "shim" / "variants" / "fakert-v1.map",
                       soname="libfakert.so")
    env = env_with(LD_PRELOAD=lib, LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", lib], env)
    assert proc.returncode == 1
    (p,) = problems(result, "runtime-split")
    assert "cudaGetDeviceProperties_v2" in p["detail"] and str(stack.cudart) in p["detail"]
    assert "two runtimes" in p["why"]
    (n,) = [n for n in result["needs"] if not n["present"]]
    assert "two runtimes" in n["why"] and "undefined symbol" not in n["why"]
    # the real process: the fake counts the device, NVIDIA's cudart fails the _v2 call, and the
    # fake's cudaGetErrorString names the failure
    out = probe(stack, env)
    assert "cudaGetDeviceProperties_v2(&prop, id)" in out and "fakert:" in out


def test_version_nodes(stack, tmp_path):
    # an anonymous version script: unversioned definitions, but a .gnu.version section -> works
    anon_map = tmp_path / "anon.map"
    anon_map.write_text("{ global: cuda*; __cuda*; g_*; local: *; };\n")
    anon = fakert_build(stack, tmp_path / "anon" / "libcudart.so.12", anon_map)
    env = env_with(LD_PRELOAD=anon, LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", anon], env)
    assert proc.returncode == 0 and result["problems"] == [], result["problems"]
    (w,) = warnings(result, "unversioned-runtime")
    assert "this works" in w["why"] and "abort" in w["why"]
    assert "Fake GPU (fakert)" in probe(stack, env)
    # the definitions under another version name: none satisfies name@libcudart.so.12
    other_map = tmp_path / "other.map"
    other_map.write_text("CUDART_OTHER { global: cuda*; __cuda*; g_*; local: *; };\n")
    other = fakert_build(stack, tmp_path / "other" / "libcudart.so.12", other_map)
    env = env_with(LD_PRELOAD=other, LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit(["--shim", other], env)
    assert proc.returncode == 1
    (p,) = problems(result, "missing-version-node")
    assert "CUDART_OTHER" in p["detail"]
    message = "undefined symbol: cudaMalloc, version libcudart.so.12"
    assert message in p["why"]
    assert not problems(result, "missing-symbol")  # one finding, not 57
    assert sum(not n["present"] for n in result["needs"]) == 57
    assert message in probe(stack, env)


def test_preloaded_through_ld_so_preload(stack, tmp_path):
    preload = tmp_path / "ld.so.preload"
    preload.write_text(f"# a test's own file\n{FAKERT}\n")
    env = env_with(LD_LIBRARY_PATH=SEED.parent, GDB_CUDASHIM_LD_SO_PRELOAD=preload)
    proc, result = audit(["--shim", FAKERT], env)
    assert proc.returncode == 0, result["problems"]
    (rt,) = result["runtimes"]
    assert rt["loaded"] == str(preload) and "never loaded" in rt["interplay"]


CUDART13_STUB = """
int cudaGetDeviceCount(int *n) { *n = 0; return 0; }
void **__cudaRegisterFatBinary(void *fat) { return 0; }
"""
CONSUMER = """
int cudaGetDeviceCount(int *n);
void **__cudaRegisterFatBinary(void *fat);
static void **handle;
__attribute__((constructor)) static void reg(void) { handle = __cudaRegisterFatBinary(0); }
int count(void) { int n = -1; cudaGetDeviceCount(&n); return n; }
"""
FAKE13 = "int cudaGetDeviceCount(int *n) { *n = 1; return 0; }\n"


def test_cudart_13_is_read_from_the_consumer(stack, tmp_path):
    """A backend linked to libcudart.so.13 (CUDA 13): the audit asks for what it imports, not for .12."""
    bundled_dir, fake_dir = tmp_path / "backend", tmp_path / "fake"
    bundled_dir.mkdir()
    fake_dir.mkdir()
    node13 = tmp_path / "v13.map"
    node13.write_text("libcudart.so.13 { global: cuda*; __cuda*; local: *; };\n")

    def lib(out, source, *extra):
        src = out.with_suffix(".c")
        src.write_text(source)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(src), *extra], check=True)
        return out

    lib(bundled_dir / "libcudart.so.13", CUDART13_STUB, "-Wl,-soname,libcudart.so.13", f"-Wl,--version-script={node13}")
    consumer = lib(bundled_dir / "libggml-cuda-test.so", CONSUMER, f"-L{bundled_dir}", "-l:libcudart.so.13",
                   "-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN")
    fake = lib(fake_dir / "libcudart.so.13", FAKE13, "-Wl,-soname,libcudart.so.13", f"-Wl,--version-script={node13}")

    # a drop-in on LD_LIBRARY_PATH: bypassed by the consumer's DT_RPATH, named for .13
    proc, result = audit(["--shim", fake, "--consumer", consumer], env_with(LD_LIBRARY_PATH=fake_dir))
    (p,) = problems(result, "runtime-bypassed")
    assert f"resolves libcudart.so.13 to {bundled_dir / 'libcudart.so.13'}" in p["detail"]
    assert "DT_RPATH $ORIGIN of libggml-cuda-test.so" in p["detail"]
    (need,) = [n for n in result["needs"] if not n["present"]]
    message = "undefined symbol: __cudaRegisterFatBinary, version libcudart.so.13"
    assert need["symbol"] == "__cudaRegisterFatBinary" and message in need["why"]
    assert "libcudart.so.13" in need["fix"]

    # preloaded, it replaces the bundled one, and the real loader fails as the audit says
    env = env_with(LD_PRELOAD=fake)
    proc, result = audit(["--shim", fake, "--consumer", consumer], env)
    assert proc.returncode == 1 and result["runtimes"][0]["loaded"] == "LD_PRELOAD"
    load = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(consumer)!r})"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert load.returncode != 0 and message in load.stderr

    # NVIDIA's fake for CUDA 12 preloaded in front of a CUDA 13 backend: a soname it does not take,
    # and no import @libcudart.so.13: everything still lands in the bundled .13
    proc, result = audit(["--shim", FAKERT, "--consumer", consumer], env_with(LD_PRELOAD=FAKERT))
    (p,) = problems(result, "runtime-split")
    assert "not libcudart.so.13" in p["detail"] and str(bundled_dir / "libcudart.so.13") in p["detail"]
    notes = {n["symbol"]: n["note"] for n in result["needs"] if not n["present"]}
    assert notes["cudaGetDeviceCount"] == "it exports cudaGetDeviceCount only as libcudart.so.12"
