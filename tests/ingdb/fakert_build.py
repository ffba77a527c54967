"""Builds shim/fakert.c under a soname and version node of a test's choosing (a helper, not a test):
the fake runtime as a cudart 13 replacement, or under its own soname without the _v2 name."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIM = os.path.join(ROOT, "shim")


def build_fakert(out: str, soname: str, node: str = "libcudart.so.12", hide=(), include: str | None = None) -> str:
    """shim/fakert.c built like shim/Makefile's fakert, into OUT with SONAME, its exports under the version
    node NODE, HIDE made local. INCLUDE: the directory holding NVIDIA's cuda.h/driver_types.h."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    vmap = out + ".map"
    local = "".join(f" {h};" for h in hide)
    with open(vmap, "w") as f:
        f.write(f"{node} {{\n  global: cuda*; __cuda*; g_*;\n  local:{local} *;\n}};\n")
    subprocess.run(["cc", "-g3", "-O0", "-fPIC", "-fvisibility=hidden", "-Wno-deprecated-declarations",
                    f"-I{os.path.join(SHIM, 'standin')}", f"-I{include}", "-shared", "-Wl,--build-id",
                    f"-Wl,-soname,{soname}", f"-Wl,--version-script={vmap}", "-o", out,
                    os.path.join(SHIM, "fakert.c"), "-ldl"], check=True)
    return out
