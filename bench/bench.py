"""make bench: what catch-init-error costs on a chatty program (a script that prints figures, not a test).

The probe writes N log lines before and N after a failing real ggml init (real libcudart
12.9 + libggml-cuda under the seed-style shim). Compared: the program alone, plain
`gdb -batch -ex run`, `gdb-cudashim run`, and `strace -f -s 65536 -e trace=write`.
Target: gdb-cudashim run <= 1.5x plain gdb.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gdb_cudashim import stack as stack_mod  # noqa: E402


def timed(cmd, env, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=100_000, help="log lines before and after the init (default 100000)")
    ap.add_argument("--repeat", type=int, default=7, help="runs per variant; the median is shown (default 7)")
    args = ap.parse_args()
    stack = stack_mod.require()
    env = dict(os.environ, LD_LIBRARY_PATH=str(ROOT / "shim/build/variants/seed"), GGML_CUDA_LIB=str(stack.ggml_cuda))
    probe = [str(ROOT / "build/probe"), "--pre", str(args.lines), "--post", str(args.lines)]
    cli = [sys.executable, "-m", "gdb_cudashim.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "r.json")
        variants = [
            ("program alone", probe),
            ("gdb -batch -ex run", ["gdb", "-nx", "-q", "-batch", "-ex", "run", "--args", *probe]),
            ("gdb-cudashim run", [*cli, "run", "--json", report, "--", *probe]),
        ]
        if shutil.which("strace"):
            variants.append(("strace -f -s 65536 -e trace=write",
                             ["strace", "-f", "-s", "65536", "-e", "trace=write", "-o", os.path.join(tmp, "st"), *probe]))
        # rounds interleave the variants, so a slow spell of this shared machine hits them all alike
        samples = {name: [] for name, _ in variants}
        for _ in range(args.repeat):
            for name, cmd in variants:
                samples[name].append(timed(cmd, env, 1))
        results = {name: statistics.median(times) for name, times in samples.items()}
        stops = json.load(open(report))["stops"] if os.path.exists(report) else None
        # the same init with no chatter: what the capture itself costs
        quiet = timed([*cli, "run", "--json", report, "--", str(ROOT / "build/probe")], env, args.repeat)
        audit_start = time.perf_counter()
        subprocess.run([*cli, "audit", "--shim", str(ROOT / "shim/build/libcuda.so.1")], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        audit_s = time.perf_counter() - audit_start
    plain = results["gdb -batch -ex run"]
    print(f"{args.lines} log lines before and {args.lines} after a failing real ggml init; median of {args.repeat} "
          f"interleaved rounds")
    print(f"{'variant':40} {'seconds':>9} {'x plain gdb':>12}")
    for name, seconds in results.items():
        print(f"{name:40} {seconds:9.3f} {seconds / plain:12.2f}")
    print(f"debugger stops in gdb-cudashim run: {stops}")
    print(f"gdb-cudashim run without the chatter: {quiet:.3f} s")
    print(f"gdb-cudashim audit (205 MB libggml-cuda + cudart, one process): {audit_s:.3f} s")
    ratio = results["gdb-cudashim run"] / plain
    print(f"target gdb-cudashim run <= 1.5x plain gdb: {'met' if ratio <= 1.5 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
