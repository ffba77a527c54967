"""Inside real gdb: hostile input to the commands gets one clear answer (issue #12)."""
import json
import os
import subprocess
import tempfile

import gdb

ROOT = os.environ["INGDB_ROOT"]
PROBE = os.environ["INGDB_PROBE"]
SHIM = os.path.join(ROOT, "shim", "build")


def _out(cmd):
    return gdb.execute(cmd, to_string=True)


def _error_of(cmd) -> str:
    try:
        gdb.execute(cmd, to_string=True)
    except gdb.error as exc:
        assert "\n" not in str(exc) and "Traceback" not in str(exc), (cmd, str(exc))
        return str(exc)
    raise AssertionError(f"accepted: {cmd}")


def test_cuda_patch_rejects_what_cannot_work():
    gdb.execute(f"file {PROBE}")
    before = len(gdb.breakpoints())
    for cmd, words in (("cuda-patch cuInit --return 99999999999", "does not fit in cuInit's CUresult"),
                       ("cuda-patch cuInit --return -99999999999", "does not fit"),
                       ("cuda-patch cuDriverGetVersion --return 0 --out 0=99999999999", "does not fit in 4 bytes"),
                       ("cuda-patch cuDriverGetVersion --return 0 --out 0=300:1", "does not fit in 1 byte"),
                       ("cuda-patch cuInit --return 0 --if '$rdi ==='", "--if '$rdi ===': A syntax error"),
                       ("cuda-patch cuInit --return 0 --if '$rdi == 0)'", "Junk after end of expression"),
                       ("cuda-patch cuNoSuchFunction --return 0", "not a CUDA function I know")):
        assert words in _error_of(cmd), (cmd, _error_of(cmd))
    assert len(gdb.breakpoints()) == before
    assert "no patches" in _out("cuda-patch list")
    # known but not loaded yet: pending, said so; a symbol the library may bring is allowed in --if
    assert "pending" in _out("cuda-patch cuMemAlloc_v2 --return CUDA_ERROR_OUT_OF_MEMORY")
    assert "pending" in _out("cuda-patch cuInit --return 0 --if 'g_initialized == 0'")
    assert "#1 cuMemAlloc_v2" in _out("cuda-patch list")
    _out("cuda-patch delete all")


def test_catch_armed_before_file_still_captures():
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}")
    gdb.execute("catch-init-error --no-follow-children", to_string=True)  # no program yet
    gdb.execute(f"file {PROBE}")
    gdb.execute("run", to_string=True)
    out = tempfile.mktemp(suffix=".json")
    gdb.execute(f"cuda-report --json {out}", to_string=True)
    report = json.load(open(out))
    assert report["errors"] and "named symbol not found" in report["errors"][0]["text"], report["errors"]
    assert any("ggml printed" in e for f in report["findings"] for e in f["evidence"]), report["findings"]
    gdb.execute("catch-init-error --disarm", to_string=True)
