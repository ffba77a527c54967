"""gdb-cudashim audit against the real libcudart 12.9 and libggml-cuda, with defect shims."""
import json
import shutil
import subprocess

import pytest

from conftest import SHIM_BUILD, build_variant, env_with, run_cli

SEED = SHIM_BUILD / "variants" / "seed" / "libcuda.so.1"
GOOD = SHIM_BUILD / "libcuda.so.1"


def audit_json(args, env=None):
    proc = run_cli(["audit", "--json", *map(str, args)], env=env)
    return proc, json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None


def kinds(result):
    return {(p["kind"], p["detail"].split(" ")[0]) for p in result["problems"]}


def test_good_shim_reports_nothing_missing(stack):
    proc, result = audit_json(["--shim", GOOD], env=env_with(LD_LIBRARY_PATH=SHIM_BUILD))
    assert proc.returncode == 0, proc.stdout
    assert result["problems"] == []
    assert result["needs"] and all(n["present"] for n in result["needs"])
    needed_by = {n["symbol"] for n in result["needs"]}
    assert {"cuGetProcAddress_v2", "cuGetExportTable", "cuInit", "cuDriverGetVersion", "cuMemCreate"} <= needed_by
    chosen = {r["soname"]: r["chosen"] for r in result["resolution"]}
    assert chosen["libcuda.so.1"].endswith("shim/build/libcuda.so.1")


def test_seed_shim_lacks_the_lookups(stack):
    proc, result = audit_json(["--shim", SEED], env=env_with(LD_LIBRARY_PATH=SEED.parent))
    assert proc.returncode == 1
    missing = {n["symbol"] for n in result["needs"] if not n["present"]}
    assert missing == {"cuGetProcAddress_v2", "cuGetExportTable"}
    text = run_cli(["audit", "--shim", str(SEED)], env=env_with(LD_LIBRARY_PATH=SEED.parent)).stdout
    assert "falls back to ~420 plain lookups" in text and "export cuGetExportTable" in text


def test_shim_missing_a_vmm_symbol(stack, variant_dir):
    lib = build_variant(stack, variant_dir, "audit-novmm", hide=["cuMemMap"])
    proc, result = audit_json(["--shim", lib], env=env_with(LD_LIBRARY_PATH=lib.parent))
    assert proc.returncode == 1
    (need,) = [n for n in result["needs"] if not n["present"]]
    assert need["symbol"] == "cuMemMap" and "direct import" in need["needed_by"]
    assert "undefined symbol: cuMemMap" in need["why"]


def test_runtime_replacement_without_version_nodes(stack, tmp_path):
    src = tmp_path / "rt.c"
    src.write_text("int cudaGetDeviceCount(int *n) { *n = 1; return 0; }\n")
    lib = tmp_path / "libcudart.so.12"
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcudart.so.12", "-o", str(lib), str(src)], check=True)
    proc, result = audit_json(["--shim", lib, "--consumer", stack.ggml_cuda])
    assert proc.returncode == 1
    (p,) = [p for p in result["problems"] if p["kind"] == "missing-version-node"]
    assert "libcudart.so.12 { global: *; };" in p["fix"]
    missing = {n["symbol"] for n in result["needs"] if not n["present"]}
    assert "cudaGetDeviceCount" in missing and "cudaMalloc" in missing  # unversioned does not satisfy @libcudart.so.12


def test_preloaded_under_the_wrong_soname(stack, variant_dir):
    lib = build_variant(stack, variant_dir, "audit-preload", soname="libcudashim.so")
    env = env_with(LD_PRELOAD=lib, LD_LIBRARY_PATH=SEED.parent)
    proc, result = audit_json(["--shim", lib], env=env)
    assert proc.returncode == 1
    found = {p["kind"] for p in result["problems"]}
    assert {"wrong-soname", "preload-soname"} <= found
    trap = next(p for p in result["problems"] if p["kind"] == "preload-soname")
    assert "two drivers" in trap["why"] and str(SEED) in trap["detail"]


def test_stub_library_first_on_the_path(stack, tmp_path):
    stubs = tmp_path / "cuda" / "lib64" / "stubs"
    stubs.mkdir(parents=True)
    shutil.copy(GOOD, stubs / "libcuda.so.1")
    env = env_with(LD_LIBRARY_PATH=f"{stubs}:{SHIM_BUILD}")
    proc, result = audit_json(["--shim", GOOD], env=env)
    assert proc.returncode == 1
    stub = [p for p in result["problems"] if p["kind"] == "stub-first"]
    assert stub and "LD_LIBRARY_PATH" in stub[0]["detail"]
    several = [p for p in result["problems"] if p["kind"] == "several-candidates"]
    assert several and "shim/build/libcuda.so.1" in several[0]["detail"]


def test_env_from_a_running_process(stack):
    sleeper = subprocess.Popen(["sleep", "30"], env=env_with(LD_LIBRARY_PATH=SHIM_BUILD))
    try:
        proc, result = audit_json(["--shim", GOOD, "--env-from", sleeper.pid])
        assert proc.returncode == 0
        chosen = {r["soname"]: (r["chosen"], r["how"]) for r in result["resolution"]}
        assert chosen["libcuda.so.1"][1] == "LD_LIBRARY_PATH"
    finally:
        sleeper.kill()
    proc = run_cli(["audit", "--shim", str(GOOD), "--env-from", "999999999"])
    assert proc.returncode == 2 and "no process 999999999" in proc.stderr


def _patched(tmp_path, name, offset, value):
    data = bytearray(GOOD.read_bytes())
    data[offset:offset + len(value)] = value
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def test_bad_files_are_one_line_each_and_the_rest_still_audited(stack, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a library")
    trunc = tmp_path / "trunc.so"
    trunc.write_bytes(GOOD.read_bytes()[:200])
    arm = _patched(tmp_path, "arm.so", 18, (183).to_bytes(2, "little"))
    ia32 = _patched(tmp_path, "ia32.so", 4, b"\x01")
    args = []
    for p in (text, trunc, arm, ia32, tmp_path, SEED):
        args += ["--shim", p]
    proc, result = audit_json(args, env=env_with(LD_LIBRARY_PATH=SEED.parent))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # incomplete: a usage error
    assert len(proc.stderr.splitlines()) == 5
    lines = result["unreadable"]
    assert len(lines) == 5 and all("\n" not in l for l in lines)
    joined = " | ".join(lines)
    for words in ("not an ELF", "truncated", "EM_AARCH64", "32-bit", "directory"):
        assert words in joined, words
    assert {n["symbol"] for n in result["needs"] if not n["present"]} == {"cuGetProcAddress_v2", "cuGetExportTable"}


def test_usage_errors():
    proc = run_cli(["audit"])
    assert proc.returncode == 2 and "give at least one --shim" in proc.stderr
    proc = run_cli(["audit", "--shim", "/nonexistent.so"])
    assert proc.returncode == 2 and "no such file" in proc.stderr and "nothing missing" not in proc.stdout
