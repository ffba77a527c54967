"""A clean bill is a claim (issues #18 item 5, #21): 'No CUDA init failure seen' only when CUDA
was loaded and initialised and the run watched it. Nothing loaded, a program that never ran, a
failing init call with no ggml message, a device count ggml cannot take, an attach to a thread
already inside cuInit: each is a finding. Real gdb, real programs, the real CUDA stack."""
import subprocess
import time

from conftest import FAKERT, ROOT, SHIM_BUILD, env_with, run_cli, run_report

PROGRAMS = ROOT / "tests" / "programs"

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


# -- a failing init call with no ggml message (#21 item 2) ----------------------------------------

def own_cuinit(tmp_path):
    out = tmp_path / "own_cuinit"
    subprocess.run(["cc", "-g", "-O0", "-o", str(out), str(PROGRAMS / "own_cuinit.c"), "-ldl"], check=True)
    return out


def test_program_calling_cuinit_itself_that_fails_is_a_finding(tmp_path):
    proc, report = run_report(tmp_path, [own_cuinit(tmp_path)],
                              env_with(LD_LIBRARY_PATH=SHIM_BUILD, CUDASHIM_INIT_RESULT="100"))
    assert "nvcuda init failure: 100" in proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "No CUDA init failure seen" not in proc.stdout
    (f,) = report["findings"]
    assert f["rule"] == "init-call-failed"
    assert "cuInit() in libcuda.so.1 returned CUDA_ERROR_NO_DEVICE (100)" in f["summary"]
    assert "no ggml message" in f["summary"] and "cudart" not in f["summary"]
    assert any("exited with status 1" in e for e in f["evidence"])


def test_program_loading_a_missing_libcuda_itself_is_not_about_cudart(tmp_path):
    proc, report = run_report(tmp_path, [own_cuinit(tmp_path)], env_with(LD_LIBRARY_PATH=tmp_path))
    assert "unable to load libcuda.so.1" in proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (f,) = report["findings"]
    assert f["rule"] == "driver-not-found"
    assert "own_cuinit could not load libcuda.so.1" in f["summary"]
    assert "cudart" not in f["summary"] and "35" not in f["summary"], f["summary"]
    assert f["explains"] is None


def test_program_whose_cuinit_succeeds_is_a_clean_bill(tmp_path):
    proc, report = run_report(tmp_path, [own_cuinit(tmp_path)], env_with(LD_LIBRARY_PATH=SHIM_BUILD))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["findings"] == [] and "No CUDA init failure seen." in proc.stdout


# -- device counts from a runtime shim (#21 item 3) ----------------------------------------------

def fakert_devices(stack, probe, tmp_path, count):
    env = env_with(LD_PRELOAD=FAKERT, LD_LIBRARY_PATH=SHIM_BUILD / "variants" / "seed", GGML_CUDA_LIB=stack.ggml_cuda,
                   FAKERT_LAYOUT="good", FAKERT_DEVICES=count)
    return run_report(tmp_path, [probe], env)


def test_99999_devices_names_the_count_and_ggmls_16_device_limit(stack, probe, tmp_path):
    proc, report = fakert_devices(stack, probe, tmp_path, 99999)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "GGML_ASSERT" in proc.stderr  # ggml's abort, which no CUDA error pattern matches
    rules = [f["rule"] for f in report["findings"]]
    assert rules[0] == "device-count", rules
    f = report["findings"][0]
    assert "reports 99999 CUDA devices" in f["summary"] and "GGML_CUDA_MAX_DEVICES" in f["summary"]
    assert "limit of 16" in f["summary"]
    crash = next(g for g in report["findings"] if g["rule"] == "killed-by-signal")
    assert "errors above" not in crash["fix"] and "device count" in crash["fix"]
    # ggml's own words, read from ggml_abort's arguments (its stderr is not in the window)
    (abort,) = report["aborts"]
    assert abort["message"] == "GGML_ASSERT(info.device_count <= GGML_CUDA_MAX_DEVICES) failed"
    assert any(e.startswith("ggml_abort at ggml-cuda.cu:") and "GGML_ASSERT(info.device_count" in e
               for e in crash["evidence"]), crash["evidence"]


def test_zero_devices_with_success_is_no_clean_bill(stack, probe, tmp_path):
    """A runtime that answers 0 devices and cudaSuccess: ggml carries on without CUDA and writes no
    error, ollama says library=cpu. Not a clean bill: the report names the count."""
    proc, report = fakert_devices(stack, probe, tmp_path, 0)
    assert "probe: cuda devices: 0" in proc.stdout
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "No CUDA init failure seen" not in proc.stdout
    (f,) = report["findings"]
    assert f["rule"] == "device-count" and "reports 0 CUDA devices, with success" in f["summary"]
    assert "CUDA_ERROR_NO_DEVICE" in f["fix"]


def test_negative_device_count_is_a_finding(stack, probe, tmp_path):
    proc, report = fakert_devices(stack, probe, tmp_path, -5)
    assert "found -5 CUDA devices" in proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (f,) = report["findings"]
    assert f["rule"] == "device-count" and "reports -5 CUDA devices" in f["summary"]


# -- attach: a thread already in cuInit, an init that ran before the watch (#21 item 4) -------------

def _wait_for(path, text, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never showed in {path}")


def test_attach_to_a_thread_already_blocked_in_cuinit_is_a_hang(stack, probe, tmp_path):
    out = tmp_path / "probe.out"
    with open(out, "w") as sink:
        victim = subprocess.Popen([str(probe)], stdout=sink, stderr=sink,
                                  env=env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda,
                                               CUDASHIM_HANG="cuInit"))
    try:
        time.sleep(1.5)  # inside cuInit, waiting forever
        proc = run_cli(["attach", str(victim.pid), "--timeout", "2"])
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "No CUDA init failure seen" not in proc.stdout
        assert "already inside cuInit (libcuda.so.1)" in proc.stdout and "its CUDA init hangs" in proc.stdout
        assert victim.poll() is None  # left running
    finally:
        victim.kill()
        victim.wait()


def test_attach_after_init_already_failed_reads_what_it_left(stack, tmp_path):
    prog = tmp_path / "init_then_wait"
    subprocess.run(["cc", "-g", "-O0", "-o", str(prog), str(PROGRAMS / "init_then_wait.c"), "-ldl"], check=True)
    out = tmp_path / "server.out"
    with open(out, "w") as sink:
        server = subprocess.Popen([str(prog)], stdout=sink, stderr=sink,
                                  env=env_with(LD_LIBRARY_PATH=SHIM_BUILD / "variants" / "seed",
                                               GGML_CUDA_LIB=stack.ggml_cuda))
    try:
        _wait_for(out, "devices 0")
        report = tmp_path / "r.json"
        proc = run_cli(["attach", str(server.pid), "--timeout", "1", "--json", str(report)])
        assert proc.returncode == NO_CUDA, proc.stdout + proc.stderr
        assert "No CUDA init failure seen" not in proc.stdout
        import json

        (f,) = json.loads(report.read_text())["findings"]
        assert f["rule"] == "init-before-watch" and "ran before the watch began" in f["summary"]
        ev = "\n".join(f["evidence"])
        assert "ggml-cuda " in ev and "seed/libcuda.so.1" in ev and "g_init_result=" in ev
        assert server.poll() is None
    finally:
        server.kill()
        server.wait()
