"""cuda-state's runtime-shim part without gdb (core/state): on real files, the fake runtimes of
shim/build, fakert.c rebuilt under other sonames, and the real stack (NVIDIA's cudart, libggml-cuda).
The same, inside gdb on live processes: tests/ingdb/test_cuda_state_runtime.py."""
import os
import shutil
import subprocess

import pytest

from conftest import FAKERT, FAKERT_NOFAT, FAKERT_OWN, FAKERT_V1, SHIM_BUILD, VARIANTS
from gdb_cudashim.core import cudafiles, loader, state
from gdb_cudashim.core.elf import read_elf_cached
from ingdb.fakert_build import build_fakert

SEED = VARIANTS / "seed" / "libcuda.so.1"


def _role(path, via=None):
    role, kind, info = cudafiles.identify(str(path))
    r = {"role": role, "path": str(path), "soname": info.soname, "kind": kind, "debug_info": info.has_debug_info,
         "base": None, "loaded_via": via}
    return r, info


def _process(*files):
    """(roles, infos) of a process that has FILES ((path, loaded_via) pairs) mapped."""
    roles, infos = [], {}
    for path, via in files:
        r, info = _role(path, via)
        roles.append(r)
        infos[r["path"]] = info
    return roles, infos


@pytest.fixture(scope="module")
def built(stack, tmp_path_factory):
    """fakert.c under its own soname without cudaGetDeviceProperties_v2, and as two cudart 13 replacements."""
    d = tmp_path_factory.mktemp("fakert")
    inc = str(stack.include)
    return {
        "own_v1": build_fakert(str(d / "own-v1" / "libfakertv1.so"), "libfakertv1.so",
                               hide=("cudaGetDeviceProperties_v2",), include=inc),
        "rt13_a": build_fakert(str(d / "a" / "libcudart.so.13"), "libcudart.so.13", "libcudart.so.13", include=inc),
        "rt13_b": build_fakert(str(d / "b" / "libcudart.so.13"), "libcudart.so.13", "libcudart.so.13", include=inc),
    }


def test_what_each_runtime_is_and_whose_globals_are_read(stack, built):
    kinds = {p: _role(p)[0] for p in (FAKERT, FAKERT_OWN, stack.cudart, stack.ggml_cuda, SEED,
                                      SHIM_BUILD / "libnvidia-ml.so.1", built["rt13_a"])}
    assert (kinds[FAKERT]["role"], kinds[FAKERT]["kind"]) == ("runtime", cudafiles.REPLACEMENT)
    assert (kinds[FAKERT_OWN]["role"], kinds[FAKERT_OWN]["kind"]) == ("runtime", cudafiles.OWN_SONAME)
    assert (kinds[built["rt13_a"]]["role"], kinds[built["rt13_a"]]["kind"]) == ("runtime", cudafiles.REPLACEMENT)
    assert kinds[stack.cudart]["kind"] == cudafiles.NVIDIA_RUNTIME
    shims = {p for p, r in kinds.items() if cudafiles.is_shim(r)}
    assert shims == {FAKERT, FAKERT_OWN, SEED, SHIM_BUILD / "libnvidia-ml.so.1", built["rt13_a"]}


def test_a_shims_soname_is_not_a_cuda_version(stack, built):
    assert state.cudart_version_entry(_role(stack.cudart)[0]) == ("cudart file (libcudart.so.12)", "12")
    for path, soname in ((FAKERT, "libcudart.so.12"), (FAKERT_OWN, "libfakert.so"), (built["rt13_a"], "libcudart.so.13")):
        key, value = state.cudart_version_entry(_role(path)[0])
        assert key == f"cudart file ({os.path.basename(path)})"
        assert value == f"{soname} is the shim's soname, not a CUDA version"


def test_loaded_via_follows_ld_so(stack, tmp_path, monkeypatch):
    listing = tmp_path / "my-ld.so.preload"
    listing.write_text(f"# ours\n{FAKERT_V1}\n")
    monkeypatch.setenv(loader.LD_SO_PRELOAD_ENV, str(listing))
    preloads = loader.preload_entries({"LD_PRELOAD": f"rel/libcudart.so.12 libfakert.so:{SEED}"}, str(VARIANTS.parent))
    assert preloads == [(str(VARIANTS.parent / "rel" / "libcudart.so.12"), "LD_PRELOAD"), ("libfakert.so", "LD_PRELOAD"),
                        (str(SEED), "LD_PRELOAD"), (str(FAKERT_V1), str(listing))]
    (tmp_path / "rel").mkdir()
    os.symlink(FAKERT, tmp_path / "rel" / "libcudart.so.12")
    rel = loader.preload_entries({"LD_PRELOAD": "rel/libcudart.so.12"}, str(tmp_path))
    ggml = cudafiles.identify(str(stack.ggml_cuda))[2]

    def via(path, pre, env, cwd=None):
        r = _role(path)[0]
        return loader.found_by(r["path"], r["soname"], [ggml], env, cwd, pre) or loader.BY_PATH

    assert via(FAKERT, rel, {}) == "LD_PRELOAD"  # a relative entry, from the process's cwd
    assert via(FAKERT_OWN, preloads, {}) == "LD_PRELOAD"  # a bare name: ld.so searched for it
    assert via(FAKERT_V1, preloads, {}) == str(listing)
    assert via(stack.cudart, [], {}) == f"DT_RPATH of {stack.ggml_cuda.name}"
    # libggml-cuda's DT_RPATH ($ORIGIN) comes before LD_LIBRARY_PATH
    assert via(stack.cudart, [], {"LD_LIBRARY_PATH": str(stack.lib)}) == f"DT_RPATH of {stack.ggml_cuda.name}"
    assert via(SEED, [], {"LD_LIBRARY_PATH": f"/nonexistent::{SEED.parent}"}) == "LD_LIBRARY_PATH"
    # an empty entry is the working directory; ';' separates too (ld.so's own reading)
    assert via(SEED, [], {"LD_LIBRARY_PATH": "/nonexistent;"}, str(SEED.parent)) == "LD_LIBRARY_PATH"
    assert via(SEED, [], {"LD_LIBRARY_PATH": "seed"}, str(VARIANTS)) == "LD_LIBRARY_PATH"
    assert via(SEED, [], {}) == loader.BY_PATH  # no step of the search finds it: it was opened by path
    assert via(stack.ggml_cuda, [], {}) == loader.BY_PATH
    # DT_RUNPATH comes after LD_LIBRARY_PATH
    rt = tmp_path / "rt"
    rt.mkdir()
    shutil.copy(FAKERT, rt / "libcudart.so.12")
    (tmp_path / "c.c").write_text("int consumer(void) { return 0; }\n")
    for tags in ("--enable-new-dtags", "--disable-new-dtags"):
        lib = tmp_path / tags / "libconsumer.so"
        lib.parent.mkdir()
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "c.c"), f"-Wl,{tags}",
                        "-Wl,-rpath,$ORIGIN/../rt", "-Wl,--no-as-needed", str(rt / "libcudart.so.12")], check=True)
        consumer = read_elf_cached(str(lib))
        assert "libcudart.so.12" in consumer.needed
        role = _role(rt / "libcudart.so.12")[0]
        first = loader.found_by(role["path"], role["soname"], [consumer], {"LD_LIBRARY_PATH": str(rt)}, None, [])
        alone = loader.found_by(role["path"], role["soname"], [consumer], {}, None, [])
        if tags == "--enable-new-dtags":
            assert (first, alone) == ("LD_LIBRARY_PATH", "DT_RUNPATH of libconsumer.so")
        else:
            assert (first, alone) == ("DT_RPATH of libconsumer.so", "DT_RPATH of libconsumer.so")


def test_two_runtimes_say_where_ggmls_imports_bind(stack, built):
    roles, infos = _process((stack.cudart, f"DT_RPATH of {stack.ggml_cuda.name}"), (stack.ggml_cuda, "dlopen"),
                            (FAKERT_OWN, "LD_PRELOAD"))
    warns, notes = state.runtime_findings(roles, infos, {})
    (w,) = warns
    assert w.startswith(f"two runtimes in one process: {FAKERT_OWN} (runtime shim under its own soname, LD_PRELOAD) "
                        f"and NVIDIA's {stack.cudart}")
    assert "imports @libcudart.so.12 bind to libfakert.so for the 57 of 57 it defines" in w
    assert "libcudart.so.12 is loaded (DT_NEEDED libcudart.so.12) but none of them binds to it" in w
    assert notes == []
    # a preload lacking cudaGetDeviceProperties_v2: that one import binds to NVIDIA's (LD_DEBUG=bindings agrees)
    roles, infos = _process((stack.cudart, "x"), (stack.ggml_cuda, "dlopen"), (built["own_v1"], "/etc/ld.so.preload"))
    (w,) = state.runtime_findings(roles, infos, {})[0]
    assert "bind to libfakertv1.so for the 56 of 57 it defines" in w
    assert w.endswith("to libcudart.so.12 for the other 1 (cudaGetDeviceProperties_v2)")
    roles, infos = _process((stack.cudart, "x"), (stack.ggml_cuda, "dlopen"), (FAKERT_OWN, "search path"))
    (w,) = state.runtime_findings(roles, infos, {})[0]
    assert "this one was not preloaded, so which it is cannot be told from here" in w
    roles, infos = _process((stack.cudart, "x"), (FAKERT_OWN, "LD_PRELOAD"))
    assert state.runtime_findings(roles, infos, {})[0][0].endswith("; libggml-cuda is not loaded yet")
    # the own-soname preload alone, before libggml-cuda is loaded: what it will do
    roles, infos = _process((FAKERT_OWN, "LD_PRELOAD"))
    warns, notes = state.runtime_findings(roles, infos, {})
    assert warns == [] and "preloaded under its own soname 'libfakert.so'" in notes[0]


def test_a_drop_in_in_ld_library_path_that_the_loader_bypassed(stack, built, tmp_path):
    roles, infos = _process((stack.cudart, f"DT_RPATH of {stack.ggml_cuda.name}"), (stack.ggml_cuda, "dlopen"))
    env = {"LD_LIBRARY_PATH": f"{FAKERT.parent}:{SEED.parent}"}
    (w,) = state.runtime_findings(roles, infos, env)[0]
    assert w == (f"{FAKERT} (LD_LIBRARY_PATH) is bypassed: {stack.ggml_cuda.name}'s DT_RPATH, searched before "
                 f"LD_LIBRARY_PATH, found {stack.cudart} first; LD_PRELOAD it instead (under the same soname "
                 "libcudart.so.12 it replaces the bundled one)")
    # NVIDIA's own directory, or a copy of NVIDIA's runtime, in LD_LIBRARY_PATH: nothing bypassed
    (tmp_path / "nv").mkdir()
    shutil.copy(stack.cudart, tmp_path / "nv" / "libcudart.so.12")
    (tmp_path / "dir" / "libcudart.so.12").mkdir(parents=True)  # not a file
    os.mkfifo(tmp_path / "fifo-libcudart.so.12")
    (tmp_path / "fifo").mkdir()
    os.rename(tmp_path / "fifo-libcudart.so.12", tmp_path / "fifo" / "libcudart.so.12")  # never opened
    env = {"LD_LIBRARY_PATH": f"{stack.lib}:{tmp_path / 'nv'}:{tmp_path / 'dir'}:{tmp_path / 'fifo'}::relative"}
    assert state.runtime_findings(roles, infos, env) == ([], [])
    # cudart 13: the soname comes from the files, never a hard-coded 12
    roles, infos = _process((built["rt13_b"], f"DT_RPATH of {stack.ggml_cuda.name}"))
    (w,) = state.runtime_findings(roles, infos, {"LD_LIBRARY_PATH": os.path.dirname(built["rt13_a"])})[0]
    assert w.startswith(f"{built['rt13_a']} (LD_LIBRARY_PATH) is bypassed: {stack.ggml_cuda.name}'s DT_RPATH")
    assert "under the same soname libcudart.so.13" in w
    # a replacement of the user's own preloaded and in use: another copy on the path is no news
    roles, infos = _process((built["rt13_a"], "LD_PRELOAD"))
    assert state.runtime_findings(roles, infos, {"LD_LIBRARY_PATH": os.path.dirname(built["rt13_b"])})[0] == []


def test_a_preloaded_replacement_replaces_the_bundled_runtime(stack, built):
    for via in ("LD_PRELOAD", "/etc/ld.so.preload"):
        roles, infos = _process((stack.ggml_cuda, "dlopen"), (FAKERT, via))
        warns, notes = state.runtime_findings(roles, infos, {})
        assert warns == []
        assert notes == [f"fakert/libcudart.so.12 is preloaded under NVIDIA's soname libcudart.so.12: it satisfies libggml-cuda's "
                         f"DT_NEEDED libcudart.so.12, so the bundled copy ({stack.cudart}) is never loaded"]
    roles, infos = _process((stack.ggml_cuda, "dlopen"), (FAKERT, "search path"))
    assert state.runtime_findings(roles, infos, {}) == ([], [])
    roles, infos = _process((built["rt13_a"], "LD_PRELOAD"))
    (note,) = state.runtime_findings(roles, infos, {})[1]
    assert "under NVIDIA's soname libcudart.so.13" in note and "DT_NEEDED libcudart.so.13" in note


def _result(roles, infos):
    warns, notes = state.runtime_findings(roles, infos, {})
    return {"pid": 1, "inferior": 1, "roles": roles, "warnings": warns, "notes": notes,
            "runtime_imports": [state.import_entry(c) for c in state.import_checks(roles, infos)],
            "shim_state": [], "versions": {}, "environment": {}, "gdb_settings": {}}


def test_exports_against_ggmls_imports(stack):
    roles, infos = _process((FAKERT_V1, "LD_PRELOAD"))
    assert state.import_checks(roles, infos) == []  # no libggml-cuda mapped: nothing to check against
    roles, infos = _process((stack.ggml_cuda, "dlopen"), (FAKERT_V1, "LD_PRELOAD"), (stack.cudart, "x"))
    (entry,) = _result(roles, infos)["runtime_imports"]  # NVIDIA's runtime is never checked
    assert entry["runtime"] == os.path.realpath(FAKERT_V1) and entry["imported"] == 57 and entry["version"] == "libcudart.so.12"
    (m,) = entry["missing"]
    assert (m["symbol"], m["stage"]) == ("cudaGetDeviceProperties_v2", "init")
    assert "it exports cudaGetDeviceProperties" in m["note"]
    assert entry["summary"].startswith("fakert-v1/libcudart.so.12 lacks 1 of the 57 symbols")
    assert "version node libcudart.so.12" in entry["fix"]
    text = "\n".join(state.render(_result(roles, infos)))
    assert "missing (init, needed in ggml_cuda_init, on the device discovery path): " \
           "cudaGetDeviceProperties_v2@libcudart.so.12" in text
    assert "  cudaGetDeviceProperties_v2: it exports cudaGetDeviceProperties, but CUDA 12's headers" in text
    assert "  fix: " + entry["fix"] in text  # runtime.missing_fix says what to export
    header = next(line for line in text.splitlines() if line.startswith("role"))
    assert header.split() == ["role", "what", "it", "is", "soname", "loaded", "via", "DWARF", "file"]

    roles, infos = _process((stack.ggml_cuda, "dlopen"), (FAKERT_NOFAT, "LD_PRELOAD"))
    (entry,) = _result(roles, infos)["runtime_imports"]
    assert {m["symbol"] for m in entry["missing"] if m["stage"] == "registration"} == {"__cudaRegisterFatBinary",
                                                                                      "__cudaRegisterFatBinaryEnd"}
    text = "\n".join(state.render(_result(roles, infos)))
    assert "missing (registration, needed at dlopen, before any CUDA call" in text

    roles, infos = _process((stack.ggml_cuda, "dlopen"), (FAKERT, "LD_PRELOAD"))
    (entry,) = _result(roles, infos)["runtime_imports"]
    assert entry["missing"] == [] and "fix" not in entry
    assert entry["summary"] == f"fakert/libcudart.so.12 exports all 57 symbols {stack.ggml_cuda.name} imports @libcudart.so.12"


def _bindings(preload, stack, probe):
    """Where ld.so bound libggml-cuda's cuda* imports, from LD_DEBUG=bindings of a real run."""
    import re
    import subprocess

    from conftest import env_with

    env = env_with(LD_PRELOAD=preload, LD_LIBRARY_PATH=SEED.parent, GGML_CUDA_LIB=stack.ggml_cuda,
                   LD_DEBUG="bindings")
    proc = subprocess.run([str(probe)], env=env, capture_output=True, text=True, timeout=60)
    out = {}
    for m in re.finditer(r"binding file \S*libggml-cuda\S* \[0\] to (\S+) \[0\]: normal symbol `(\w+)'", proc.stderr):
        out[m.group(2)] = os.path.basename(m.group(1))
    return out


def test_where_the_real_loader_binds_ggmls_imports_is_what_the_warning_says(stack, probe, built):
    """The two-runtimes sentences, checked against ld.so itself (LD_DEBUG=bindings)."""
    bound = _bindings(FAKERT_OWN, stack, probe)
    assert {lib for name, lib in bound.items() if name.startswith(("cuda", "__cuda"))} == {"libfakert.so"}, bound
    bound = _bindings(built["own_v1"], stack, probe)
    runtime_imports = {n: lib for n, lib in bound.items() if n.startswith(("cuda", "__cuda"))}
    assert runtime_imports.pop("cudaGetDeviceProperties_v2") == "libcudart.so.12"
    assert set(runtime_imports.values()) == {"libfakertv1.so"} and len(runtime_imports) == 56, runtime_imports
