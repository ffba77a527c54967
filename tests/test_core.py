"""The pure core, with plain pytest (no gdb): codes against NVIDIA's real headers and library."""
import ctypes

import pytest

from gdb_cudashim.core import codes
from gdb_cudashim.core.elf import ElfProblem, read_elf


def test_error_strings_match_real_cudart(stack):
    rt = ctypes.CDLL(str(stack.cudart))
    rt.cudaGetErrorString.restype = ctypes.c_char_p
    for code, text in codes.CUDA_ERROR_STRING.items():
        assert rt.cudaGetErrorString(code).decode() == text, code


def test_code_tables_match_headers(stack):
    cuda_h = (stack.include / "cuda.h").read_text()
    assert "CUDA_ERROR_NO_DEVICE                      = 100" in cuda_h
    assert codes.cu_name(100) == "CUDA_ERROR_NO_DEVICE"
    assert codes.cu_name(34) == "CUDA_ERROR_STUB_LIBRARY"
    assert codes.cuda_name(36) == "cudaErrorCallRequiresNewerDriver"
    assert codes.cuda_name(35) == "cudaErrorInsufficientDriver"


def test_seed_message_is_98_bytes_and_maps_to_36():
    line = "ggml_cuda_init: failed to initialize CUDA: " + codes.CUDA_ERROR_STRING[36] + "\n"
    assert len(line.encode()) == 98
    assert codes.cuda_error_from_message(codes.CUDA_ERROR_STRING[36]) == 36


@pytest.mark.parametrize("text,value", [("CUDA_ERROR_NO_DEVICE", 100), ("cudaErrorNoDevice", 100), ("SUCCESS", 0),
                                        ("0x64", 100), ("11080", 11080), ("NVML_ERROR_NOT_FOUND", 6), ("no_device", 100)])
def test_parse_value(text, value):
    assert codes.parse_value(text) == value


def test_parse_value_rejects_unknown():
    with pytest.raises(codes.UnknownValue):
        codes.parse_value("CUDA_ERROR_BANANA")


def test_export_table_names():
    assert codes.export_table_name(codes.CUDART_INTERFACE) == "CUDART_INTERFACE"
    assert codes.export_table_name("00000000-0000-0000-0000-000000000000") == "unknown table"


def test_bundled_shim_has_debug_info_and_state():
    from conftest import SHIM_BUILD

    info = read_elf(str(SHIM_BUILD / "libcuda.so.1"))
    assert info.soname == "libcuda.so.1" and info.has_debug_info and info.build_id and not info.stripped
    for name in ("g_initialized", "g_device_found", "g_in_init_phase", "g_gpu_info_valid", "g_gpu_info",
                 "cuGetProcAddress_v2", "cuGetExportTable", "cuMemCreate"):
        assert name in info.exports, name
    seed = read_elf(str(SHIM_BUILD / "variants" / "seed" / "libcuda.so.1"))
    assert "cuGetProcAddress_v2" not in seed.exports and "cuGetExportTable" not in seed.exports
    assert "cuGetProcAddress" in seed.exports


def test_elf_problems_are_one_line(tmp_path):
    (tmp_path / "text").write_text("hello")
    (tmp_path / "trunc").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)
    for path, words in ((tmp_path / "text", "not an ELF"), (tmp_path, "directory"), (tmp_path / "nope", "no such"),
                        (tmp_path / "trunc", "truncated")):
        with pytest.raises(ElfProblem) as exc:
            read_elf(str(path))
        assert words in str(exc.value) and "\n" not in str(exc.value)


def test_stubs_cover_exactly_the_cublas_imports(stack):
    info = read_elf(str(stack.ggml_cuda))
    stub = read_elf(str(stack.lib / "libcublas.so.12"))
    wanted = {i.name for i in info.imports if i.library == "libcublas.so.12"}
    assert wanted and wanted <= set(stub.exports)
    assert all(stub.exports_symbol(n, "libcublas.so.12") for n in wanted)


def test_shim_own_export_table_matches_its_exports():
    """cuGetProcAddress_v2 in fake mode answers from g_own_exports: it must list every export."""
    import re

    from conftest import ROOT, SHIM_BUILD

    source = (ROOT / "shim" / "cudashim.c").read_text()
    table = set(re.findall(r'\{"(cu\w+)", \(void \*\)\w+\}', source))
    info = read_elf(str(SHIM_BUILD / "libcuda.so.1"))
    exported = {n for n in info.exports if n.startswith("cu")}
    assert table == exported


def test_mapped_files_of_this_process():
    import ctypes
    import os

    from conftest import SHIM_BUILD
    from gdb_cudashim.core.procfs import mapped_files

    lib = ctypes.CDLL(str(SHIM_BUILD / "libnvidia-ml.so.1"))
    files = mapped_files(os.getpid())
    path = str(SHIM_BUILD / "libnvidia-ml.so.1")
    assert path in files and files[path] is not None
    base = files[path]
    g = ctypes.c_int.in_dll(lib, "g_nvml_device_count")
    # the base is where the ELF file starts: the global lies at base + its symbol value
    from gdb_cudashim.core.elf import read_symtab_objects

    assert ctypes.addressof(g) == base + read_symtab_objects(path)["g_nvml_device_count"][0]


def test_a_healthy_init_is_not_an_error():
    """What ggml prints on a working GPU (seen on an H100 through the forwarding shim) must not
    count as an init failure: it made a healthy run exit 1."""
    from gdb_cudashim.core.report import build
    from gdb_cudashim.core.timeline import Timeline, Write

    tl = Timeline()
    healthy = ["ggml_cuda_init: found 1 CUDA devices (Total VRAM: 81079 MiB):\n",
               "  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, VRAM: 81079 MiB\n"]
    for text in healthy:
        tl.add(Write(seq=tl.next_seq(), pid=1, tid=1, fd=2, text=text, via="write"))
    assert not any(tl.matches_error(t) for t in healthy) and build(tl, [])["status"] == 0
    assert tl.matches_error("ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected\n")


def test_nvidias_debugger_backend_is_not_a_second_driver():
    """Under cuda-gdb, libcudadebugger.so.1 dlopens the real driver by path and calls into it:
    with a forwarding shim that looked like two drivers (seen on an H100)."""
    from gdb_cudashim.core.rules import rule_two_drivers
    from gdb_cudashim.core.timeline import Call, Load, Timeline

    real, shim = "/usr/lib/libcuda.so.580.159.04", "/opt/shim/libcuda.so.1"
    tl = Timeline()

    def call(library, caller):
        tl.add(Call(seq=tl.next_seq(), pid=7, tid=7, function="cuGetExportTable", library=library, caller=caller))

    call(shim, "/opt/cuda/libcudart.so.12")
    tl.add(Load(seq=tl.next_seq(), pid=7, tid=7, path=real, flags=2, ok=True, caller="/opt/nv/libcudadebugger.so.1"))
    call(real, "/opt/nv/libcudadebugger.so.1")
    assert rule_two_drivers(tl) == []
    call(real, "/opt/cuda/libcudart.so.12")  # cudart itself using a second driver is the trap
    assert [f.rule for f in rule_two_drivers(tl)] == ["two-drivers"]


def test_entry_point_lookups_fold_into_one_row_but_a_failing_one_keeps_its_own():
    """cudart's ~440 cuGetProcAddress_v2 lookups are one row (found / not found); any other result
    (CUDA_ERROR_NOT_INITIALIZED here) is a failure and shows."""
    from gdb_cudashim.core.report import _condense_calls

    def v2(symbol, result):
        return {"pid": 1, "function": "cuGetProcAddress_v2", "returned": True, "result": result,
                "args": {"symbol": symbol}}

    rows = _condense_calls([v2("", 500), v2("cuInit", 0), v2("cuMemMap", 500), v2("cuCtxCreate", 3),
                            v2("cuStreamCreate", 0)])
    assert [r.get("summary_args") or r["args"]["symbol"] for r in rows] == [
        "3 entry points asked for, 2 not found (e.g. cuMemMap)", "cuCtxCreate", "cuStreamCreate"]
    assert rows[1]["result"] == 3


def test_what_if_patches_of_one_function_merge_only_under_one_condition():
    """core/walls.merged: two walls' answers for cudaGetDeviceProperties_v2 on one device are one
    patch (the later --out of the same place wins); under two different --if they cannot be one
    (dropping the conditions would answer every device), and the wall is told why."""
    import pytest

    from gdb_cudashim.core.walls import Unmergeable, merged

    cc = ["cudaGetDeviceProperties_v2", "--return", "SUCCESS", "--out", "0.major=7", "--out", "0.minor=5",
          "--if", "$rsi == 0"]
    mem = ["cudaGetDeviceProperties_v2", "--return", "SUCCESS", "--out", "0.totalGlobalMem=1", "--out", "0.major=8",
           "--if", "$rsi == 0"]
    info = ["cudaMemGetInfo", "--return", "SUCCESS", "--out", "0=1:8"]
    assert merged([cc, info, mem]) == [
        ["cudaGetDeviceProperties_v2", "--return", "SUCCESS", "--if", "$rsi == 0", "--out", "0.major=8",
         "--out", "0.minor=5", "--out", "0.totalGlobalMem=1"], info]
    with pytest.raises(Unmergeable, match="different conditions"):
        merged([cc, mem[:-1] + ["$rsi == 1"]])
    assert merged([["cuInit", "--out", "0=1"]]) == [["cuInit", "--out", "0=1"]]  # no --return None


def test_an_out_value_never_exceeds_its_out_parameter():
    """core/patchout: a string only into a string buffer, no value wider than the parameter, nothing
    written through an argument passed by value; each refusal is one line."""
    import pytest

    from gdb_cudashim.core.patchout import OutError, capped, parse

    assert parse("0=0123", "cuDriverGetVersion").data == (123).to_bytes(4, "little")
    assert capped(parse("0=str:570.133.20", "nvmlSystemGetDriverVersion"), 5) == b"570.\0"
    for text, function, words in (("0=str:long text", "cuDriverGetVersion", "is an int, not a string buffer"),
                                  ("0=1:8", "cuDriverGetVersion", "8 bytes do not fit"),
                                  ("0=hex:" + "00" * 17, "cuDeviceGetUuid_v2", "17 bytes do not fit"),
                                  ("0=1", "cuInit", "passed by value"),
                                  ("0.major=8:8", "cudaGetDeviceProperties_v2", "is 4 bytes (int), not 8"),
                                  ("0=str:\udcff", "nvmlSystemGetDriverVersion", "UTF-8")):
        with pytest.raises(OutError) as exc:
            parse(text, function)
        assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


# -- the first use, after init (core/rules_use.py), on timelines as the recorder gives them ------

def _use_timeline(*calls, checks=(), exit_signal=None):
    from gdb_cudashim.core.timeline import Call, Check, Libraries, ProcessEvent, Timeline

    tl = Timeline()
    tl.add(ProcessEvent(seq=tl.next_seq(), pid=7, what="start", detail="/usr/bin/llama-cli"))
    tl.add(Call(seq=tl.next_seq(), pid=7, tid=7, function="cudaGetDeviceCount", library="libcudart.so.12",
                caller="libggml-cuda.so", args={"count": 1}, result=0, returned=True))
    tl.add(Libraries(seq=tl.next_seq(), pid=7, when="after init"))  # the init window closed
    for function, args, result in calls:
        tl.add(Call(seq=tl.next_seq(), pid=7, tid=7, function=function, library="libcudart.so.12",
                    caller="libggml-cuda.so", args=args, result=result, returned=True))
    for statement, function, message in checks:
        tl.add(Check(seq=tl.next_seq(), pid=7, tid=8, statement=statement, function=function, file="ggml-cuda.cu",
                     line=1, message=message))
    if exit_signal:
        tl.add(ProcessEvent(seq=tl.next_seq(), pid=7, what="exit", signal=exit_signal))
    return tl


def test_cublas_handle_creation_failing_after_init():
    from gdb_cudashim.core.rules import analyze

    tl = _use_timeline(("cublasCreate_v2", {}, 1))
    (f,) = [f for f in analyze(tl) if f.rule == "cublas-create-failed"]
    assert "CUBLAS_STATUS_NOT_INITIALIZED" in f.summary and "pid 7 (llama-cli)" in f.summary
    assert "cublasCreate_v2" in f.fix
    # with ggml's check: its statement first, the abort after it
    tl = _use_timeline(("cublasCreate_v2", {}, 3), checks=[("cublasCreate_v2(&cublas_handles[device])",
                                                            "cublas_handle", "the resource allocation failed")],
                       exit_signal="SIGABRT")
    rules = [f.rule for f in analyze(tl)]
    assert rules[:2] == ["cublas-create-failed", "killed-by-signal"], rules


def test_a_failed_check_in_ggml_cuda_init_is_left_to_the_init_rules():
    from gdb_cudashim.core.rules_use import rule_failed_check

    tl = _use_timeline(checks=[("cuDeviceGet(&device, id)", "ggml_cuda_init", "invalid device ordinal")])
    assert rule_failed_check(tl) == []
    tl = _use_timeline(checks=[("cudaGetDeviceProperties(&prop, i)", "ggml_backend_cuda_reg", "invalid argument")])
    assert rule_failed_check(tl) == []
    # a check in a process whose init window never closed is still the init's
    tl = _use_timeline(checks=[("cudaStreamCreateWithFlags(&stream, 0x01)", "stream", "invalid argument")])
    tl.events = [e for e in tl.events if e.kind != "libraries"]
    assert rule_failed_check(tl) == []
    tl = _use_timeline(checks=[("cudaStreamCreateWithFlags(&stream, 0x01)", "stream", "invalid argument")])
    (f,) = rule_failed_check(tl)
    assert f.rule == "ggml-check-failed" and "'cudaStreamCreateWithFlags(&stream, 0x01)'" in f.summary


def test_a_first_use_failure_is_never_the_inits_error():
    """A failed cudaMalloc after a clean init does not become the run's cudaError (core/rules.py)."""
    from gdb_cudashim.core.rules import _run_error_code

    tl = _use_timeline(("cudaMalloc", {"size": 1 << 20}, 2))
    assert _run_error_code(tl) is None


def test_a_finding_shown_not_the_cause_drops_in_rank():
    """#20: a wall whose re-run failed the same way goes below the others, with the re-run's evidence."""
    from gdb_cudashim.core import walls

    report = {"findings": [{"rule": "nvml-driver-version", "summary": "pid 7 answered '12.4'", "evidence": []},
                           {"rule": "driver-version", "summary": "cuDriverGetVersion says 11.8", "evidence": []}]}
    chain = [{"wall": 1, "rule": "nvml-driver-version", "summary": "pid 9 answered '12.4'", "verdict": "not the cause",
              "simulation": ["cuda-patch", "nvmlSystemGetDriverVersion", "--return", "SUCCESS"],
              "why": "the run failed the same way"},
             {"wall": 2, "rule": "driver-version", "summary": "cuDriverGetVersion says 11.8", "verdict": "proven",
              "simulation": ["cuda-patch", "cuDriverGetVersion"], "why": "the error is gone"}]
    walls.rank(report, chain)
    assert [f["rule"] for f in report["findings"]] == ["driver-version", "nvml-driver-version"]
    demoted = report["findings"][1]
    assert demoted["not_the_cause"] and demoted["evidence"][-1].startswith("what-if wall 1: not the cause (with "
                                                                           "cuda-patch nvmlSystemGetDriverVersion")
    assert "not_the_cause" not in report["findings"][0]
    before = [dict(f) for f in report["findings"]]
    walls.rank(report, [chain[1]])  # nothing demoted: nothing moves
    assert report["findings"] == before


def test_two_walls_rewriting_one_variable_are_one_patch():
    from gdb_cudashim.core import walls

    merged = walls.merged([["env:CUDA_VISIBLE_DEVICES", "--map", "GPU-a=0"],
                           ["env:CUDA_VISIBLE_DEVICES", "--map", "GPU-b=1", "--map", "GPU-a=1"]])
    assert merged == [["env:CUDA_VISIBLE_DEVICES", "--map", "GPU-a=1", "--map", "GPU-b=1"]]


def test_ggml_aborting_over_the_architecture_names_the_capability():
    """GGML_ABORT("ggml was not compiled with any CUDA arch <= %d") read from ggml_abort's arguments
    (formatted as printf would): the wall in ggml's words, with the capability the process was told."""
    from gdb_cudashim.core.rules import analyze
    from gdb_cudashim.core.timeline import Abort, Call, format_printf

    tl = _use_timeline(exit_signal=None)
    tl.add(Call(seq=tl.next_seq(), pid=7, tid=7, function="cudaGetDeviceProperties_v2", library="libcudart.so.12",
                caller="libggml-cuda.so", args={"device": 0, "prop": {"name": "x", "major": 7, "minor": 0,
                                                                       "nonzero": True}},
                result=0, returned=True))
    message = format_printf("ggml was not compiled with any CUDA arch <= %d", [700], lambda a: "")
    tl.add(Abort(seq=tl.next_seq(), pid=7, tid=7, file="/src/ggml/src/ggml-cuda/common.cuh", line=123,
                 message=message))
    from gdb_cudashim.core.timeline import ProcessEvent

    tl.add(ProcessEvent(seq=tl.next_seq(), pid=7, what="exit", signal="SIGABRT"))
    findings = analyze(tl)
    assert [f.rule for f in findings][:2] == ["ggml-arch-abort", "killed-by-signal"], [f.rule for f in findings]
    f = findings[0]
    assert "'ggml was not compiled with any CUDA arch <= 700'" in f.summary and "compute capability 7.0" in f.summary
    assert "ggml_abort at common.cuh:123: 'ggml was not compiled with any CUDA arch <= 700'" in findings[1].evidence


def test_ggml_abort_messages_are_filled_as_printf_would():
    from gdb_cudashim.core.timeline import format_printf

    strings = {0x1000: "info.device_count <= GGML_CUDA_MAX_DEVICES"}
    assert format_printf("GGML_ASSERT(%s) failed", [0x1000], strings.get) == \
        "GGML_ASSERT(info.device_count <= GGML_CUDA_MAX_DEVICES) failed"
    assert format_printf("%*d|%d", [5, 42, 7], strings.get) == "42|7"  # '*' takes its argument
    assert format_printf("%.*s|%.4s|%d", [3, 0x1000, 0x1000, 9], strings.get) == "inf|info|9"
    assert format_printf("%hd %hhu %d", [70000, 300, -1 & 0xFFFFFFFF], strings.get) == "4464 44 -1"
    assert format_printf("%s and %s", [0x2000, 0], strings.get) == "(unreadable) and (null)"
    assert format_printf("x%ny %f %d", [0x3000, 5], strings.get) == "xy ? 5"
    assert format_printf("%d %d", [1], strings.get) == "1 %d"  # no argument seen for it: left as written


def _whatif_report(findings, error, calls=()):
    return {"findings": [dict(f) for f in findings], "calls": list(calls), "status": 1,
            "errors": [{"text": error + "\n"}] if error else []}


_TABLE = {"rule": "missing-cuGetExportTable", "summary": "libcuda.so.1 does not export cuGetExportTable",
          "explains": 36, "evidence": []}
_NVML = {"rule": "nvml-driver-version", "summary": "nvmlSystemGetDriverVersion answered '12.4'", "evidence": []}
_ERR36 = "ggml_cuda_init: failed to initialize CUDA: API call is not supported in the installed CUDA driver"


def test_a_finding_behind_a_standing_wall_is_not_the_cause_of_that_error_only():
    """core/walls.prove with a re-run stand-in (no gdb: the verdict logic): the chain ends at a wall
    nothing simulates; the finding behind it, re-run with its own fix applied, fails the same way:
    not the cause of that error, in those words, and ranked down."""
    from gdb_cudashim.core import walls

    first = _whatif_report([_TABLE, _NVML], _ERR36)
    runs = []

    def rerun(patches):
        runs.append(patches)
        return _whatif_report([_TABLE], _ERR36, calls=[{"function": "nvmlSystemGetDriverVersion", "returned": True,
                                                        "result": 0, "patched_from": 0}])

    chain, tested = walls.prove(first, rerun, 5)
    assert [(w["rule"], w["verdict"]) for w in chain] == [("missing-cuGetExportTable", "cannot simulate")]
    (t,) = tested
    assert (t["rule"], t["verdict"], t["on_walls"]) == ("nvml-driver-version", "not the cause", [])
    assert "wall 1 still stands in front of it (cannot simulate): not the cause of this error" in t["why"]
    assert runs == [[["nvmlSystemGetDriverVersion", "--return", "SUCCESS", "--out", "0=str:570.133.20"]]]
    walls.rank(first, chain, tested)
    assert first["findings"][-1]["not_the_cause"] and "what-if test 1, on the first run" in first["findings"][-1]["evidence"][-1]


def test_a_re_run_that_never_reached_the_simulated_call_gives_no_verdict():
    from gdb_cudashim.core import walls

    first = _whatif_report([_TABLE, _NVML], _ERR36)
    chain, (t,) = walls.prove(first, lambda patches: _whatif_report([_TABLE], _ERR36), 5)
    assert t["verdict"] == "cannot simulate" and "never reached nvmlSystemGetDriverVersion" in t["why"]
    walls.rank(first, chain, [t])
    assert "not_the_cause" not in first["findings"][-1]


def test_a_chain_cut_by_the_wall_limit_tests_nothing_beside_it():
    """--max-walls 1: wall 1 proven, its re-run's first finding untried stands in front of the rest."""
    from gdb_cudashim.core import walls

    old = {"rule": "driver-version", "summary": "the driver reports version 11080 (11080)", "evidence": []}
    first = _whatif_report([old], "ggml_cuda_init: failed to initialize CUDA: CUDA driver version is insufficient")
    after = _whatif_report([_TABLE, _NVML], _ERR36, calls=[{"function": "cuDriverGetVersion", "returned": True,
                                                             "result": 0, "patched_from": 0}])
    chain, tested = walls.prove(first, lambda patches: after, 1)
    assert [(w["rule"], w["verdict"]) for w in chain] == [("driver-version", "proven")] and tested == []


def test_a_what_if_stopped_or_cut_short_judges_nothing_from_part_of_a_run():
    """A re-run that did not finish is no evidence ('cannot simulate', never proven); one the user
    stopped (RERUN raises walls.Stop) ends the what-if with the walls judged before it."""
    from gdb_cudashim.core import walls

    first = _whatif_report([_TABLE, _NVML], _ERR36)
    partial = _whatif_report([], None) | {"partial": True, "gdb_died": "gdb was killed by SIGKILL"}
    chain, (t,) = walls.prove(first, lambda patches: partial, 5)
    assert t["verdict"] == "cannot simulate" and "did not finish (gdb was killed by SIGKILL)" in t["why"]

    def stopped(patches):
        raise walls.Stop

    chain, tested = walls.prove(first, stopped, 5)
    assert [(w["rule"], w["verdict"]) for w in chain] == [("missing-cuGetExportTable", "cannot simulate")]
    assert tested == []
    old = {"rule": "driver-version", "summary": "the driver reports version 11080 (11080)", "evidence": []}
    chain, tested = walls.prove(_whatif_report([old], "insufficient"), stopped, 5)
    assert chain == [] and tested == []  # the wall in progress is dropped, not left without a verdict
