"""Crashes in CUDA init (issue #11's class "crashes inside cudart"): the fatal signal is caught at
the faulting instruction, before the process dies. Real gdb, NVIDIA's real libcudart, real
libggml-cuda, and the bundled shim made to fail the two usual ways: a "success" with a private
table of zeros (CUDASHIM_EXPORT_TABLE=blank: cudart jumps to 0), and a bug of its own
(CUDASHIM_CRASH=cuInit: a NULL dereference in shim_crash)."""
from conftest import SHIM_BUILD, env_with, run_report


def crash_run(stack, probe, tmp_path, **env):
    return run_report(tmp_path, [probe], env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda, **env))


def test_a_blank_private_table_crashes_cudart_and_the_table_is_named(stack, probe, tmp_path):
    proc, report = crash_run(stack, probe, tmp_path, CUDASHIM_EXPORT_TABLE="blank")
    assert proc.returncode == 1
    assert [p["signal"] for p in report["processes"] if p["what"] == "exit"] == ["SIGSEGV"]
    first = report["findings"][0]
    assert first["rule"] == "crash-in-runtime", [f["rule"] for f in report["findings"]]
    assert "inside NVIDIA's libcudart.so.12 (a call through a NULL function pointer)" in first["summary"]
    assert "CUDART_INTERFACE" in first["summary"]
    ev = first["evidence"]
    assert "#0 0x0 (nothing is mapped there)" in ev and any(e.startswith("#1 ?? (libcudart.so.12)") for e in ev)
    assert any(e.startswith("libcuda.so.1 answered cuGetExportTable(CUDART_INTERFACE) with CUDA_SUCCESS") for e in ev)
    assert "return CUDA_ERROR_NOT_FOUND" in first["fix"]
    (lib,) = report["libraries"]
    assert lib["when"] == "at its SIGSEGV"


def test_a_crash_in_the_shims_own_code_names_its_line(stack, probe, tmp_path):
    proc, report = crash_run(stack, probe, tmp_path, CUDASHIM_CRASH="cuInit")
    first = report["findings"][0]
    assert first["rule"] == "crash-in-shim"
    assert "inside the shim libcuda.so.1, in shim_crash at cudashim.c:" in first["summary"]
    ev = first["evidence"]
    assert "thread" in ev[1] and "a NULL pointer dereference (address 0x0)" in ev[1]
    assert any(e.startswith("#2 cuInit (libcuda.so.1) at cudashim.c:") for e in ev), ev
    assert first["fix"].startswith("the fault is in the shim's own code: shim_crash at cudashim.c:")


def test_an_abort_names_who_called_it_not_libc(stack, probe, tmp_path):
    """ggml's CUDA_CHECK aborts on an error from NVIDIA's runtime (the half-fake runtime of
    fakert-partial leaves it cudaDeviceGetAttribute): the finding says ggml_abort stopped it."""
    from conftest import FAKERT_PARTIAL, VARIANTS

    proc, report = run_report(tmp_path, [probe], env_with(LD_PRELOAD=FAKERT_PARTIAL, LD_LIBRARY_PATH=VARIANTS / "seed",
                                                         GGML_CUDA_LIB=stack.ggml_cuda))
    (f,) = [f for f in report["findings"] if f["rule"] == "killed-by-signal"]
    assert "died of an abort()" in f["summary"]
    assert any(e.startswith("thread") and "raised by the process itself, from ggml_abort (libggml-base" in e
               for e in f["evidence"]), f["evidence"]
    assert f["fix"].startswith("the program stopped itself (ggml_abort")


def test_a_crash_in_a_shim_under_its_own_name_is_still_the_shims(stack, probe, tmp_path, variant_dir):
    """A driver shim preloaded as libcudashim.so (its exports take over the bundled one's): its role
    comes from what it exports (the libraries snapshot), not from its file name."""
    from conftest import build_variant

    lib = build_variant(stack, variant_dir, "crash-own", soname="libcudashim.so")
    proc, report = crash_run(stack, probe, tmp_path, LD_PRELOAD=lib, CUDASHIM_CRASH="cuInit")
    (f,) = [f for f in report["findings"] if f["rule"] == "crash-in-shim"]
    assert "inside the shim libcudashim.so, in shim_crash at " in f["summary"] and "cudashim.c:" in f["summary"]
    assert any(e.startswith("#2 cuInit (libcudashim.so) at ") for e in f["evidence"]), f["evidence"]


def test_a_wild_pointer_is_not_called_a_null_dereference(stack, probe, tmp_path):
    """A non-canonical pointer faults as a general protection fault: SIGSEGV with si_code
    SI_KERNEL and si_addr 0, which must not read as 'address 0x0'."""
    proc, report = crash_run(stack, probe, tmp_path, CUDASHIM_CRASH="cuInit", CUDASHIM_CRASH_POINTER="wild")
    (f,) = [f for f in report["findings"] if f["rule"] == "crash-in-shim"]
    assert "a wild pointer (a non-canonical address" in f["evidence"][1]
    assert "NULL" not in " ".join(f["evidence"]) + f["fix"]


def test_tables_the_real_driver_answered_behind_a_forwarding_shim_are_not_blamed(stack, probe, tmp_path):
    """The bundled shim forwarding to a driver named like NVIDIA's (a copy of the shim that answers
    with a blank table): the shim only passed the table on, so no 'your shim must not answer'."""
    real = tmp_path / "driver" / "libcuda.so.575.57.08"
    real.parent.mkdir()
    real.write_bytes((SHIM_BUILD / "libcuda.so.1").read_bytes())
    proc, report = crash_run(stack, probe, tmp_path, CUDASHIM_MODE="forward", CUDASHIM_REAL_DRIVER=real,
                             CUDASHIM_EXPORT_TABLE="blank")
    rules = [f["rule"] for f in report["findings"]]
    assert "crash-in-runtime" not in rules and "killed-by-signal" in rules, rules
    (f,) = [f for f in report["findings"] if f["rule"] == "killed-by-signal"]
    assert "a call through a NULL function pointer" in f["evidence"][1]
