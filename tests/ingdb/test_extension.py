"""Inside real gdb: loading, help text, bad input, and stepping through the shim's cuInit."""
import os

import gdb

ROOT = os.environ["INGDB_ROOT"]
PROBE = os.environ["INGDB_PROBE"]
SHIM = os.path.join(ROOT, "shim", "build")


def _out(cmd):
    return gdb.execute(cmd, to_string=True)


def test_loading_twice_is_harmless():
    before = _out("help user-defined")
    gdb.execute(f"source {ROOT}/gdb_cudashim/gdbinit.py")
    gdb.execute(f"source {ROOT}/gdb_cudashim/gdbinit.py")
    assert _out("help user-defined") == before
    for name in ("catch-init-error", "cuda-run", "cuda-report", "cuda-doctor"):
        assert name in before


def test_help_is_summary_then_usage():
    text = _out("help catch-init-error")
    lines = text.splitlines()
    assert lines[0].startswith("Capture why ggml/cudart CUDA init fails")
    assert lines[1].startswith("Usage: catch-init-error")
    assert "--follow-children" in text and "--timeout S" in text


def test_bad_option_is_one_line_error():
    try:
        gdb.execute("catch-init-error --nope", to_string=True)
    except gdb.error as exc:
        msg = str(exc)
    else:
        raise AssertionError("no error")
    assert "unrecognized arguments: --nope" in msg and "\n" not in msg
    try:
        gdb.execute("catch-init-error --pattern '('", to_string=True)
    except gdb.error as exc:
        assert "bad --pattern" in str(exc)
    else:
        raise AssertionError("no error")
    try:
        gdb.execute("cuda-report", to_string=True)
    except gdb.error as exc:
        assert "run 'catch-init-error' first" in str(exc)
    else:
        raise AssertionError("no error")


def test_step_through_shim_cuinit_with_source_and_locals():
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}")
    gdb.execute(f"file {PROBE}")
    bp = gdb.Breakpoint("cuInit")  # pending: the shim is loaded later by cudart
    gdb.execute("run", to_string=True)
    frame = gdb.selected_frame()
    assert frame.name() == "cuInit"
    sal = frame.find_sal()
    assert sal.symtab.filename.endswith("cudashim.c") and sal.line > 0
    assert int(frame.read_var("flags")) == 0
    assert frame.function().symtab.filename.endswith("cudashim.c")
    for _ in range(40):  # step to the assignment of the local 'result'
        gdb.execute("next", to_string=True)
        f = gdb.selected_frame()
        if f.name() != "cuInit":
            break
        try:
            result = int(f.read_var("result"))
            line = f.find_sal().line
            if "g_initialized = 1" in open(f.find_sal().symtab.fullname()).read().splitlines()[line - 1]:
                break
        except ValueError:
            continue
    assert result == 0  # CUDA_SUCCESS in fake mode with one device
    assert int(gdb.parse_and_eval("g_in_init_phase")) == 1
    assert int(gdb.parse_and_eval("g_device_count")) == 1
    assert int(gdb.parse_and_eval("g_gpu_info.cc_major")) == 9
    listing = _out("list")
    assert "g_initialized" in listing or "g_in_init_phase" in listing
    bp.delete()
    gdb.execute("kill", to_string=True)


def test_interactive_catch_then_run_reports_once():
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}/variants/seed")
    gdb.execute(f"file {PROBE}")
    out = _out("catch-init-error")
    assert "detach-on-fork off (was on)" in out
    gdb.execute("run")  # the report is printed when the last process exits
    report = _out("cuda-report --color never")
    assert "does not export cuGetProcAddress_v2" in report
    assert str(gdb.parameter("detach-on-fork")) in ("False", "off")
    out = _out("catch-init-error --disarm")
    assert "restored detach-on-fork on" in out and "restored schedule-multiple off" in out
    assert "restored displaced-stepping auto" in out
    assert gdb.parameter("detach-on-fork") in (True, "on")
    assert not [b for b in gdb.breakpoints() if b.type == gdb.BP_CATCHPOINT]


def test_a_wrong_symbol_table_answer_switches_to_watching_every_return():
    """The symbol-table model is checked against the returns it watches; here it is made to lie
    about one of the first watched lookups (as a library replaced on disk after loading would),
    and every later lookup in that library must then be watched."""
    from gdb_cudashim.core import dynsym
    from gdb_cudashim.gdb import session

    real_lookup = dynsym.lookup

    def lying(scope, name):
        found = real_lookup(scope, name)
        return None if name == "cuInit" else found  # the shim does export cuInit

    dynsym.lookup = lying
    try:
        gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}/variants/seed")
        gdb.execute(f"file {PROBE}")
        gdb.execute("set cudashim recorder off")  # the breakpoints' symbol-table answers are what is tested
        _out("catch-init-error")
        _out("cuda-run --no-report")
    finally:
        dynsym.lookup = real_lookup
    tl = session.State.tracer.timeline
    assert any("dlsym(libcuda.so.1, 'cuInit') returned an address where its symbol tables said NULL" in n
               for n in tl.notes), tl.notes
    in_shim = [l for l in tl.lookups if (l.handle_library or "").endswith("libcuda.so.1")]
    assert len(in_shim) > 400 and all(l.found_by == "return" for l in in_shim)
    assert next(l for l in in_shim if l.symbol == "cuInit").found is True


def test_cuda_audit_against_what_is_loaded():
    import json

    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}/variants/seed")
    gdb.execute(f"file {PROBE}")
    bp = gdb.Breakpoint("cuInit", internal=True)
    gdb.execute("run", to_string=True)
    result = json.loads(_out("cuda-audit --json"))
    shims = [f["path"] for f in result["files"] if f["kind"] == "shim"]
    assert shims == [f"{SHIM}/variants/seed/libcuda.so.1"]
    consumers = sorted(os.path.basename(f["path"]) for f in result["files"] if f["kind"] == "consumer")
    assert consumers[0].startswith("libcudart") and consumers[1].startswith("libggml-cuda")
    assert {n["symbol"] for n in result["needs"] if not n["present"]} == {"cuGetProcAddress_v2", "cuGetExportTable"}
    assert "cuGetExportTable needed by" in _out("cuda-audit")
    bp.delete()
    gdb.execute("kill", to_string=True)
    try:
        gdb.execute("cuda-audit --shim /nonexistent.so", to_string=True)
    except gdb.error as exc:
        raise AssertionError(f"unreadable file should be reported, not raised: {exc}")


def test_a_breakpoint_placed_in_an_unloaded_library_stays_off():
    """Breakpoints go to addresses read from each loaded file. After dlclose the next library
    is mapped at the same place: the first library's breakpoints must not be live inside it
    (an int3 in the middle of someone else's code), while the second library's are."""
    from gdb_cudashim.gdb import session

    import shutil
    import tempfile

    first = f"{SHIM}/libcuda.so.1"
    work = tempfile.mkdtemp(prefix="gdb-cudashim-unload-")
    try:
        second = _nvml_as_large_as(first, work)
        _unloaded_library_case(session, first, second)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pages(path):
    """How many pages ld.so reserves for PATH (its PT_LOAD segments' extent)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        end = max(s["p_vaddr"] + s["p_memsz"] for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD")
    return (end + 4095) // 4096


def _nvml_as_large_as(first, work):
    """The NVML shim rebuilt with padding to the size of FIRST: mmap fills the hole dlclose(FIRST) left
    from its top, so only a library of the same extent lies over all of FIRST's code, whatever the
    two shims' sizes are this week (the case must be exercised, not left to their sizes)."""
    import subprocess

    target, pad = _pages(first), 1
    out = os.path.join(work, "libnvidia-ml.so.1")
    for _ in range(6):
        with open(os.path.join(work, "pad.c"), "w") as f:
            f.write(f"__attribute__((used)) const char gdb_cudashim_pad[{pad}] = {{1}};\n")
        subprocess.run(["cc", "-g", "-O0", "-fPIC", "-shared", "-Wl,-soname,libnvidia-ml.so.1", "-o", out,
                        os.path.join(ROOT, "shim", "nvmlshim.c"), os.path.join(work, "pad.c"), "-ldl"], check=True)
        got = _pages(out)
        if got == target:
            return out
        pad = max(1, pad + (target - got) * 4096)
    raise AssertionError(f"could not build an NVML shim of {target} pages")


def _unloaded_library_case(session, first, second):
    gdb.execute(f"file {ROOT}/build/unload")
    gdb.execute("set cudashim recorder off")  # where breakpoints are placed is what is tested
    _out("catch-init-error")
    gdb.Breakpoint("unload_done", internal=True)
    _out(f"run {first} {second}")
    placer = session.State.tracer.placer
    stale, live = [], []
    for (function, address), bps in placer.bps.items():
        for bp in bps:
            for loc in bp.locations:
                (stale if function.startswith("cu") else live).append((function, loc))
    inside_second = [(f, loc) for f, loc in stale if gdb.solib_name(loc.address) == second]
    assert inside_second, "the second library was not mapped over the first: the case is not exercised"
    assert stale and not any(loc.enabled for _, loc in stale), [(f, hex(l.address)) for f, l in stale if l.enabled]
    nvml = [loc for f, loc in live if f.startswith("nvml")]
    assert nvml and all(loc.enabled for loc in nvml)
    _out("cuda-run --no-report")  # the rest runs to its end: no stray trap
    exits = [p.exit_code for p in session.State.tracer.timeline.processes if p.what == "exit"]
    assert exits == [0], exits


def test_a_process_killed_while_gdb_holds_it_is_collected_before_the_continue():
    """A parent's SIGKILL lands while gdb holds every process stopped for another's event: the
    killed process's threads are zombies gdb has not collected, whose registers cannot be read.
    'continue' used to fail on them ("Couldn't get registers: No such process") and the run ended
    partial. Here the kill is sent from gdb's own process at such a stop, so the case is certain."""
    import signal

    from gdb_cudashim.gdb import session

    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}/variants/seed")
    gdb.execute(f"file {ROOT}/build/forkn")
    gdb.execute("set cudashim recorder off")  # a real stop in the child at cuInit, the parent held too
    _out("catch-init-error")
    bp = gdb.Breakpoint("cuInit", internal=True)
    _out(f"run 1 {PROBE}")
    tracer = session.State.tracer
    parent = next(p.pid for p in tracer.timeline.processes if p.what == "start" and p.detail.endswith("forkn"))
    child = gdb.selected_inferior().pid
    assert child != parent and bp.hit_count == 1, (parent, child)
    bp.delete()
    os.kill(parent, signal.SIGKILL)  # the parent dies while gdb holds it stopped
    for _ in range(100):
        if open(f"/proc/{parent}/stat").read().rpartition(")")[2].split()[0] == "Z":
            break
        import time

        time.sleep(0.01)
    _out("cuda-run --no-report")
    assert not any("continue failed" in n for n in tracer.timeline.notes), tracer.timeline.notes
    ends = {p.pid: p for p in tracer.timeline.processes if p.what == "exit"}
    assert ends[parent].signal == "SIGKILL" and not ends[parent].detail, ends[parent]
    assert child in ends and tracer.stop_reason is None, (ends, tracer.stop_reason)
