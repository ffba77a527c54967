"""The hostile-input list of issue #21: each case gets one clear line (exit 2) or does the
right thing, never a traceback, and the user's processes and files come first. Real gdb,
real processes, real files."""
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import BUILD, CLI, ROOT, SHIM_BUILD, env_with, run_cli


def one_line(proc, words, status=2):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


def _program(tmp_path_factory, name):
    """build/NAME (make programs), else compiled here the way the Makefile does."""
    built = BUILD / name
    if built.exists():
        return built
    out = tmp_path_factory.mktemp("programs") / name
    subprocess.run(["cc", "-g", "-O0", "-Wall", "-o", str(out), str(ROOT / "tests" / "programs" / f"{name}.c"),
                    "-ldl", "-lpthread"], check=True)
    return out


@pytest.fixture(scope="module")
def threaded_looper(tmp_path_factory):
    return _program(tmp_path_factory, "threaded_looper")


@pytest.fixture
def zombie():
    """A child of this test that exited and is not reaped (yet)."""
    child = subprocess.Popen(["/bin/true"])
    for _ in range(200):
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    yield child.pid
    child.wait()


# -- 1. attach to a thread id ----------------------------------------------------------------

def test_attach_to_a_thread_id_watches_its_process_and_never_kills_it(threaded_looper):
    looper = subprocess.Popen([str(threaded_looper)], env=env_with(LD_LIBRARY_PATH=SHIM_BUILD, LOOPER_TICK_MS="20"),
                              stdout=subprocess.PIPE, text=True)
    try:
        tid = next(int(line.split()[1]) for line in looper.stdout if line.startswith("thread "))
        assert tid != looper.pid
        proc = run_cli(["attach", str(tid), "--timeout", "2"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        said = proc.stderr.strip().splitlines()
        assert len(said) == 1 and f"{tid} is a thread of process {looper.pid}" in said[0], proc.stderr
        assert f"detached from {looper.pid}" in proc.stdout
        time.sleep(0.5)
        assert looper.poll() is None, f"the process died: {looper.returncode}"
    finally:
        looper.kill()
        looper.wait()


# -- 2. digits that are not ASCII ------------------------------------------------------------

@pytest.mark.parametrize("target", ["\u00b2", "\u0661", "\uff11"])
def test_attach_takes_ascii_digits_only(target):
    one_line(run_cli(["attach", target, "--timeout", "1"]), f"no process named {target!r}")


# -- 3. a zombie -----------------------------------------------------------------------------

def test_attach_to_a_zombie_says_zombie(zombie):
    proc = run_cli(["attach", str(zombie), "--timeout", "1"])
    one_line(proc, "zombie")
    assert "ptrace_scope" not in proc.stderr and "seccomp" not in proc.stderr


# -- 4. a target that exits while gdb attaches -----------------------------------------------

def test_a_target_that_exits_during_the_attach_is_said_in_words(tmp_path):
    """GDB names a wrapper that ends the target just before gdb starts: it exits between our
    checks and gdb's attach."""
    target = subprocess.Popen(["sleep", "60"])
    reaper = threading.Thread(target=target.wait)
    reaper.start()
    wrapper = tmp_path / "gdb"
    wrapper.write_text(f"#!/bin/sh\nkill -9 {target.pid}\nwhile [ -e /proc/{target.pid} ]; do sleep 0.01; done\n"
                       'exec gdb "$@"\n')
    wrapper.chmod(0o755)
    try:
        proc = run_cli(["attach", str(target.pid), "--timeout", "2"], env=env_with(GDB=str(wrapper)))
    finally:
        target.kill()
        reaper.join()
    one_line(proc, f"process {target.pid} exited before it could be watched")
    assert "--detach" not in proc.stderr


# -- 5. --json over a file that is not a report --------------------------------------------------

def test_json_never_replaces_a_file_that_is_not_a_report(tmp_path):
    prog = tmp_path / "prog"
    prog.write_bytes(open("/bin/true", "rb").read())
    prog.chmod(0o755)
    source = tmp_path / "mysrc.c"
    source.write_text("int main(void) { return 0; }\n")
    other = tmp_path / "other.json"
    other.write_text('{"name": "not a report"}\n')
    for victim in (prog, source, other):
        before = victim.read_bytes()
        for command in (["run", "--json", str(victim), "--", str(prog)], ["attach", "--json", str(victim), "1"]):
            proc = run_cli(command, timeout=60)
            one_line(proc, "not a gdb-cudashim report")
            assert "--force" in proc.stderr and proc.stdout == ""
            assert victim.read_bytes() == before


def test_json_replaces_a_report_an_empty_file_and_anything_with_force(tmp_path):
    report = tmp_path / "report.json"
    assert run_cli(["run", "--json", str(report), "--", "/bin/true"], timeout=60).returncode == 4
    assert run_cli(["run", "--json", str(report), "--", "/bin/true"], timeout=60).returncode == 4
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert run_cli(["run", "--json", str(empty), "--", "/bin/true"], timeout=60).returncode == 4
    source = tmp_path / "notes.txt"
    source.write_text("mine\n")
    proc = run_cli(["run", "--force", "--json", str(source), "--", "/bin/true"], timeout=60)
    assert proc.returncode == 4, proc.stderr  # no CUDA loaded: nothing to diagnose
    for path in (report, empty, source):
        assert "schema" in json.loads(path.read_text())


def test_json_into_a_fifo_nobody_reads_is_refused_before_the_run(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    marker = tmp_path / "ran"
    proc = run_cli(["run", "--json", str(fifo), "--", "/bin/sh", "-c", f"touch {marker}"], timeout=30)
    one_line(proc, "nobody reads")
    assert not marker.exists() and proc.stdout == ""


def test_json_into_a_fifo_with_a_reader_gets_the_whole_report(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    time.sleep(0.2)
    proc = run_cli(["run", "--json", str(fifo), "--", "/bin/true"], timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert json.loads(reader.communicate(timeout=10)[0])["schema"]


# -- 6. TMPDIR with a space or a quote ---------------------------------------------------------

@pytest.mark.parametrize("name", ["a b", "it's", 'say "x"'])
def test_tmpdir_with_a_space_or_a_quote(tmp_path, name):
    where = tmp_path / name
    where.mkdir()
    report = tmp_path / "report.json"
    proc = run_cli(["run", "--json", str(report), "--", "/bin/true"], env=env_with(TMPDIR=where), timeout=60)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # no CUDA loaded: nothing to diagnose
    assert "Nothing to diagnose" in proc.stdout
    assert json.loads(report.read_text())["schema"]
    assert os.listdir(where) == []


# -- 7. fuzzed reports ------------------------------------------------------------------------

def _report(**changes):
    base = {"schema": 1, "meta": {"command": ["probe"]}, "errors": [], "lookups": [], "loads": [], "findings": [],
            "calls": [{"seq": 2, "pid": 10, "tid": 10, "function": "cuInit", "args": {"Flags": 0}, "returned": True,
                       "result": 0, "library": "/x/libcuda.so.1", "caller": "/x/libcudart.so.12"}],
            "processes": [{"seq": 1, "pid": 10, "what": "start", "detail": "/x/probe", "parent": None},
                          {"seq": 9, "pid": 10, "what": "exit", "exit_code": 0}],
            "hang": None, "stops": 1, "notes": []}
    base.update(changes)
    return base


def _call(**changes):
    return dict(_report()["calls"][0], **changes)


FUZZED = {
    "args a string": _report(calls=[_call(args="Flags=0")]),
    "args a list": _report(calls=[_call(args=[1, 2])]),
    "seq a string": _report(calls=[_call(seq="two")]),
    "seq a list": _report(calls=[_call(seq=[2])]),
    "function a number": _report(calls=[_call(function=7)]),
    "error text a number": _report(errors=[{"seq": 3, "pid": 10, "fd": 2, "text": 42}]),
    "error text a list": _report(errors=[{"seq": 3, "pid": 10, "fd": 2, "text": ["a"]}]),
    "process pid a string": _report(processes=[{"seq": 1, "pid": "10", "what": "start", "detail": "/x/probe"}]),
    "process pid a list": _report(processes=[{"seq": 1, "pid": [10], "what": "start", "detail": "/x/probe"}]),
    "process pid missing": _report(processes=[{"seq": 1, "what": "start", "detail": "/x/probe"}]),
    "process detail a number": _report(processes=[{"seq": 1, "pid": 10, "what": "start", "detail": 5}]),
    "meta a list": _report(meta=["probe"]),
    "meta a string": _report(meta="probe"),
    "meta command a string": _report(meta={"command": "probe"}),
    "lookup symbol a dict": _report(lookups=[{"seq": 3, "pid": 10, "symbol": {}, "how": "dlsym"}]),
    "load path a number": _report(loads=[{"seq": 3, "pid": 10, "path": 1, "ok": True}]),
    "left_running a number": _report(left_running=5),
    "schema true": _report(schema=True),
    "schema 1.0": _report(schema=1.0),
}


@pytest.mark.parametrize("case", sorted(FUZZED))
def test_diff_of_a_fuzzed_report_is_one_line(tmp_path, case):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_report()))
    bad.write_text(json.dumps(FUZZED[case]))
    assert run_cli(["diff", str(good), str(good)], timeout=30).returncode == 0
    for args in (["diff", str(good), str(bad)], ["diff", str(bad), str(good)], ["diff", "--json", str(bad), str(good)]):
        one_line(run_cli(args, timeout=30), str(bad))


def test_run_compare_refuses_a_fuzzed_reference_before_the_run(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(FUZZED["args a string"]))
    marker = tmp_path / "ran"
    proc = run_cli(["run", "--compare", str(bad), "--", "/bin/sh", "-c", f"touch {marker}"], timeout=30)
    one_line(proc, str(bad))
    assert not marker.exists()


# -- 8. terminal control characters -------------------------------------------------------------

HOSTILE = "ggml_cuda_init: \x1b]0;pwned\x07 \x1b[2J\u202etxt.exe \x9b1m done"


def _raw_controls(text):
    return [c for c in text if c in "\x1b\x07\x9b\u202e"]


def test_diff_escapes_control_characters_on_screen_and_keeps_them_in_json(tmp_path):
    ref, run = tmp_path / "ref.json", tmp_path / "run.json"
    ref.write_text(json.dumps(_report(errors=[{"seq": 3, "pid": 10, "fd": 2, "text": "fine\n"}])))
    run.write_text(json.dumps(_report(errors=[{"seq": 3, "pid": 10, "fd": 2, "text": HOSTILE}])))
    proc = run_cli(["diff", str(ref), str(run)], timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert _raw_controls(proc.stdout) == [] and "\\x1b" in proc.stdout and "\\u202e" in proc.stdout, proc.stdout
    proc = run_cli(["diff", "--json", str(ref), str(run)], timeout=30)
    assert "\x1b" in json.loads(proc.stdout)["divergences"][0]["run"]


def test_run_escapes_the_programs_text_on_screen_and_keeps_it_in_json(tmp_path):
    report = tmp_path / "report.json"
    proc = run_cli(["run", "--json", str(report), "--", "/bin/sh", "-c", "exit 0", HOSTILE], timeout=60)
    assert proc.returncode == 4, proc.stderr  # no CUDA loaded
    assert _raw_controls(proc.stdout) == [], proc.stdout
    assert "\\x1b]0;pwned\\x07" in proc.stdout and "\\u202etxt.exe" in proc.stdout, proc.stdout
    assert json.loads(report.read_text())["meta"]["command"][-1] == HOSTILE


def test_the_report_escapes_an_error_text_on_screen():
    from gdb_cudashim.core.report import render, to_json

    error = {"pid": 7, "fd": 2, "via": "write", "text": HOSTILE + "\n", "backtrace": [], "origin": None}
    report = {"status": 1, "meta": {"command": ["probe"]}, "errors": [error], "calls": [], "lookups": [], "loads": [],
              "findings": [], "processes": [], "hang": None, "stops": 1, "notes": []}
    text = "\n".join(render(report)) + "\n".join(render(report, color=True))
    assert "\x1b[2J" not in text and _raw_controls(text.replace("\x1b[", "")) == [] and "\\x1b]0;pwned\\x07" in text, text
    assert json.loads(to_json(report))["errors"][0]["text"] == HOSTILE + "\n"


def test_escaping_is_one_function():
    from gdb_cudashim.core.term import printable

    assert printable("a\x1bb\x07c\u202ed\x9be\x7f\tf\ng") == "a\\x1bb\\x07c\\u202ed\\x9be\\x7f\tf\ng"
    assert printable("plain ünïcode") == "plain ünïcode"


# -- 9. audit --env-from ----------------------------------------------------------------------------

def test_audit_env_from_a_process_without_an_environment(zombie):
    proc = run_cli(["audit", "--shim", str(SHIM_BUILD / "libcuda.so.1"), "--env-from", str(zombie)])
    one_line(proc, f"process {zombie}")
    assert "Errno" not in proc.stderr and "no process" not in proc.stderr and "zombie" in proc.stderr


@pytest.mark.parametrize("pid", ["0", "-5"])
def test_audit_env_from_zero_is_refused(pid):
    proc = run_cli(["audit", "--shim", str(SHIM_BUILD / "libcuda.so.1"), "--env-from", pid])
    one_line(proc, "--env-from")


# -- 10. doctor without the stack ----------------------------------------------------------------

def test_doctor_is_not_ok_without_the_stack(tmp_path):
    proc = run_cli(["doctor"], env=env_with(GDB_CUDASHIM_CACHE=tmp_path / "empty-cache"), timeout=60)
    assert "real CUDA stack: not fetched" in proc.stdout, proc.stdout
    assert proc.returncode != 0


# -- 11. a deleted working directory -------------------------------------------------------------

@pytest.mark.parametrize("command", [["run", "--json", "r.json", "--", "/bin/true"], ["attach", "./x"],
                                     ["diff", "a.json", "b.json"]])
def test_a_deleted_working_directory_is_said(tmp_path, command):
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); "
            f"from gdb_cudashim.cli import main; sys.exit(main({command!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env_with(), capture_output=True, text=True,
                          timeout=60)
    one_line(proc, "the current directory was deleted")
