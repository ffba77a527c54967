"""Shared fixtures: the real CUDA stack, shim variants, and runners for real gdb and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
SHIM_BUILD = ROOT / "shim" / "build"
VARIANTS = SHIM_BUILD / "variants"  # shim/Makefile's variants: the fake runtime's ones below
FAKERT = VARIANTS / "fakert" / "libcudart.so.12"  # complete, NVIDIA's soname and version node
FAKERT_V1 = VARIANTS / "fakert-v1" / "libcudart.so.12"  # cudaGetDeviceProperties without the _v2 name
FAKERT_NOFAT = VARIANTS / "fakert-nofat" / "libcudart.so.12"  # no __cudaRegisterFatBinary(End)
FAKERT_OWN = VARIANTS / "fakert-own" / "libfakert.so"  # complete, under its own soname
FAKERT_PARTIAL = VARIANTS / "fakert-partial" / "libfakert.so"  # own soname, device discovery only
GDBINIT = ROOT / "gdb_cudashim" / "gdbinit.py"
CLI = [sys.executable, "-m", "gdb_cudashim.cli"]
collect_ignore = ["ingdb"]  # these run inside gdb, through test_in_gdb.py


@pytest.fixture(scope="session")
def stack():
    from gdb_cudashim import stack as stack_mod

    s = stack_mod.installed()
    if s is None:
        msg = "the real CUDA stack is not fetched (make stack)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return s


@pytest.fixture(scope="session")
def probe():
    p = BUILD / "probe"
    assert p.exists(), "build/probe missing: run 'make programs'"
    return p


@pytest.fixture(scope="session")
def variant_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("variants")


def build_variant(stack, outdir: Path, name: str, hide=(), soname="libcuda.so.1", filename=None) -> Path:
    """A defect variant of the bundled shim: the exports in HIDE made local by a version script."""
    d = outdir / name
    d.mkdir(parents=True, exist_ok=True)
    vmap = d / "v.map"
    local = "".join(f" {h};" for h in hide)
    vmap.write_text("{ global: *;" + (f" local:{local}" if hide else "") + " };\n")
    out = d / (filename or soname)
    subprocess.run(["cc", "-g3", "-O0", "-fPIC", "-fvisibility=hidden", "-Wno-deprecated-declarations",
                    f"-I{stack.include}", "-shared", "-Wl,--build-id", f"-Wl,-soname,{soname}",
                    f"-Wl,--version-script={vmap}", "-o", str(out), str(ROOT / "shim" / "cudashim.c"), "-ldl",
                    "-lpthread"], check=True)
    return out


def env_with(**extra) -> dict:
    env = dict(os.environ)
    for k in ("LD_LIBRARY_PATH", "LD_PRELOAD", "CUDASHIM_MODE", "CUDASHIM_INIT_RESULT", "CUDASHIM_DRIVER_VERSION",
              "CUDASHIM_HANG", "CUDA_VISIBLE_DEVICES", "NO_COLOR", "GDB_CUDASHIM_NO_RECORDER", "CUDASHIM_VISIBLE",
              "CUDASHIM_UUID", "CUDASHIM_FAIL", "CUDASHIM_NVML_DRIVER_VERSION", "CUDASHIM_GPA_BAD"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


def run_cli(args, env=None, timeout=120):
    proc = subprocess.run(CLI + list(args), cwd=ROOT, env=env or env_with(), capture_output=True, text=True,
                          timeout=timeout)
    return proc


def run_report(tmp_path, program_args, env, extra=(), timeout=120):
    """gdb-cudashim run --json; returns (process, report dict)."""
    out = tmp_path / "report.json"
    proc = run_cli(["run", "--json", str(out), *extra, "--", *map(str, program_args)], env=env, timeout=timeout)
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


# -- the two gdbs: the system one (13.1 on Debian 12) and the gdb-for-pwndbg wheel's (18.1) ----

GDB_KINDS = ["system", "wheel"]


def find_gdb(kind: str) -> str:
    """The system gdb or the wheel's launcher; missing is a failure in CI (both must be there),
    a skip that says why elsewhere."""
    from gdb_cudashim import gdbs

    path = gdbs.system_gdb() if kind == "system" else gdbs.wheel_gdb()
    if not path:
        msg = ("no system gdb on PATH (apt-get install gdb)" if kind == "system" else
               f"no {gdbs.WHEEL} launcher beside {sys.executable} (make venv)")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(params=GDB_KINDS)
def each_gdb(request, monkeypatch):
    """The test runs once with each gdb: GDB names it, for the CLI and run_gdb alike."""
    path = find_gdb(request.param)
    monkeypatch.setenv("GDB", path)
    return path


def gdb_path() -> str:
    """The gdb a test runs by default: GDB, else the system gdb, else the wheel's."""
    from gdb_cudashim import gdbs

    picked = gdbs.pick()
    assert picked is not None, "no gdb: set GDB, install gdb, or make venv"
    return picked.path


def run_gdb(commands, args=(), env=None, timeout=120):
    cmd = [gdb_path(), "-nx", "-q", "-batch", "-ex", f"source {GDBINIT}"]
    for c in commands:
        cmd += ["-ex", c]
    if args:
        cmd += ["--args", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env or env_with(), capture_output=True, text=True, timeout=timeout)


def build_lib(src: Path, out: Path, *extra: str) -> Path:
    """A small test library from tests/programs/lib."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cc", "-g", "-O0", "-fPIC", "-shared", "-o", str(out), str(src), *extra, "-ldl"], check=True)
    return out


# -- real third-party programs (gdb_cudashim/realprogs.py, make real-programs) ----------

def _real_program(name: str) -> Path:
    from gdb_cudashim import realprogs

    try:
        return realprogs.path(name)
    except realprogs.RealProgramsError as exc:
        msg = str(exc)
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def llama_server():
    return _real_program("llama-server")


@pytest.fixture(scope="session")
def llama_cli():
    return _real_program("llama-cli")


@pytest.fixture(scope="session")
def gemma_model():
    return _real_program("model")


@pytest.fixture(scope="session")
def goserver():
    return _real_program("goserver")


@pytest.fixture(scope="session")
def ggml_backend_dir():
    """The CUDA backend's directory: libggml-cuda-*.so (for GGML_BACKEND_PATH), its own
    libggml-base, libcudart.so.12 and cuBLAS stubs; libcuda.so.1 comes from LD_LIBRARY_PATH."""
    return _real_program("ggml-backend-dir")


@pytest.fixture(scope="session")
def ggml_cuda_backend():
    return _real_program("ggml-cuda")
