"""A clean bill is a claim (issues #18 item 5, #21): 'No CUDA init failure seen' only when CUDA
was loaded and initialised and the run watched it. Nothing loaded, a program that never ran, a
failing init call with no ggml message, a device count ggml cannot take, an attach to a thread
already inside cuInit: each is a finding. Real gdb, real programs, the real CUDA stack."""
import subprocess
import time

from conftest import BUILD, SHIM_BUILD, env_with, run_cli, run_report

NO_CUDA = 4  # README: run exit status 4, no CUDA library was loaded: nothing to diagnose


def rules_of(report):
    return [f["rule"] for f in report["findings"]]


def test_true_loads_no_cuda_and_says_so(tmp_path):
    proc, report = run_report(tmp_path, ["/bin/true"], env_with())
    assert proc.returncode == NO_CUDA, proc.stdout + proc.stderr
    assert "No CUDA init failure seen" not in proc.stdout
    assert rules_of(report) == ["no-cuda-loaded"] and report["status"] == NO_CUDA
    (f,) = report["findings"]
    assert "the program never loaded CUDA" in f["summary"]
    assert any("no process tried to dlopen a CUDA library" in e for e in f["evidence"])


def test_echo_loads_no_cuda(tmp_path):
    proc, report = run_report(tmp_path, ["/bin/echo", "hi"], env_with())
    assert proc.returncode == NO_CUDA and "hi" in proc.stdout
    assert "Nothing to diagnose" in proc.stdout and "No CUDA init failure seen" not in proc.stdout


def test_bad_interpreter_exit_127_never_loaded_cuda(tmp_path):
    script = tmp_path / "bad.sh"
    script.write_text("#!/nonexistent/interpreter\necho never\n")
    script.chmod(0o755)
    proc, report = run_report(tmp_path, [script], env_with())
    assert proc.returncode == NO_CUDA, proc.stdout + proc.stderr
    (f,) = report["findings"]
    assert f["rule"] == "no-cuda-loaded" and "status 127" in f["summary"] and "#! line" in f["fix"]


def test_truncated_elf_never_ran(tmp_path):
    prog = tmp_path / "cut"
    prog.write_bytes(open("/bin/ls", "rb").read()[:200])
    prog.chmod(0o755)
    proc, report = run_report(tmp_path, [prog], env_with())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "No CUDA init failure seen" not in proc.stdout + proc.stderr
    assert "the program never ran" in proc.stdout + proc.stderr


def test_crash_at_start_never_loaded_cuda(tmp_path):
    src = tmp_path / "crash.c"
    src.write_text("int main(void) { *(volatile int *)0 = 1; return 0; }\n")
    subprocess.run(["cc", "-g", "-o", str(tmp_path / "crash"), str(src)], check=True)
    proc, report = run_report(tmp_path, [tmp_path / "crash"], env_with())
    assert proc.returncode == 1, proc.stdout
    assert rules_of(report) == ["killed-by-signal"]
    assert "the program never loaded CUDA" in report["findings"][0]["summary"]
    assert "No CUDA init failure seen" not in proc.stdout


def test_attach_to_sleep_is_nothing_to_diagnose(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.2)
        proc = run_cli(["attach", str(sleeper.pid), "--timeout", "1"])
        assert proc.returncode == NO_CUDA, proc.stdout + proc.stderr
        assert "No CUDA init failure seen" not in proc.stdout
        assert "loaded no CUDA library while it was watched" in proc.stdout
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
