"""gdb-cudashim: the command outside gdb (batch runs, gdb launcher, set-up checks, audit).

Exit statuses: 0 no CUDA init failure seen, 1 failure found, 2 usage or environment error, 3 timed out.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

from . import deps
from .core.term import help_width

EXIT_USAGE = 2
EVERY_RETURN_HELP = ("watch every symbol lookup to its return instead of answering found/NULL from the "
                     "library's symbol tables (slower; the default still watches the lookups the findings use)")
GDBINIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gdbinit.py")


class CliError(Exception):
    """One line for the user; exit status 2."""


# Everything before gdb starts delays the run: json, shutil, tempfile and sysconfig
# (~10 ms of imports) are not needed for it.
def _which(name: str) -> str | None:
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _gdb() -> str:
    gdb = os.environ.get("GDB", "gdb")
    path = _which(gdb)
    if not path:
        raise CliError(f"gdb not found ({gdb}): install it (Debian/Ubuntu: apt-get install gdb) or set GDB=/path/to/gdb")
    return path


def _gdb_env() -> dict:
    env = dict(os.environ)
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    env["GDB_CUDASHIM_SITE"] = os.pathsep.join(filter(None, [env.get("GDB_CUDASHIM_SITE"), site]))
    return env


def _color(flag: str) -> bool:
    if flag == "always":
        return True
    if flag == "never" or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def _check_program(argv: list[str]) -> str:
    if not argv:
        raise CliError("no program given: gdb-cudashim run [OPTIONS] -- PROGRAM [ARGS...]")
    prog = argv[0]
    path = prog if os.sep in prog else _which(prog)
    if not path or not os.path.exists(path):
        raise CliError(f"no such program: {prog}")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CliError(f"not an executable program: {prog}")
    return path


def _gdb_base(env: dict, batch: bool = True) -> tuple[list[str], dict]:
    """gdb with the extension loaded; LD_PRELOAD moves from gdb itself to the program.
    A batch run prints no program values, so it skips auto-loading the libraries' gdb
    scripts (libstdc++'s pretty-printers alone are ~0.03 s of compiling per run)."""
    cmd = [_gdb(), "-nx", "-q"]
    if batch:  # only catch-init-error and cuda-run are loaded (gdb/loader.py)
        cmd += ["-iex", "set auto-load python-scripts off", "-iex", "set $gdb_cudashim_batch = 1"]
    cmd += ["-iex", "set print inferior-events off", "-iex", "set print thread-events off", "-iex", f"source {GDBINIT}"]
    preload = env.pop("LD_PRELOAD", None)
    if preload:
        cmd += ["-iex", f"set environment LD_PRELOAD={preload}"]
    return cmd, env


def _check_report_args(args) -> None:
    """--json and --timeout, shared by run and attach."""
    if args.json is not None:
        if not args.json.strip():
            raise CliError("--json needs a file name")
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise CliError(f"cannot write --json {args.json}: {parent} is not a writable directory")
    if args.timeout is not None and args.timeout <= 0:
        raise CliError("--timeout must be a positive number of seconds")


def _gdb_report(make_cmd, env, no_report, capture: bool = False) -> dict:
    """Run the gdb command that make_cmd(report_path) builds; return the report it wrote.
    no_report(process) raises the CliError that says why there is none. CAPTURE: collect
    gdb's output for no_report (stdin from /dev/null) instead of passing it through."""
    where = os.environ.get("TMPDIR") or "/tmp"
    tmp = os.path.join(where, f"gdb-cudashim-{os.getpid()}-{os.urandom(6).hex()}")
    try:
        os.mkdir(tmp, 0o700)  # fails rather than reuse anything already there
    except OSError as exc:
        raise CliError(f"cannot make a temporary directory in {where} (TMPDIR): {exc.strerror}") from None
    report_path = os.path.join(tmp, "report.json")
    try:
        cmd = make_cmd(report_path)
        ended = _run_captured(cmd, env) if capture else _run_through(cmd, env)
        if not os.path.exists(report_path):
            no_report(ended)
        import json

        with open(report_path) as f:
            return json.load(f)
    finally:
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)


class _Ended:
    def __init__(self, returncode, stdout=None, stderr=None):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run_through(cmd, env) -> _Ended:
    """gdb with this terminal's stdio, started without importing subprocess (~7 ms of
    every run before gdb starts)."""
    pid = os.posix_spawn(cmd[0], cmd, env)
    try:
        _warm_up_renderer()  # while gdb runs: the imports cost ~0.1 s of a ~1 s run
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    except BaseException:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    return _Ended(os.waitstatus_to_exitcode(status))


def _run_captured(cmd, env) -> _Ended:
    import subprocess

    with subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            _warm_up_renderer()
            out, err = proc.communicate()
        except BaseException:
            proc.kill()
            raise
    return _Ended(proc.returncode, out, err)


def _warm_up_renderer() -> None:
    """Import what rendering the report needs (tabulate, pygments) while gdb is busy."""
    import json  # noqa: F401

    try:
        import pygments.console  # noqa: F401
        import tabulate  # noqa: F401

        from .core import report  # noqa: F401
    except ImportError:
        pass  # reported when the report is rendered


def _emit(report: dict, args, command: list[str]) -> int:
    """Write --json (atomically), print the report, and return its exit status."""
    from .core.report import render

    report.setdefault("meta", {})["command"] = command
    if args.json:
        tmp_out = f"{args.json}.tmp{os.getpid()}"
        from .core.report import to_json

        with open(tmp_out, "w") as f:
            f.write(to_json(report))
        os.replace(tmp_out, args.json)
    print("\n".join(render(report, color=_color(args.color), verbose=args.verbose)))
    return int(report.get("status", 1))


def cmd_run(args) -> int:
    program = _check_program(args.command)
    for pattern in args.pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CliError(f"bad --pattern {pattern!r}: {exc}")
    _check_report_args(args)
    base, env = _gdb_base(_gdb_env())
    arm = ["catch-init-error"] + [f"--pattern={shlex.quote(p)}" for p in args.pattern]
    if not args.follow:
        arm.append("--no-follow-children")
    if args.every_return:
        arm.append("--every-return")

    def make_cmd(report_path):
        drive = ["cuda-run", "--no-report", "--quit", "--json", report_path]
        if args.timeout:
            drive += ["--timeout", str(args.timeout)]
        return base + ["-batch", "-ex", " ".join(arm), "-ex", " ".join(drive), "--args", program] + args.command[1:]

    def no_report(proc):
        raise CliError(f"gdb ended (status {proc.returncode}) without a report; run the same under "
                       f"'gdb-cudashim gdb --args ...' to see why")

    return _emit(_gdb_report(make_cmd, env, no_report), args, args.command)


def _processes() -> list[tuple[int, str, str]]:
    """(pid, comm, argv) of every readable process but this one."""
    out = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, os.getppid()):
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append((int(entry), comm, argv))
    return out


def _pick_target(target: str) -> int:
    if target.isdigit():
        pid = int(target)
        if not os.path.exists(f"/proc/{pid}"):
            raise CliError(f"no process {pid}")
        return pid
    matches = [(pid, comm, argv) for pid, comm, argv in _processes()
               if comm == target or os.path.basename(argv.split(" ", 1)[0]) == target]
    if not matches:
        raise CliError(f"no process named {target!r}")
    if len(matches) == 1:
        return matches[0][0]
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit.shortcuts import radiolist_dialog  # only here: never at load time

        choice = radiolist_dialog(title=f"Several processes match {target!r}", text="Attach to which one?",
                                  values=[(pid, f"{pid}  {argv[:100]}") for pid, _, argv in matches]).run()
        if choice is None:
            raise CliError("no process chosen")
        return int(choice)
    listing = "; ".join(f"{pid} ({argv[:60]})" for pid, _, argv in matches[:8])
    raise CliError(f"{len(matches)} processes match {target!r}: {listing}; give a PID")


def _check_ptrace(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        raise CliError(f"no process {pid}") from None
    tracer = int(status.get("TracerPid", "0").strip() or 0)
    if tracer:
        name = ""
        try:
            with open(f"/proc/{tracer}/comm") as f:
                name = f" ({f.read().strip()})"
        except OSError:
            pass
        raise CliError(f"process {pid} is already traced by pid {tracer}{name}; detach that debugger (or strace) first")
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read().strip())
    except (OSError, ValueError):
        scope = 0
    if os.geteuid() != 0:
        uid = int(status.get("Uid", "0").split()[1]) if status.get("Uid") else None
        if uid is not None and uid != os.geteuid():
            raise CliError(f"process {pid} belongs to uid {uid}: attach as that user or with sudo")
        if scope >= 1:
            raise CliError(f"kernel.yama.ptrace_scope is {scope}: only a parent may trace its child; run with sudo, "
                           "or 'sudo sysctl kernel.yama.ptrace_scope=0'")


def cmd_attach(args) -> int:
    _check_report_args(args)
    pid = _pick_target(args.target)
    _check_ptrace(pid)
    base, env = _gdb_base(_gdb_env())

    def make_cmd(report_path):
        drive = ["cuda-run", "--no-report", "--detach", "--quit", "--json", report_path, "--timeout", str(args.timeout)]
        arm = "catch-init-error --every-return" if args.every_return else "catch-init-error"
        return base + ["-batch", "-p", str(pid), "-ex", arm, "-ex", " ".join(drive)]

    def no_report(proc):
        text = (proc.stdout or "") + (proc.stderr or "")
        if "Operation not permitted" in text:
            raise CliError(f"ptrace refused to attach to {pid} (Operation not permitted): run with sudo, or check "
                           "kernel.yama.ptrace_scope and container seccomp/CAP_SYS_PTRACE")
        last = next((l for l in reversed(text.strip().splitlines()) if l.strip()), "no output")
        raise CliError(f"could not attach to {pid}: {last}")

    report = _gdb_report(make_cmd, env, no_report, capture=True)
    return _emit(report, args, [f"attach {pid}"])


def cmd_gdb(args) -> int:
    env = _gdb_env()
    base, env = _gdb_base(env, batch=False)
    import subprocess

    return subprocess.call(base + args.gdb_args, env=env)


def cmd_gdbinit(args) -> int:
    print(f"source {GDBINIT}")
    return 0


def cmd_doctor(args) -> int:
    import subprocess

    print(f"gdb-cudashim in {deps.package_root()}; this Python: {sys.version.split()[0]} ({sys.executable})")
    gdb = _gdb()
    env = _gdb_env()
    out = subprocess.run([gdb, "-nx", "-q", "-batch", "-iex", f"source {GDBINIT}", "-ex", "cuda-doctor"],
                         env=env, capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    sys.stdout.write(out.stderr)
    from . import stack

    s = stack.installed()
    print(f"real CUDA stack: {s.root if s else 'not fetched (make stack)'}")
    for tool in ("cc", "make"):
        print(f"{tool}: {_which(tool) or 'MISSING (apt-get install build-essential)'}")
    return 0 if "all dependencies importable" in out.stdout else 1


def cmd_stack(args) -> int:
    from . import stack

    if args.action == "fetch":
        s = stack.fetch(log=lambda m: print(f"gdb-cudashim: {m}", file=sys.stderr))
        print(s.root)
        return 0
    s = stack.require()
    what = {"root": s.root, "lib": s.lib, "include": s.include, "cudart": s.cudart, "ggml-cuda": s.ggml_cuda}
    print(what[args.what])
    return 0


def cmd_audit(args) -> int:
    from .core import audit

    return audit.main(args)


class _Parser(argparse.ArgumentParser):
    def _get_formatter(self):
        return self.formatter_class(prog=self.prog, width=help_width())  # see core/term.py


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gdb-cudashim",
                description="Why does ggml/llama.cpp/ollama's CUDA backend fail to initialise under a CUDA shim?")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="run a program under gdb with catch-init-error armed and report",
                       description="Run PROGRAM under gdb with catch-init-error armed, children followed, and print "
                                   "the report. Exit: 0 no failure, 1 failure caught, 2 usage/environment, 3 timed out.")
    r.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    r.add_argument("--timeout", type=float, metavar="S", help="interrupt after S seconds and report every thread")
    r.add_argument("--pattern", action="append", default=[], metavar="REGEX", help="also capture writes matching REGEX")
    r.add_argument("--no-follow-children", dest="follow", action="store_false", help="do not follow child processes")
    r.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    r.add_argument("--verbose", action="store_true", help="every call and lookup, full backtraces")
    r.add_argument("--every-return", action="store_true", help=EVERY_RETURN_HELP)
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("attach", help="attach to a running process (and its future children), report, detach",
                       description="Attach to PID or the process named NAME, arm catch-init-error for it and its future "
                                   "children, watch for --timeout seconds (or until it exits), report, and detach leaving "
                                   "it running and unpatched. Exit: 0 no failure, 1 failure caught, 2 usage/permission.")
    t.add_argument("target", metavar="PID|NAME")
    t.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    t.add_argument("--timeout", type=float, default=30.0, metavar="S", help="how long to watch (default 30)")
    t.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    t.add_argument("--verbose", action="store_true")
    t.add_argument("--every-return", action="store_true", help=EVERY_RETURN_HELP)
    t.set_defaults(func=cmd_attach)

    g = sub.add_parser("gdb", help="start gdb with the extension loaded", add_help=False)
    g.add_argument("gdb_args", nargs=argparse.REMAINDER)
    g.set_defaults(func=cmd_gdb)

    i = sub.add_parser("gdbinit", help="print the line that loads the extension (for ~/.gdbinit)")
    i.set_defaults(func=cmd_gdbinit)

    d = sub.add_parser("doctor", help="check gdb's Python, the dependencies and the set-up")
    d.set_defaults(func=cmd_doctor)

    s = sub.add_parser("stack", help="fetch or locate the pinned real CUDA stack (cudart 12.9 + libggml-cuda)")
    s.add_argument("action", choices=("fetch", "path"))
    s.add_argument("what", nargs="?", default="root", choices=("root", "lib", "include", "cudart", "ggml-cuda"))
    s.set_defaults(func=cmd_stack)

    a = sub.add_parser("audit", help="check, without running, that shims give cudart and libggml-cuda what they need")
    # defined here, not in core.audit: importing that (pyelftools, the stack) cost every command ~35 ms
    a.add_argument("--shim", action="append", default=[], metavar="PATH", help="a shim library to check (repeatable)")
    a.add_argument("--consumer", action="append", default=[], metavar="PATH",
                   help="what uses it: libggml-cuda*, libcudart.so.12 (default: the pinned real stack)")
    a.add_argument("--env-from", type=int, metavar="PID", help="resolve with this process's environment")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_audit)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        return args.func(args)
    except CliError as exc:
        print(f"gdb-cudashim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gdb-cudashim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .stack import StackError

        if isinstance(exc, StackError) or isinstance(exc, OSError):
            print(f"gdb-cudashim: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get("GDB_CUDASHIM_DEBUG"):
            raise
        print(f"gdb-cudashim: internal error: {type(exc).__name__}: {exc} (GDB_CUDASHIM_DEBUG=1 shows where)",
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
