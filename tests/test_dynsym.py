"""core.dynsym against the real loader: for every name a library defines or imports (and a few
it does not), dlsym() through build/dlsym_oracle and the model must give the same answer."""
import os
from pathlib import Path
import subprocess

import pytest

from conftest import BUILD, ROOT, SHIM_BUILD, build_lib
from gdb_cudashim.core import dynsym

LIB = ROOT / "tests" / "programs" / "lib"
EXTRA_NAMES = ["cuNoSuchThing", "cuInit", "cuGetProcAddress_v2", "cuGetExportTable", "memcpy", "pthread_create",
               "gets", "sys_errlist", "both", "only_old", "only_new", "plain_global", "both_v1", "V1"]


def oracle(path: Path, names):
    exe = BUILD / "dlsym_oracle"
    assert exe.exists(), "build/dlsym_oracle missing: run 'make programs'"
    out = subprocess.run([str(exe), str(path)], input="\n".join(names) + "\n", capture_output=True, text=True,
                         check=True).stdout
    answers, loaded = {}, []
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "maps":
            loaded.append(value)
        else:
            answers[value] = key == "1"
    return answers, list(dict.fromkeys(loaded))


def names_of(path):
    d = dynsym.read(str(path))
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(path)], capture_output=True, text=True).stdout
    return sorted(set(d.definitions) | {w.split("@")[0] for w in undefined.split() if len(w) > 1} | set(EXTRA_NAMES))


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    out = tmp_path_factory.mktemp("lib") / "libversioned.so"
    return build_lib(LIB / "versioned.c", out, f"-Wl,--version-script={LIB / 'versioned.map'}")


def _libraries(stack, versioned):
    libs = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6", str(stack.cudart),
            str(SHIM_BUILD / "libcuda.so.1"), str(SHIM_BUILD / "variants" / "seed" / "libcuda.so.1"),
            str(SHIM_BUILD / "libnvidia-ml.so.1"), str(versioned)]
    return [p for p in libs if os.path.exists(p)]


def test_model_matches_the_loader(stack, versioned):
    checked = 0
    for path in _libraries(stack, versioned):
        names = names_of(path)
        real, loaded = oracle(path, names)
        handle = os.path.realpath(path) if os.path.realpath(path) in loaded else path
        scope = dynsym.search_list(handle, loaded)
        wrong = [(n, real[n]) for n in names if (dynsym.lookup(scope, n) is not None) != real[n]]
        assert not wrong, f"{path}: the model disagrees with dlsym() on {wrong[:10]}"
        checked += len(names)
    assert checked > 9000  # every name checked, not a vacuous pass


def test_symbol_versions(versioned):
    d = dynsym.read(str(versioned))
    # the default version and unversioned definitions are found; a hidden-only version is not
    assert d.dlsym_finds("both") and d.dlsym_finds("only_new") and d.dlsym_finds("plain_global")
    assert not d.dlsym_finds("only_old") and not d.dlsym_finds("both_v1")


def test_search_list_is_the_library_then_its_dependencies(stack):
    real, loaded = oracle(stack.cudart, ["cudaGetDeviceCount"])
    scope = [os.path.basename(o.path) for o in dynsym.search_list(str(stack.cudart), loaded)]
    assert scope[0] == "libcudart.so.12" and "libc.so.6" in scope and len(scope) == len(set(scope))
    assert real == {"cudaGetDeviceCount": True}


def test_unreadable_files_are_one_line(tmp_path):
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 40)
    for path, words in [(bad, "damaged"), (tmp_path / "none.so", "No such file"), (ROOT / "README.md", "not a 64-bit")]:
        with pytest.raises(dynsym.DynsymError) as exc:
            dynsym.read(str(path))
        assert words in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(dynsym.DynsymError, match="not among the loaded"):
        dynsym.search_list(str(SHIM_BUILD / "libcuda.so.1"), [])


def test_hash_lookups_agree_with_the_full_table(stack, versioned):
    """dlsym_finds goes through the GNU hash table; `definitions` walks the whole .dynsym.
    Both must answer alike for every name either knows of."""
    for path in _libraries(stack, versioned):
        fast = dynsym.read(path)
        full = dynsym.read(path)
        names = names_of(path)
        table = full.definitions  # from here on `full` answers from the walked table
        assert fast._hash is not None, f"{path} has no GNU hash table: the fast path is not tested"
        assert [fast.dlsym_finds(n) for n in names] == [full.dlsym_finds(n) for n in names], path
        assert table and fast._all is None
