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
                       ("cuda-patch cuNoSuchFunction --return 0", "not a CUDA function I know"),
                       ("cuda-patch env: --map a=b", "env: needs a variable name"),
                       ("cuda-patch 'env:A B' --map a=b", "env: needs a variable name"),
                       ("cuda-patch env:CUDA_VISIBLE_DEVICES", "needs --map FROM=TO"),
                       ("cuda-patch env:CUDA_VISIBLE_DEVICES --map GPU-1", "give FROM=TO"),
                       ("cuda-patch env:CUDA_VISIBLE_DEVICES --map 0=GPU-1", "TO cannot be longer than FROM"),
                       ("cuda-patch env:CUDA_VISIBLE_DEVICES --map a=b --return 0", "takes only --map"),
                       ("cuda-patch cuInit --return 0 --map a=b", "--map is for env:NAME"),
                       ("cuda-patch dlsym --return 'sym:a b'", "sym: needs a function name"),
                       ("cuda-patch cuInit --return sym:cuInit", "sym: is a pointer; cuInit returns a CUresult"),
                       ("cuda-patch dlsym --return 0 --preload /nonexistent/lib.so", "not a file LD_PRELOAD can name")):
        assert words in _error_of(cmd), (cmd, _error_of(cmd))
    assert len(gdb.breakpoints()) == before
    assert "no patches" in _out("cuda-patch list")
    # known but not loaded yet: pending, said so; a symbol the library may bring is allowed in --if
    assert "pending" in _out("cuda-patch cuMemAlloc_v2 --return CUDA_ERROR_OUT_OF_MEMORY")
    assert "pending" in _out("cuda-patch cuInit --return 0 --if 'g_initialized == 0'")
    assert "#1 cuMemAlloc_v2" in _out("cuda-patch list")
    assert "(at each exec)" in _out("cuda-patch env:CUDA_VISIBLE_DEVICES --map GPU-a=0")
    assert "env:CUDA_VISIBLE_DEVICES --map GPU-a=0  [at each exec]" in _out("cuda-patch list")
    assert "already patched by #" in _error_of("cuda-patch env:CUDA_VISIBLE_DEVICES --map GPU-b=1")
    _out("cuda-patch delete all")
    # --preload adds to the program's LD_PRELOAD for the patch's life, and delete gives back what was there
    standin = os.path.join(SHIM, "libcudashim-standin.so")
    _out("set environment LD_PRELOAD=/lib/x86_64-linux-gnu/libm.so.6")
    _out(f"cuda-patch dlsym --return sym:cudashim_standin_cuGetProcAddress_v2 --preload {standin}")
    assert _out("show environment LD_PRELOAD").strip() == f"LD_PRELOAD = /lib/x86_64-linux-gnu/libm.so.6:{standin}"
    _out("cuda-patch delete all")
    assert _out("show environment LD_PRELOAD").strip() == "LD_PRELOAD = /lib/x86_64-linux-gnu/libm.so.6"
    # two preloads, deleted oldest first: each takes only its own entry out
    audit = os.path.join(SHIM, "libcudashim-audit.so")
    first = _out(f"cuda-patch dlsym --return 0 --preload {standin}").split(":")[0].split("#")[1]
    _out(f"cuda-patch dlopen --return 0 --preload {audit}")
    _out(f"cuda-patch delete {first}")
    assert _out("show environment LD_PRELOAD").strip() == f"LD_PRELOAD = /lib/x86_64-linux-gnu/libm.so.6:{audit}"
    _out("cuda-patch delete all")
    assert _out("show environment LD_PRELOAD").strip() == "LD_PRELOAD = /lib/x86_64-linux-gnu/libm.so.6"
    _out("unset environment LD_PRELOAD")


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


_SHIM_WITH_TEXT = r"""
#include <string.h>
char g_name[32] = "H100 \xff fake";          /* not UTF-8: still text */
const char *g_where = "/opt/shim/libcuda.so.1";
int g_table[100];
char g_long[600];
unsigned long long g_words[40];
int cuInit(unsigned flags) {
    for (int i = 0; i < 100; i++) g_table[i] = i;
    memset(g_long, 'x', sizeof g_long - 1);
    return (int)flags;
}
"""


def test_cuda_state_strings_arrays_and_wide_values():
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "shim.c"), "w") as f:
        f.write(_SHIM_WITH_TEXT)
    with open(os.path.join(tmp, "main.c"), "w") as f:
        f.write("int cuInit(unsigned);\nint main(void) { return cuInit(0) + cuInit(0); }\n")
    subprocess.run(["cc", "-g", "-O0", "-fPIC", "-shared", "-Wl,-soname,libcuda.so.1", "-o",
                    os.path.join(tmp, "libcuda.so.1"), os.path.join(tmp, "shim.c")], check=True)
    subprocess.run(["cc", "-g", "-o", os.path.join(tmp, "main"), os.path.join(tmp, "main.c"),
                    os.path.join(tmp, "libcuda.so.1"), f"-Wl,-rpath,{tmp}"], check=True)
    gdb.execute(f"file {tmp}/main")
    bp = gdb.Breakpoint("cuInit", internal=True)
    gdb.execute("run", to_string=True)
    gdb.execute("continue", to_string=True)  # the second call: the first has filled the globals
    bp.delete()
    (shim,) = json.loads(_out("cuda-state --json"))[0]["shim_state"]
    g = shim["globals"]
    assert g["g_name"]["value"].startswith("H100 ") and g["g_name"]["value"].endswith(" fake"), g["g_name"]
    assert g["g_where"]["value"] == "/opt/shim/libcuda.so.1", g["g_where"]
    assert g["g_table"]["value"][:3] == [0, 1, 2] and "(85 more)" in str(g["g_table"]["value"][-1]), g["g_table"]
    text = _out("cuda-state --color never")
    assert "'/opt/shim/libcuda.so.1'" in text and "(85 more)" in text, text
    assert "(25 more)" in text  # g_words: 40 elements, 15 shown
    width = max(len(line) for line in text.splitlines())
    assert width <= 200, width  # g_long's 599 characters are shortened, with a marker
    assert "more characters" in text
    gdb.execute("kill", to_string=True)


def test_timeout_that_is_not_a_finite_positive_number_is_refused():
    """#21: nan and 1e400 (inf) were armed, and the timeout never fired."""
    for value in ("nan", "1e400", "inf", "-inf", "0", "-1", "NaN"):
        err = _error_of(f"catch-init-error --timeout={value}")
        assert "--timeout" in err and "positive" in err and "finite" in err, (value, err)
        err = _error_of(f"cuda-run --timeout={value}")
        assert "--timeout" in err and "positive" in err, (value, err)
    assert "not armed" in _out("catch-init-error --status")


def test_json_that_cannot_take_a_report_is_refused_at_once():
    """#21: --json DIR was accepted, and failed with a Python exception when the report came."""
    folder = tempfile.mkdtemp()
    for cmd in (f"catch-init-error --json {folder}", f"cuda-run --json {folder}"):
        err = _error_of(cmd)
        assert "it is a directory" in err and folder in err, (cmd, err)
    assert "not armed" in _out("catch-init-error --status")
    mine = os.path.join(folder, "notes.txt")  # the user's own file is never replaced by a report
    with open(mine, "w") as f:
        f.write("my notes\n")
    assert "not a gdb-cudashim report" in _error_of(f"catch-init-error --json {mine}")
    gdb.execute("catch-init-error --no-follow-children", to_string=True)
    gdb.execute(f"file {PROBE}")
    gdb.execute("run", to_string=True)
    for cmd in (f"cuda-report --json {folder}", f"cuda-report --json {mine}"):
        err = _error_of(cmd)
        assert err.startswith("cuda-report: ") and ("it is a directory" in err or "not a gdb-cudashim report" in err), err
    assert open(mine).read() == "my notes\n"
    report = os.path.join(folder, "r.json")
    assert "wrote" in _out(f"cuda-report --json {report}")
    assert "wrote" in _out(f"cuda-report --json {report}")  # an earlier report is replaced
    gdb.execute("catch-init-error --disarm", to_string=True)


def test_cuda_state_var_the_shim_lacks_names_what_it_has():
    """#21: --var nosuch said the shim had "no DWARF and no symbol table entries", of a shim with both."""
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}")
    gdb.execute(f"file {PROBE}")
    bp = gdb.Breakpoint("cuInit", internal=True)  # pending until libcuda.so.1 loads
    gdb.execute("run", to_string=True)
    bp.delete()
    text = _out("cuda-state --var nosuch --color never")
    assert "no DWARF" not in text and "no symbol table" not in text, text
    line = next(l for l in text.splitlines() if "nosuch" in l)
    assert "not a variable in this shim: nosuch" in line and "g_initialized" in line and "g_mode" in line, line
    text = _out("cuda-state --var nosuch --var g_mode --color never")
    assert "SHIM_MODE_" in text and "not a variable in this shim: nosuch;" in text, text
    (shim,) = json.loads(_out("cuda-state --var nosuch --json"))[0]["shim_state"]
    assert shim["missing"] == ["nosuch"] and "g_initialized" in shim["available"], shim
    gdb.execute("kill", to_string=True)


def test_cuda_patch_if_must_only_read_and_is_reported_when_it_never_applies():
    """#21: --if 'system(...)==0' ran system() at the call, then gdb died ("Recursive internal
    problem"); a condition that never held, or failed, left no word in the report."""
    gdb.execute(f"file {PROBE}")
    marker = os.path.join(tempfile.mkdtemp(), "touched")
    for cond, words in ((f'system("touch {marker}")==0', "a function call (system(...))"),
                        ("$rdi = 0", "an assignment ('=')"), ("$rdi += 1", "an assignment ('+=')"),
                        ("g_init_result++ == 0", "an increment or decrement"), ("--g_init_result", "decrement"),
                        ("(*(int (*)(void))$rdi)() == 0", "a function call"), ("$rsi(1)", "a function call")):
        err = _error_of(f"cuda-patch cuInit --return 0 --if='{cond}'")
        assert words in err and "must only read" in err, (cond, err)
    assert "no patches" in _out("cuda-patch list")
    for cond in ("$rdi == 0 && $rsi != 1", "$_streq(\"a\", \"a\")", "(int)$rdi >= 0", "sizeof(int) == 4"):
        assert "cuda-patch #" in _out(f"cuda-patch cuInit --return 0 --if '{cond}'"), cond
        _out("cuda-patch delete all")
    gdb.execute(f"set environment LD_LIBRARY_PATH={SHIM}")
    gdb.execute("catch-init-error --no-follow-children", to_string=True)
    _out("cuda-patch cuInit --return 0 --if '$rdi == 12345'")  # never holds: cuInit(0)
    _out("cuda-patch cuDriverGetVersion --return 0 --if '*(int*)0 == 1'")  # fails: gdb cannot read address 0
    _out("cuda-patch cuMemAlloc_v2 --return 0")  # never called during init
    gdb.execute("run", to_string=True)
    out = os.path.join(tempfile.mkdtemp(), "r.json")
    _out(f"cuda-report --json {out}")
    notes = json.load(open(out))["notes"]
    said = {n.split(" ", 3)[2].lstrip("("): n for n in notes if n.startswith("cuda-patch #")}
    assert "never applied: its --if never held (1 call of cuInit)" in said.get("cuInit", ""), notes
    assert "never applied: its --if failed at every call (1 call of cuDriverGetVersion): " \
        "Cannot access memory at address 0x0" in said.get("cuDriverGetVersion", ""), notes
    assert "never applied: cuMemAlloc_v2 was never called" in said.get("cuMemAlloc_v2", ""), notes
    assert not os.path.exists(marker)
    _out("cuda-patch delete all")
    gdb.execute("catch-init-error --disarm", to_string=True)


def test_cuda_patch_one_patch_per_function():
    """#21: two patches on one function made one call three rows, its arguments lost, and the
    later patch silently overrode the earlier one."""
    gdb.execute(f"file {PROBE}")
    first = _out("cuda-patch cuDriverGetVersion --return 0 --out 0=11080")
    assert first.startswith("cuda-patch #1:"), first
    err = _error_of("cuda-patch cuDriverGetVersion --return 0 --out 0=12080 --if '$rdi != 0'")
    assert "already patched by #1 (cuDriverGetVersion --return 0 --out 0=11080)" in err, err
    assert "cuda-patch delete 1" in err, err
    assert len(_out("cuda-patch list").splitlines()) == 1
    assert "#2" in _out("cuda-patch cuInit --return 0")  # another function: fine
    _out("cuda-patch delete 1")
    assert "#3: cuDriverGetVersion" in _out("cuda-patch cuDriverGetVersion --return 0 --out 0=12080")
    assert "One patch per function" in _out("help cuda-patch")
    _out("cuda-patch delete all")
