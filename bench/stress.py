"""make stress: every multi-process case, many times, under `gdb-cudashim run`, on a busy
machine: zero hangs, zero partial reports, zero processes or temporary files left behind (a
script that prints figures; exit 1 on any of them).

The cases: a Python parent (subprocess, stderr to /dev/null), a C vfork parent (ollama's
shape), the ollama-shaped Go server (os/exec re-exec of itself), and a Python discovery parent
that SIGKILLs its child stuck in cuInit (after 1 s and after 4 s). Each run has --timeout 20; a
run still going after 60 s is a hang. A report marked partial (gdb could not go on, "gdb stopped
answering") is a failure: a multi-process run must always be followed to its end.

The load: one busy loop per core, started here and always stopped here (each also ends by
itself when this script is gone, or after LOAD_MAX_S): races in gdb's resuming of several
processes show on a loaded machine, rarely on an idle one.
"""
from __future__ import annotations

import argparse
import collections
import os
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
SHIM = ROOT / "shim" / "build"
sys.path.insert(0, str(ROOT))

from gdb_cudashim import stack as stack_mod  # noqa: E402

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
LOAD_MAX_S = 4 * 3600  # a busy loop never outlives this, whatever happens to this script
# spins until its parent (this script) is gone or LOAD_MAX_S has passed
_SPIN = ("import os,time\nparent,end=os.getppid(),time.monotonic()+{max_s}\n"
         "while os.getppid()==parent and time.monotonic()<end:\n"
         "    for _ in range(200000): pass\n")


class CpuLoad:
    """with CpuLoad(n): n busy loops, ended on the way out."""

    def __init__(self, n):
        self.n = n
        self.procs = []

    def __enter__(self):
        code = _SPIN.format(max_s=LOAD_MAX_S)
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([PYTHON, "-c", code], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        return False


def cases(ggml_cuda):
    probe = str(BUILD / "probe")
    seed = {"LD_LIBRARY_PATH": str(SHIM / "variants" / "seed"), "GGML_CUDA_LIB": ggml_cuda}
    out = {
        "python parent": ([PYTHON, str(ROOT / "tests/programs/pyparent.py"), probe], seed),
        "C vfork parent": ([str(BUILD / "spawner"), probe], seed),
    }
    hang = {"LD_LIBRARY_PATH": str(SHIM), "GGML_CUDA_LIB": ggml_cuda, "CUDASHIM_HANG": "cuInit"}
    for after in ("1", "4"):
        out[f"parent kills child, {after} s"] = (
            [PYTHON, str(ROOT / "tests/programs/pyparent.py"), "--kill-after", after, probe], hang)
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
    ap.add_argument("--case", action="append", help="only the cases whose name contains this (repeatable)")
    ap.add_argument("--load", type=int, default=os.cpu_count() or 1,
                    help="busy loops running meanwhile (default: one per core; 0: none)")
    args = ap.parse_args()
    stack = stack_mod.require()
    bad = 0
    print(f"stress: {args.load} busy loop(s) running meanwhile")
    print(f"{'case':26} {'runs':>5} {'hangs':>6} {'partial':>8} {'left':>5} {'median s':>9} {'max s':>7}  exit statuses")
    chosen = {k: v for k, v in cases(stack.ggml_cuda).items() if not args.case or any(c in k for c in args.case)}
    with tempfile.TemporaryDirectory(prefix="stress-") as work, CpuLoad(args.load):
        for name, (argv, extra) in chosen.items():
            bad += run_case(name, argv, dict(os.environ, **extra), args.repeat, Path(work))
    print("stress: " + ("no hang, no partial report, nothing left behind" if not bad else f"{bad} bad runs"))
    return 1 if bad else 0


def run_case(name, argv, env, repeat, work) -> int:
    """REPEAT runs of one case; the bad ones (hung, partial, something left behind)."""
    report_path = work / "report.json"
    cli = [str(ROOT / ".venv" / "bin" / "gdb-cudashim"), "run", "--timeout", "20", "--json", str(report_path), "--"]
    times, codes, hangs, partial, left = [], collections.Counter(), 0, 0, 0
    why = collections.Counter()
    detail = []
    for _ in range(repeat):
        report_path.unlink(missing_ok=True)
        start = time.monotonic()
        proc = subprocess.Popen(cli + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            codes[proc.wait(timeout=60)] += 1
        except subprocess.TimeoutExpired:
            hangs += 1
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        times.append(time.monotonic() - start)
        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError):
            report = None
        if report is None or report.get("partial"):
            partial += 1
            notes = (report or {}).get("notes") or []
            why[next((n for n in notes if "continue" in n or "gdb" in n), (report or {}).get("interrupted")
                     or "no report")] += 1
            for n in notes:  # what gdb and /proc held at the failure: the first thing to read in a CI log
                if n.startswith("internal:"):
                    detail.append(n[:1500])
        tmp, procs = leftovers(proc.pid)
        if tmp or procs:
            left += 1
            for p in procs:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
    print(f"{name:26} {repeat:5} {hangs:6} {partial:8} {left:5} {statistics.median(times):9.2f} {max(times):7.2f}  "
          + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items(), key=str)), flush=True)
    for text, n in why.most_common():
        print(f"    partial {n}x: {text}")
    for text in detail[:6]:
        print(f"      {text}")
    return hangs + partial + left


if __name__ == "__main__":
    sys.exit(main())
