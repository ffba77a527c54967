"""Interposing shims (HAMi-core's libvgpu.so and the like): preloaded under their own soname, they
hook dlsym and cu*, and forward to the libcuda.so.1 the loader finds. A chain, not two drivers
(issue #11 item 4). Real gdb on tests/programs/lib/interposer.c in front of the bundled shim, and
hand-made timelines."""
import pytest

from conftest import ROOT, SHIM_BUILD, build_lib, build_variant, env_with, run_report

SRC = ROOT / "tests" / "programs" / "lib" / "interposer.c"


@pytest.fixture(scope="module")
def interposer(tmp_path_factory):
    d = tmp_path_factory.mktemp("interposer")
    return build_lib(SRC, d / "libvgpu.so", "-Wl,-soname,libvgpu.so")


@pytest.fixture(scope="module")
def looping(tmp_path_factory):
    d = tmp_path_factory.mktemp("looping")
    return build_lib(SRC, d / "libvgpu.so", "-Wl,-soname,libvgpu.so", "-DLOOP=8")


def rules_of(report):
    return [f["rule"] for f in report["findings"]]


def test_interposer_is_a_chain_not_two_drivers(stack, probe, tmp_path, interposer):
    env = env_with(LD_PRELOAD=interposer, LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [probe], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the fake driver behind it still fails cudart
    assert "two-drivers" not in rules_of(report)
    (chain,) = report["chains"]
    assert chain["soname"] == "libvgpu.so" and chain["driver"].endswith("libcuda.so.1")
    assert chain["source"] == "LD_PRELOAD" and chain["hooks_dlsym"]
    assert {"cuInit", "cuDriverGetVersion", "cuGetExportTable"} <= set(chain["functions"])
    # one call followed through both: cuInit lands in the interposer, which calls the driver's
    calls = report["calls"]
    i = next(i for i, c in enumerate(calls) if c["function"] == "cuInit" and c["library"].endswith("libvgpu.so"))
    assert calls[i]["caller"].endswith("libcudart.so.12")
    inner = calls[i + 1]
    assert inner["function"] == "cuInit" and inner["library"].endswith("libcuda.so.1")
    assert inner["caller"].endswith("libvgpu.so") and inner["tid"] == calls[i]["tid"]
    out = proc.stdout
    assert "CUDA driver chain: libvgpu.so (interposer, from LD_PRELOAD, hooks dlsym) -> libcuda.so.1 (driver)" in out
    assert "cuInit from libcudart.so.12 landed in libvgpu.so, which called cuInit in libcuda.so.1" in out
    assert "soname libcuda.so.1" not in out and "rename" not in out.lower()
    # the failure is the driver's, at the end of the chain, not the interposer's that passed it on
    (table,) = [f for f in report["findings"] if f["rule"] == "export-table-failed"]
    assert "failed in libcuda.so.1 (reached through libvgpu.so)" in table["summary"], table["summary"]
    assert any(e.startswith("forwarded by libvgpu.so to libcuda.so.1, which returned") for e in table["evidence"])
    # the recorder's own wrappers, handed on by the interposer, are never taken for its answers: every
    # entry point cudart got lies in a file (they used to read as 'in no mapped file': six false findings)
    assert rules_of(report) == ["export-table-failed"], rules_of(report)
    gpa = [c for c in calls if c["function"].startswith("cuGetProcAddress") and c.get("args", {}).get("pfn")]
    assert gpa and all(c["lands_in"] != "unmapped memory" for c in gpa), [c["lands_in"] for c in gpa][:5]


def test_dlsym_hook_and_driver_asking_each_other_is_a_loop(stack, probe, tmp_path, looping):
    # the bundled shim forwards (and so resolves through dlsym, which is the hook) to a copy of itself
    real = tmp_path / "real" / "libcuda.so.1"
    real.parent.mkdir()
    real.write_bytes((SHIM_BUILD / "libcuda.so.1").read_bytes())
    env = env_with(LD_PRELOAD=looping, LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda,
                   CUDASHIM_MODE="forward", CUDASHIM_REAL_DRIVER=real)
    proc, report = run_report(tmp_path, [probe], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    f = next(f for f in report["findings"] if f["rule"] == "dlsym-loop")
    assert "libvgpu.so's dlsym hook and libcuda.so.1 ask each other" in f["summary"]
    assert "rounds" in f["summary"] and any('dlsym("cuGetProcAddress_v2")' in e for e in f["evidence"])
    assert "real dlsym" in f["fix"] and "two-drivers" not in rules_of(report)


# -- hand-made timelines: the same shapes, no gdb --------------------------------------------------

def _timeline(preload, calls, lookups=()):
    from gdb_cudashim.core.timeline import Call, Lookup, ProcessEvent, Timeline

    tl = Timeline()
    tl.add(ProcessEvent(seq=tl.next_seq(), pid=7, what="start", detail="/bin/probe",
                        env={"LD_PRELOAD": str(preload)} if preload else {}, cwd="/"))
    for item in calls:
        if item[0] == "lookup":
            _, symbol, caller = item
            tl.add(Lookup(seq=tl.next_seq(), pid=7, tid=7, how="dlsym", symbol=symbol,
                          handle_library="/opt/libcuda.so.1", version=None, found=True, caller=caller))
        else:
            function, library, caller = item
            tl.add(Call(seq=tl.next_seq(), pid=7, tid=7, function=function, library=library, caller=caller,
                        returned=True, result=0))
    return tl


CUDART, DRIVER = "/opt/cuda/libcudart.so.12", "/opt/shim/libcuda.so.1"


def test_forwarding_preload_is_an_interposer(interposer):
    from gdb_cudashim.core import interpose
    from gdb_cudashim.core.rules import rule_two_drivers

    tl = _timeline(interposer, [("cuInit", str(interposer), CUDART), ("cuInit", DRIVER, str(interposer)),
                                ("cuDeviceGetCount", str(interposer), CUDART),
                                ("cuDeviceGetCount", DRIVER, str(interposer))])
    assert rule_two_drivers(tl) == []
    (chain,) = interpose.chains(tl)
    assert chain["forwarded"] == 2 and chain["functions"] == ["cuInit", "cuDeviceGetCount"]


def test_preloaded_copy_that_does_not_forward_is_still_two_drivers(stack, variant_dir):
    from gdb_cudashim.core import interpose
    from gdb_cudashim.core.rules import rule_two_drivers

    copy = build_variant(stack, variant_dir, "preload-accident", soname="libcudashim.so")
    # its own answers, no driver call behind them; cudart's lookups go to the other file
    tl = _timeline(copy, [("cuDeviceGet", str(copy), "/opt/libggml-cuda.so"), ("cuInit", DRIVER, CUDART)])
    assert interpose.chains(tl) == []
    (f,) = rule_two_drivers(tl)
    assert f.rule == "two-drivers" and "soname libcuda.so.1" in f.fix


def test_interposer_from_ld_so_preload(interposer, tmp_path, monkeypatch):
    from gdb_cudashim.core import interpose, loader
    from gdb_cudashim.core.rules import rule_two_drivers

    listing = tmp_path / "ld.so.preload"
    listing.write_text(f"# ours\n{interposer}\n")
    monkeypatch.setenv(loader.LD_SO_PRELOAD_ENV, str(listing))
    tl = _timeline(None, [("cuInit", str(interposer), CUDART), ("cuInit", DRIVER, str(interposer))])
    (chain,) = interpose.chains(tl)
    assert chain["source"] == str(listing) and rule_two_drivers(tl) == []


def test_alternating_lookups_and_calls_are_a_loop_below_the_threshold_not():
    from gdb_cudashim.core import interpose

    hook = "/opt/libvgpu.so"
    rounds = [("lookup", "cuGetProcAddress_v2", DRIVER), ("cuGetProcAddress_v2", DRIVER, hook)]
    (loop,) = interpose.lookup_loops(_timeline(None, rounds * interpose.LOOP_ROUNDS))
    assert loop["rounds"] == interpose.LOOP_ROUNDS and loop["hook"] == hook
    assert interpose.lookup_loops(_timeline(None, rounds * (interpose.LOOP_ROUNDS - 1))) == []
    # a forwarding driver's plain lookups, each after a call from cudart: no loop
    plain = [("cuInit", DRIVER, CUDART), ("lookup", "cuInit", DRIVER)] * 10
    assert interpose.lookup_loops(_timeline(None, plain)) == []


def test_audit_reads_ld_so_preload_and_never_advises_renaming_an_interposer(interposer, tmp_path):
    import json

    from conftest import run_cli

    listing = tmp_path / "ld.so.preload"
    listing.write_text(f"{interposer}\n")
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, GDB_CUDASHIM_LD_SO_PRELOAD=listing)
    proc = run_cli(["audit", "--shim", str(interposer), "--shim", str(SHIM_BUILD / "libcuda.so.1"), "--json"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    kinds = [p["kind"] for p in result["problems"]]
    assert "wrong-soname" not in kinds and "preload-soname" not in kinds
    (note,) = [w for w in result["warnings"] if w["kind"] == "interposer"]
    assert note["subject"] == str(interposer) and "libcuda.so.1" in note["detail"]
    cudart = next(r for r in result["resolution"] if r["consumer"].endswith("libcudart.so.12"))
    assert {"how": str(listing), "path": str(interposer)}.items() <= cudart["candidates"][0].items()


def test_a_lock_wait_inside_the_interposer_is_a_wait_inside_the_shim(stack, probe, tmp_path):
    """HAMi-core's shape: its cuInit hook waits on its own lock. The hang names the interposer's
    frame as where the thread waits, as it would the driver's (#18 item 3)."""
    hook = build_lib(SRC, tmp_path / "hang" / "libvgpu.so", "-Wl,-soname,libvgpu.so", "-DHANG_IN_HOOK", "-lpthread")
    env = env_with(LD_PRELOAD=hook, LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [probe], env, extra=["--timeout", "4"])
    assert proc.returncode == 3, proc.stdout + proc.stderr
    summary = report["hang"]["summary"]
    assert "no thread is inside a CUDA driver or shim frame" not in summary
    assert "in cuInit (libvgpu.so)" in summary and "blocked in lock_postinit" in summary, summary
    assert "(blocked in futex)" in summary, summary


def test_cuda_state_does_not_warn_that_an_interposer_is_not_libcuda(interposer):
    """An interposer under its own soname is a link of the chain by design: no 'two drivers' and no
    'cudart's dlopen will not find it' (#18 item 3)."""
    from gdb_cudashim.core import cudafiles, state

    roles = [{"role": "driver", "path": str(p), "soname": s, "kind": cudafiles.file_kind(str(p), "driver")}
             for p, s in ((interposer, "libvgpu.so"), (SHIM_BUILD / "libcuda.so.1", "libcuda.so.1"))]
    assert roles[0]["kind"] == cudafiles.DRIVER_INTERPOSER
    assert state.warnings(roles) == []


def test_interposer_in_front_of_a_driver_without_cugetprocaddress(stack, probe, tmp_path, interposer):
    """HAMi-core's shape in front of the seed shim: cudart gets the interposer's own cuGetProcAddress_v2,
    which finds none in the driver to forward to. One chain (not two drivers), and the finding says who
    asked: the interposer, on cudart's behalf, not cudart falling back to plain lookups."""
    env = env_with(LD_PRELOAD=interposer, LD_LIBRARY_PATH=SHIM_BUILD / "variants" / "seed",
                   GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [probe], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "two-drivers" not in rules_of(report), rules_of(report)
    (chain,) = report["chains"]
    assert chain["soname"] == "libvgpu.so" and chain["forwarded"] == 0
    assert "libvgpu.so looked up cuGetProcAddress_v2 in libcuda.so.1 to forward to it: NULL" in chain["example"]
    (f,) = [f for f in report["findings"] if f["rule"] == "missing-cuGetProcAddress_v2"]
    assert "libvgpu.so, in front of it, forwards cudart's cuGetProcAddress_v2 queries there" in f["summary"]
    assert not any("fell back" in e for e in f["evidence"]), f["evidence"]
    assert any(e.startswith("libvgpu.so's own cuGetProcAddress_v2 answered cudart") and "for 'cuInit'" in e
               for e in f["evidence"]), f["evidence"]


def test_a_driver_error_passed_on_by_the_interposer_is_the_drivers(stack, probe, tmp_path, interposer):
    env = env_with(LD_PRELOAD=interposer, LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda,
                   CUDASHIM_INIT_RESULT=100)
    proc, report = run_report(tmp_path, [probe], env)
    (f,) = [f for f in report["findings"] if f["rule"] == "driver-error-passed-through"]
    assert f["summary"].startswith("cuInit() in libcuda.so.1 (reached through libvgpu.so) returned CUDA_ERROR_NO_DEVICE")
    assert "forwarded by libvgpu.so to libcuda.so.1, which returned 100 (CUDA_ERROR_NO_DEVICE)" in f["evidence"]
