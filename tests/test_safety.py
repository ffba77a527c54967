"""The user's processes and files come first (issue #12): interrupting run and attach at any
moment, gdb dying, the CLI dying, and --json targets that are not plain files. Real gdb,
real programs, real signals."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import BUILD, CLI, ROOT, SHIM_BUILD, env_with

SEED = SHIM_BUILD / "variants" / "seed"


def wait_for(cond, timeout=30.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {cond}")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def status_field(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return None


def temp_dirs_of(cli_pid):
    """The temporary directories a gdb-cudashim CLI process made (named after its pid)."""
    return [n for n in os.listdir("/tmp") if n.startswith(f"gdb-cudashim-{cli_pid}-")]


def named(pids, comm):
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == comm:
                    out.append(p)
        except OSError:
            pass
    return out


def traced_by_gdb(pid):
    """PID is traced (gdb has it) and has libcuda mapped: far enough into the run."""
    try:
        if int(status_field(pid, "TracerPid") or 0) == 0:
            return False
        with open(f"/proc/{pid}/maps") as f:
            return "libcuda.so.1" in f.read()
    except OSError:
        return False


def start_cli(args, env, **kw):
    return subprocess.Popen(CLI + list(args), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def hanging_run(tmp_path, stack, extra=()):
    """gdb-cudashim run on the probe under a shim whose cuInit blocks forever; returns
    (cli process, every process under it once the probe is inside cuInit, the probe's pid)."""
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda, CUDASHIM_HANG="cuInit")
    cli = start_cli(["run", "--json", str(tmp_path / "r.json"), *extra, "--", str(BUILD / "probe")], env)
    probe = wait_for(lambda: [p for p in named(children(cli.pid), "probe") if traced_by_gdb(p)])[0]
    time.sleep(0.3)  # inside cuInit's wait by now
    return cli, children(cli.pid), probe, None


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_interrupting_run_ends_everything_and_reports(stack, tmp_path, sig, code):
    cli, procs, probe, before = hanging_run(tmp_path, stack)
    cli.send_signal(sig)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == code, out + err
    assert "partial report" in out and "Traceback" not in err
    assert "cuInit" in out  # where it was when stopped
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["partial"] is True and report["interrupted"] == signal.Signals(sig).name
    assert not [p for p in procs if alive(p)], "processes left behind"
    assert not temp_dirs_of(cli.pid), "temporary directory left behind"


HOLDER = r"""
import ctypes, os, sys
pid = int(sys.argv[1])
if ctypes.CDLL(None).ptrace(16, pid, 0, 0) != 0:  # PTRACE_ATTACH: gdb held in a tracing stop
    sys.exit(1)
print("held", flush=True)
while True:  # never PTRACE_CONT; reap its end so that its parent sees it
    try:
        _, st = os.waitpid(pid, 0x40000000)
    except ChildProcessError:
        break
    if os.WIFEXITED(st) or os.WIFSIGNALED(st):
        break
"""


def hold(pid):
    """PID frozen for good: a tracer holds it (a SIGSTOP the CLI would undo, SIGCONT)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(pid)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_ctrl_c_twice_stops_run_for_sure(stack, tmp_path):
    cli, procs, probe, before = hanging_run(tmp_path, stack)
    gdb = named(procs, "gdb")[0]
    holder = hold(gdb)  # gdb stops answering: the first Ctrl-C cannot be served
    try:
        cli.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert cli.poll() is None
        started = time.monotonic()
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=30)
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    assert cli.returncode == 130, out + err
    assert "partial report" in out and "second SIGINT" in out
    assert not [p for p in procs if alive(p)]
    assert not temp_dirs_of(cli.pid)


def test_gdb_not_answering_at_the_timeout_is_ended_from_outside(stack, tmp_path, monkeypatch):
    cli, procs, probe, before = hanging_run(tmp_path, stack, extra=["--timeout", "2"])
    gdb = named(procs, "gdb")[0]
    holder = hold(gdb)  # frozen: neither its watchdog nor its loop can act
    try:
        out, err = cli.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert cli.returncode == 3, out + err
    assert "held still from outside past the deadline" in out and "partial report" in out
    assert not [p for p in procs if alive(p)]
    assert not temp_dirs_of(cli.pid)


def test_killing_the_cli_ends_gdb_and_the_program(stack, tmp_path):
    cli, procs, probe, before = hanging_run(tmp_path, stack)
    cli.kill()  # SIGKILL: no handler runs; gdb sees its control pipe close
    cli.wait()
    wait_for(lambda: not [p for p in procs if alive(p)], timeout=30)
    wait_for(lambda: not temp_dirs_of(cli.pid), timeout=10)


def test_a_program_that_sigwaits_sigint_ends_at_the_timeout_without_receiving_it(tmp_path):
    cli = start_cli(["run", "--timeout", "2", "--json", str(tmp_path / "r.json"), "--", str(BUILD / "sigwaiter")],
                    env_with())
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 3, out + err
    assert "sigwaiter" in out and "ready" in out
    assert "GOT SIGNAL" not in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["hang"]["reason"] == "timeout"
    pid = int(out.split("sigwaiter ", 1)[1].split()[0])
    assert not alive(pid)
    assert not temp_dirs_of(cli.pid)


# -- attach: the process is someone's server; it must run on, untraced, whatever happens --

@pytest.fixture
def looper():
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, LOOPER_TICK_MS=50)
    proc = subprocess.Popen([str(BUILD / "looper")], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    proc.stdout.readline()
    yield proc
    proc.kill()
    proc.wait()


def ticks_on(proc, n=5):
    """The looper still ticks (it calls cuInit each time: a breakpoint left behind kills it)."""
    for _ in range(n):
        assert proc.stdout.readline().startswith("tick"), "the process stopped ticking"


def attach_and_wait(looper, extra=()):
    cli = start_cli(["attach", str(looper.pid), "--timeout", "60", *extra], env_with())
    wait_for(lambda: int(status_field(looper.pid, "TracerPid") or 0) != 0)
    time.sleep(1.0)  # armed and hitting its breakpoints
    return cli, None


def assert_left_running(looper):
    assert looper.poll() is None, f"the attached process died ({looper.returncode})"
    wait_for(lambda: status_field(looper.pid, "TracerPid") == "0", timeout=10)
    assert status_field(looper.pid, "State")[0] in "RS"
    ticks_on(looper)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_interrupting_attach_leaves_the_process_running(looper, sig, code):
    cli, before = attach_and_wait(looper)
    cli.send_signal(sig)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == code, out + err
    assert f"detached from {looper.pid}" in out and "partial report" in out
    assert_left_running(looper)
    assert not temp_dirs_of(cli.pid)


def test_ctrl_c_twice_on_attach_wakes_a_frozen_gdb_to_detach(looper):
    cli, before = attach_and_wait(looper)
    gdb = named(children(cli.pid), "gdb")[0]
    os.kill(gdb, signal.SIGSTOP)  # gdb is not answering
    cli.send_signal(signal.SIGINT)
    time.sleep(0.3)
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 130, out + err
    assert "gdb was woken and detached" in out and f"detached from {looper.pid}" in out
    assert_left_running(looper)
    assert not alive(gdb)
    assert not temp_dirs_of(cli.pid)


def test_gdb_killed_during_attach_leaves_the_process_running(looper):
    """gdb killed with its breakpoints in the process's code: the CLI takes them out, the
    process runs on (it calls two traced functions every 50 ms)."""
    cli, before = attach_and_wait(looper)
    gdb = named(children(cli.pid), "gdb")[0]
    # Killed while the process sleeps between ticks, held by a SIGSTOP that gdb never saw: a
    # tick in the few milliseconds before the CLI notices gdb's death would reach one of the
    # int3s. (Killed while a thread sits stopped at a breakpoint, the kernel hands that thread
    # its SIGTRAP as it detaches it: only gdb could prevent that. README, "Known limits".)
    for _ in range(200):
        os.kill(gdb, signal.SIGSTOP)
        time.sleep(0.01)
        if status_field(looper.pid, "State")[0] == "S":
            break
        os.kill(gdb, signal.SIGCONT)
        time.sleep(0.003)
    os.kill(looper.pid, signal.SIGSTOP)
    wait_for(lambda: status_field(looper.pid, "State")[0] == "t")
    os.kill(gdb, signal.SIGKILL)
    out, err = cli.communicate(timeout=30)
    assert "gdb was killed (SIGKILL) by another process" in out and "partial report" in out, out + err
    assert f"pid {looper.pid}: restored" in out, (looper.poll(), out[-600:])
    assert_left_running(looper)
    assert not temp_dirs_of(cli.pid)


# -- --json: never destroy what the path names --

def run_json(path, program=("/bin/true",)):
    return subprocess.run(CLI + ["run", "--json", str(path), "--", *program], cwd=ROOT, env=env_with(),
                          capture_output=True, text=True, timeout=120)


def test_json_into_a_character_device_writes_in_place(tmp_path):
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers, a node of our own
    proc = run_json(dev)
    assert proc.returncode == 4, proc.stderr
    assert stat.S_ISCHR(os.stat(dev).st_mode) and os.stat(dev).st_rdev == os.makedev(1, 3)


def test_json_into_dev_full_is_one_line_and_the_device_stays(tmp_path):
    dev = tmp_path / "full"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # /dev/full
    proc = run_json(dev)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"gdb-cudashim: cannot write --json {dev}: No space left on device"]
    assert stat.S_ISCHR(os.stat(dev).st_mode)


def test_json_into_a_fifo_is_written_in_place(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("text", open(fifo).read()))
    reader.start()
    proc = run_json(fifo)
    reader.join(30)
    assert proc.returncode == 4, proc.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(got["text"])["status"] == 4


def test_json_through_a_symlink_keeps_the_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text('{"schema": 1, "status": 9}')  # an earlier report
    link = tmp_path / "link.json"
    link.symlink_to(target)
    proc = run_json(link)
    assert proc.returncode == 4, proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["status"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temp file left


def test_json_dash_is_stdout(tmp_path):
    proc = run_json("-")
    assert proc.returncode == 4
    assert json.loads(proc.stdout)["status"] == 4
    assert "Nothing to diagnose" in proc.stderr


def test_json_regular_file_replaced_keeps_its_mode(tmp_path):
    target = tmp_path / "r.json"
    target.write_text('{"schema": 1, "status": 9}')  # an earlier report
    os.chmod(target, 0o640)
    proc = run_json(target)
    assert proc.returncode == 4
    assert json.loads(target.read_text())["status"] == 4
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_a_run_that_does_not_start_leaves_an_existing_report(tmp_path):
    target = tmp_path / "r.json"
    target.write_text('{"schema": 1, "status": 0}')  # the last good report
    prog = tmp_path / "foreign"
    data = bytearray((BUILD / "static_child").read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine: AArch64, which this machine cannot run
    prog.write_bytes(bytes(data))
    prog.chmod(0o755)
    proc = run_json(target, [str(prog)])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert target.read_text() == '{"schema": 1, "status": 0}'
    assert "left as it was" in proc.stderr


def test_ctrl_c_on_a_real_terminal_reaches_the_tool_not_the_program(stack, tmp_path):
    """The terminal's Ctrl-C (a pty, ^C) goes to the foreground process group: gdb runs in a
    session of its own, so that is gdb-cudashim, which stops the run and reports. Before,
    gdb handed the terminal to the program, which alone got the SIGINT (and gdb swallowed it)."""
    import pty
    import select
    import sys

    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda, CUDASHIM_HANG="cuInit")
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "gdb_cudashim.cli", "run", "--json",
                                   str(tmp_path / "r.json"), "--", str(BUILD / "probe")], env)
    out = b""
    try:
        probe = wait_for(lambda: [p for p in named(children(pid), "probe") if traced_by_gdb(p)])[0]
        procs = children(pid)
        time.sleep(0.3)
        os.write(fd, b"\x03")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                out += chunk
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        assert done, out[-2000:]
        assert os.waitstatus_to_exitcode(status) == 130, out[-2000:]
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert b"partial report" in out and b"stopped by SIGINT" in out
    assert not alive(probe) and not [p for p in procs if alive(p)]


@pytest.mark.parametrize("delay", [0.03, 0.05, 0.08, 0.12])
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_while_gdb_is_starting_leaves_nothing_behind(sig, code, delay):
    """The CLI's handlers are in place before gdb exists: a SIGTERM in between used to kill
    the CLI with the default action and leave gdb (in its own session) and the program
    running forever, traced."""
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, LOOPER_TICK_MS=50)
    cli = start_cli(["run", "--timeout", "20", "--", str(BUILD / "looper")], env, start_new_session=True)
    time.sleep(delay)
    cli.send_signal(sig)
    out, err = cli.communicate(timeout=60)
    # killed by it before Python ran our code: a shell shows 128+N either way
    assert cli.returncode in (code, -sig), out + err
    assert "Traceback" not in err
    time.sleep(0.3)
    mark = f"gdb-cudashim-{cli.pid}-"
    gdbs = [p for p in os.listdir("/proc") if p.isdigit() and mark.encode() in _cmdline(p)]
    loopers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith(str(BUILD / "looper").encode())]
    assert not gdbs and not loopers and not temp_dirs_of(cli.pid), (gdbs, loopers)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_a_gdb_that_stops_answering_is_ended_and_says_what_it_held(tmp_path):
    """gdb hangs inside a handler of its own while it traces the program (here: a Python sleep at
    the C library's load). Past --timeout and the grace, the CLI ends gdb and its program, marks
    the report partial, and notes every thread gdb was tracing then, with its state."""
    real = shutil.which("gdb") or pytest.skip("no gdb on PATH to wrap")
    wrapper = tmp_path / "gdb"
    wrapper.write_text(f"#!/bin/sh\nexec {real} -iex \"python import gdb, time; gdb.events.new_objfile.connect("
                       "lambda e: time.sleep(600) if 'libc.so' in (e.new_objfile.filename or '') else None)\" \"$@\"\n")
    wrapper.chmod(0o755)
    out = tmp_path / "r.json"
    proc = subprocess.run(CLI + ["run", "--timeout", "1", "--json", str(out), "--", str(BUILD / "probe")], cwd=ROOT,
                          env=env_with(GDB=str(wrapper)), capture_output=True, text=True, timeout=60)
    report = json.loads(out.read_text())
    assert proc.returncode == 3 and report["partial"], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gdb stopped answering; gdb-cudashim ended it" in report["notes"], report["notes"]
    (held,) = [n for n in report["notes"] if n.startswith("internal: the threads gdb was tracing then: ")]
    assert "=t" in held, held  # the probe, held in gdb's stop while gdb slept
    assert not [p for p in os.listdir(tmp_path) if p.startswith("gdb-cudashim")]
