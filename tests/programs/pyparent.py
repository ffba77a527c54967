"""A Python parent like a launcher or a test harness: starts PROGRAM with subprocess,
its stderr thrown away, and reports only the exit status. With --kill-after S it kills
the child with SIGKILL after S seconds, as ollama kills a discovery runner at its timeout.

    python3 pyparent.py [--kill-after S] PROGRAM [ARGS...]
"""
import subprocess
import sys

args = sys.argv[1:]
kill_after = None
if args[:1] == ["--kill-after"]:
    kill_after, args = float(args[1]), args[2:]
child = subprocess.Popen(args, stderr=subprocess.DEVNULL)
try:
    code = child.wait(timeout=kill_after)
except subprocess.TimeoutExpired:
    child.kill()
    code = child.wait()
print(f"pyparent: child exited with {code}", flush=True)
