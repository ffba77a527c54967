"""A libggml-cuda that fails to load, explained to the file that causes it, from ld.so's own message
(core/ldmsg.py) and where ld.so looked (the in-process recorder's la_objsearch records), with the
traced process's environment (issue #18 item 2). Real ld.so, real libggml-cuda and cudart."""
import subprocess

from conftest import ROOT, env_with, run_report

from gdb_cudashim.core import ldmsg


def test_ld_so_messages_name_the_file_the_problem_is_in():
    assert ldmsg.parse("load_backend: failed to load /x/libggml-cuda.so: /s/libcuda.so.1: undefined symbol: g_x") == \
        ldmsg.LoaderError(kind=ldmsg.UNDEFINED, file="/s/libcuda.so.1", symbol="g_x")
    said = ldmsg.parse("/a/libcudart.so.12: version `libcudart.so.12' not found (required by /b/libggml-cuda.so)")
    assert (said.kind, said.file, said.version, said.required_by) == (
        ldmsg.VERSION, "/a/libcudart.so.12", "libcudart.so.12", "/b/libggml-cuda.so")
    assert ldmsg.parse("libcuda.so.1: cannot open shared object file: No such file or directory").file == "libcuda.so.1"
    assert ldmsg.search_dir("/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libcuda.so.1") == "/lib/x86_64-linux-gnu"


def test_a_missing_driver_is_explained_by_who_needs_it_and_where_ld_so_looked(stack, probe, tmp_path):
    env = env_with(LD_LIBRARY_PATH=tmp_path / "nowhere", GGML_CUDA_LIB=stack.ggml_cuda)
    proc, report = run_report(tmp_path, [probe], env)
    (f,) = [f for f in report["findings"] if f["rule"] == "backend-load-failed"]
    assert f["summary"] == (f"libggml-cuda failed to load: {stack.ggml_cuda.name} needs libcuda.so.1, which ld.so "
                            "found nowhere"), f["summary"]
    looked = next(e for e in f["evidence"] if e.startswith("ld.so looked for libcuda.so.1 in: "))
    assert "(DT_RUNPATH)" in looked and "/usr/lib/x86_64-linux-gnu (the default directories)" in looked
    assert any("LD_LIBRARY_PATH names" in e and "nowhere" in e for e in f["evidence"])
    assert "LD_LIBRARY_PATH" in f["fix"] and "audit" not in f["fix"]


def test_a_shims_own_unresolved_reference_is_the_shims(stack, probe, tmp_path):
    """ld.so says "libcuda.so.1: undefined symbol: X": the shim's reference, not libggml-cuda's."""
    extra = tmp_path / "extra.c"
    extra.write_text("extern int shim_missing_table;\nint *shim_extra(void) { return &shim_missing_table; }\n")
    shim = tmp_path / "libcuda.so.1"
    subprocess.run(["cc", "-g", "-O0", "-fPIC", "-shared", "-Wno-deprecated-declarations", f"-I{stack.include}",
                    "-Wl,-soname,libcuda.so.1", "-o", str(shim), str(ROOT / "shim" / "cudashim.c"), str(extra),
                    "-ldl", "-lpthread"], check=True)
    proc, report = run_report(tmp_path, [probe], env_with(LD_LIBRARY_PATH=tmp_path, GGML_CUDA_LIB=stack.ggml_cuda))
    (f,) = [f for f in report["findings"] if f["rule"] == "backend-load-failed"]
    assert f["summary"] == ("libggml-cuda failed to load: libcuda.so.1 (one of its dependencies) refers to "
                            "shim_missing_table, which nothing loaded defines"), f["summary"]
    assert "export shim_missing_table" not in f["fix"] and "libcuda.so.1 uses shim_missing_table" in f["fix"]
    assert any("no library on this system defines shim_missing_table" in e for e in f["evidence"]), f["evidence"]

    # the same reference, defined by a library the shim does not link: that library is named, and linked in the fix
    (tmp_path / "defs.c").write_text("int shim_missing_table = 7;\n")
    defs = tmp_path / "libshimdefs.so.1"
    subprocess.run(["cc", "-fPIC", "-shared", "-Wl,-soname,libshimdefs.so.1", "-o", str(defs), str(tmp_path / "defs.c")],
                   check=True)
    proc, report = run_report(tmp_path, [probe], env_with(LD_LIBRARY_PATH=tmp_path, GGML_CUDA_LIB=stack.ggml_cuda))
    (f,) = [f for f in report["findings"] if f["rule"] == "backend-load-failed"]
    assert any(f"shim_missing_table is defined by {defs}" in e for e in f["evidence"]), f["evidence"]
    assert "libshimdefs.so.1 (-lshimdefs" in f["fix"], f["fix"]


def test_a_preload_ld_so_cannot_load_is_the_first_finding(stack, probe, tmp_path):
    """ld.so ignores an LD_PRELOAD it cannot load (it says so on stderr before main, where no write
    is watched): the program runs without the shim the user meant; that comes first."""
    junk = tmp_path / "libjunk.so"
    junk.write_bytes(b"not an ELF file, but named like a library\n" * 4)
    for preload, why in ((tmp_path / "nowhere" / "libcuda.so.1", "No such file or directory"),
                         (junk, "invalid ELF header")):
        env = env_with(LD_PRELOAD=preload, LD_LIBRARY_PATH=ROOT / "shim" / "build" / "variants" / "seed",
                       GGML_CUDA_LIB=stack.ggml_cuda)
        proc, report = run_report(tmp_path, [probe], env)
        first = report["findings"][0]
        assert first["rule"] == "preload-ignored" and why in first["summary"] and str(preload) in first["summary"], \
            report["findings"]
