"""make stress: every multi-process case, many times, under `gdb-cudashim run`: zero hangs,
zero processes or temporary files left behind (a script that prints figures; exit 1 on any
hang or leftover).

The cases: a Python parent (subprocess, stderr to /dev/null), a C vfork parent (ollama's
shape), the ollama-shaped Go server (os/exec re-exec of itself), and a parent that SIGKILLs
its child stuck in cuInit. Each run has --timeout 20; a run still going after 60 s is a hang.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
SHIM = ROOT / "shim" / "build"
sys.path.insert(0, str(ROOT))

from gdb_cudashim import stack as stack_mod  # noqa: E402

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def cases(ggml_cuda):
    probe = str(BUILD / "probe")
    seed = {"LD_LIBRARY_PATH": str(SHIM / "variants" / "seed"), "GGML_CUDA_LIB": ggml_cuda}
    out = {
        "python parent": ([PYTHON, str(ROOT / "tests/programs/pyparent.py"), probe], seed),
        "C vfork parent": ([str(BUILD / "spawner"), probe], seed),
        "parent kills its child": ([PYTHON, str(ROOT / "tests/programs/pyparent.py"), "--kill-after", "1", probe],
                                   {"LD_LIBRARY_PATH": str(SHIM), "GGML_CUDA_LIB": ggml_cuda,
                                    "CUDASHIM_HANG": "cuInit"}),
    }
    goserver = BUILD / "goserver"
    if goserver.exists():
        out["Go server"] = ([str(goserver), "serve", "--exit-after-discovery"], seed)
    else:
        print(f"(no {goserver}: run 'make real-programs' for the Go case)")
    return out


def leftovers(cli_pid):
    """This run's temporary directory and gdb, if either outlived the CLI."""
    mark = f"gdb-cudashim-{cli_pid}-"
    tmp = [n for n in os.listdir("/tmp") if n.startswith(mark)]
    procs = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        if mark.encode() in argv:
            procs.append(int(pid))
    return tmp, procs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=50, help="runs per case (default 50)")
    args = ap.parse_args()
    stack = stack_mod.require()
    cli = [str(ROOT / ".venv" / "bin" / "gdb-cudashim"), "run", "--timeout", "20", "--"]
    bad = 0
    print(f"{'case':24} {'runs':>5} {'hangs':>6} {'left':>5} {'median s':>9} {'max s':>7}  exit statuses")
    for name, (argv, extra) in cases(stack.ggml_cuda).items():
        env = dict(os.environ, **extra)
        times, codes, hangs, left = [], collections.Counter(), 0, 0
        for _ in range(args.repeat):
            start = time.monotonic()
            proc = subprocess.Popen(cli + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                codes[proc.wait(timeout=60)] += 1
            except subprocess.TimeoutExpired:
                hangs += 1
                os.killpg(proc.pid, 9)
                proc.wait()
            times.append(time.monotonic() - start)
            tmp, procs = leftovers(proc.pid)
            if tmp or procs:
                left += 1
                for p in procs:
                    try:
                        os.kill(p, 9)
                    except OSError:
                        pass
        bad += hangs + left
        print(f"{name:24} {args.repeat:5} {hangs:6} {left:5} {statistics.median(times):9.2f} {max(times):7.2f}  "
              + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())), flush=True)
    print("stress: " + ("no hang, nothing left behind" if not bad else f"{bad} bad runs"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
