"""Hostile and awkward input to the gdb-cudashim command (issue #12): each case gets one clear
answer. Real gdb, the real stack, real processes, a real terminal (pty) for the picker."""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import BUILD, CLI, ROOT, SHIM_BUILD, env_with, run_cli, run_report

SEED = SHIM_BUILD / "variants" / "seed"


def one_line(proc, words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_gdb_passes_every_gdb_option_through():
    proc = run_cli(["gdb", "-nx", "-q", "-batch", "-ex", "help catch-init-error", "--args", "/bin/true", "x"])
    assert proc.returncode == 0, proc.stderr
    assert "Usage: catch-init-error" in proc.stdout


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "abc", "-1", "0"])
@pytest.mark.parametrize("command", [["run"], ["attach", "1"]])
def test_timeout_that_is_not_a_sane_number_is_one_line(command, value):
    args = command[:1] + ["--timeout", value] + command[1:] + (["--", "/bin/true"] if command == ["run"] else [])
    one_line(run_cli(args), "--timeout")


def test_pipe_closed_early_exits_quietly_with_the_real_status(stack, probe):
    """gdb-cudashim run ... | head -1"""
    env = env_with(LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda)
    cli = subprocess.Popen(CLI + ["run", "--", str(probe)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    cli.stdout.readline()
    cli.stdout.close()  # head -1 has its line and goes
    err = cli.stderr.read().decode()
    assert cli.wait(timeout=120) == 1
    ours = [l for l in err.splitlines() if "ggml_cuda_init" not in l]  # the program's own stderr is its own
    assert ours == [], err


def test_no_follow_children_says_which_children_loaded_cuda(stack, tmp_path):
    env = env_with(LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [BUILD / "spawner", BUILD / "probe", "--post", "20000"], env,
                              extra=["--no-follow-children"])
    notes = [n for n in report["notes"] if "not followed" in n]
    assert notes and "(probe, a child of" in notes[0] and "libggml-cuda" in notes[0], report["notes"]
    assert "run without --no-follow-children" in proc.stdout


def test_a_failed_write_is_not_listed_as_written(stack, probe, tmp_path):
    """stderr closed: ggml's message never reached any file; the report says what was attempted."""
    env = env_with(LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, ["/bin/sh", "-c", f'exec 2>&-; exec "{probe}"'], env)
    (err,) = report["errors"]
    assert err["error"] == "EBADF" and "failed to initialize CUDA" in err["text"]
    assert "as written or attempted" in proc.stdout and "the write failed: EBADF" in proc.stdout
    assert "CUDA init errors, as written\n" not in proc.stdout


def test_a_huge_error_line_is_shown_once_and_short_but_kept_whole_in_json():
    from gdb_cudashim.core.report import render, to_json

    text = "ggml_cuda_init: failed to initialize CUDA: " + "x" * (1 << 20) + "\n"
    error = {"pid": 7, "fd": 2, "via": "write", "text": text, "backtrace": [], "origin": None}
    report = {"status": 1, "meta": {}, "errors": [error, dict(error)], "calls": [], "lookups": [], "loads": [],
              "findings": [], "processes": [], "hang": None, "stops": 1, "notes": []}
    lines = render(report)
    shown = [l for l in lines if "failed to initialize CUDA" in l]
    assert len(shown) == 2 and all(len(l) < 700 for l in shown), [len(l) for l in shown]
    assert "more characters; the whole text is in --json" in shown[0]
    assert "wrote 'ggml_cuda_init" in shown[1] and "2 times" in shown[1]
    assert json.loads(to_json(report))["errors"][0]["text"] == text


def test_attach_to_itself_is_refused():
    code = f"import sys, os; from gdb_cudashim.cli import main; sys.exit(main(['attach', str(os.getpid())]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    one_line(proc, "is this gdb-cudashim itself")


@pytest.mark.parametrize("target", ["", "   "])
def test_attach_to_an_empty_name(target):
    one_line(run_cli(["attach", target]), "attach needs a PID or a program name")


def test_attach_by_full_path(tmp_path):
    sleeper = tmp_path / "mysleep"
    sleeper.write_bytes(open("/bin/sleep", "rb").read())
    sleeper.chmod(0o755)
    proc = subprocess.Popen([str(sleeper), "60"])
    try:
        out = run_cli(["attach", str(sleeper), "--timeout", "1"])
        assert out.returncode == 4, out.stdout + out.stderr
        assert f"detached from {proc.pid}" in out.stdout
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    one_line(run_cli(["attach", str(tmp_path / "nothing-here")]), "no such program")


def test_permission_advice_as_root_does_not_say_run_as_root():
    if os.geteuid() != 0 or not os.path.exists("/proc/2/comm") or open("/proc/2/comm").read().strip() != "kthreadd":
        pytest.skip("needs root and a visible kernel thread (kthreadd, pid 2)")
    proc = run_cli(["attach", "2", "--timeout", "1"])
    one_line(proc, "even as root")
    assert "sudo" not in proc.stderr


@pytest.mark.parametrize("key", [b"\x1b", b"q", b"\x03"])
def test_picker_cancels_on_escape_q_and_ctrl_c(key, tmp_path):
    name = f"pick{os.getpid()}"
    (tmp_path / name).write_bytes(open("/bin/sleep", "rb").read())
    (tmp_path / name).chmod(0o755)
    sleepers = [subprocess.Popen([str(tmp_path / name), "60"]) for _ in range(2)]
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "gdb_cudashim.cli", "attach", name])
    try:
        screen = b""
        end = time.monotonic() + 30
        while b"Attach to which one" not in screen and time.monotonic() < end:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    screen += os.read(fd, 65536)
                except OSError:
                    break
        assert b"Attach to which one" in screen, screen[-500:]
        time.sleep(0.3)
        os.write(fd, key)
        rest = b""
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                rest += chunk
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        else:
            raise AssertionError("the picker did not close")
        if not done:
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 2
        assert b"no process chosen" in rest
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        for s in sleepers:
            s.kill()
            s.wait()


def test_diff_and_compare_never_block_on_a_fifo_or_read_a_device(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (["diff", str(fifo), str(fifo)], ["diff", "/dev/zero", "/dev/zero"],
                 ["run", "--compare", str(fifo), "--", "/bin/true"], ["run", "--compare", "/dev/zero", "--", "/bin/true"]):
        proc = run_cli(args, timeout=30)
        one_line(proc, "is not a regular file")


def test_closed_stdout_keeps_the_status():
    proc = subprocess.run(CLI + ["run", "--", "/bin/sh", "-c", "kill -SEGV $$"], cwd=ROOT, env=env_with(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60,
                          preexec_fn=lambda: os.close(1))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


def test_end_server_says_the_tool_ended_it(stack, tmp_path):
    """#21: run --end-server showed the server as "SIGKILL" in the Processes table, as if
    something else had killed it: the table says the tool ended it, and why."""
    prog = tmp_path / "init_then_wait"
    subprocess.run(["cc", "-g", "-O0", "-o", str(prog), str(ROOT / "tests" / "programs" / "init_then_wait.c"), "-ldl"],
                   check=True)
    env = env_with(LD_LIBRARY_PATH=SEED, GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [prog], env, extra=["--settle", "1", "--end-server", "--timeout", "60",
                                                            "--color", "never"])
    (end,) = [p for p in report["processes"] if p["what"] == "exit"]
    assert end["signal"] == "SIGKILL" and end["detail"] == "ended by gdb-cudashim (--end-server)", end
    table = proc.stdout[proc.stdout.index("Processes"):].split("\n\n", 1)[0]
    row = next(line for line in table.splitlines() if line.lstrip().startswith(str(end["pid"])))
    assert "SIGKILL, ended by gdb-cudashim (--end-server)" in row, table


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_max_walls_that_is_not_a_positive_number_is_one_line(value):
    """As cuda-whatif refuses it in gdb: before anything runs, one line, status 2."""
    one_line(run_cli(["run", "--what-if", "--max-walls", value, "--", "true"]), "--max-walls")
