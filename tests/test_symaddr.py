"""core.symaddr against the real thing: readelf's symbol tables and this process's own loader."""
import ctypes
import ctypes.util
import os
import re
import subprocess

import pytest

from conftest import BUILD, SHIM_BUILD
from gdb_cudashim.core import symaddr

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def _readelf_functions(path, table_flag):
    """name -> {st_value} of defined global/weak FUNC symbols, as readelf prints them."""
    out = subprocess.run(["readelf", "-W", table_flag, path], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*\d+:\s+([0-9a-f]+)\s+\d+\s+FUNC\s+(GLOBAL|WEAK)\s+\S+\s+(\d+)\s+(\S+)", line)
        if m:
            name = m.group(4).split("@")[0]
            found.setdefault(name, set()).add(int(m.group(1), 16))
    return found


@pytest.mark.parametrize("path", [LIBC, str(SHIM_BUILD / "libcuda.so.1"), str(SHIM_BUILD / "libnvidia-ml.so.1")])
def test_dynsym_functions_match_readelf(path, stack):
    expected = _readelf_functions(path, "--dyn-syms")
    names = sorted(expected)
    got = symaddr.read_functions(path, names)
    assert {n: set(v) for n, v in got.offsets.items()} == expected
    assert len(expected) >= 10


def test_symtab_only_with_symtab(stack):
    """The main program's functions may be in .symtab only (a static build of llama-server)."""
    probe = str(BUILD / "probe")
    assert "main" not in symaddr.read_functions(probe, ["main"]).offsets
    assert symaddr.read_functions(probe, ["main"], symtab=True).offsets["main"] == \
        tuple(sorted(_readelf_functions(probe, "--syms")["main"]))


def test_names_it_does_not_define_and_ifuncs_are_absent():
    got = symaddr.read_functions(LIBC, ["cuInit", "dlsym", "strlen", "dlsy", "lsym"])
    # strlen is an IFUNC in glibc: its resolver is not the function
    assert set(got.offsets) == {"dlsym"}


def test_load_bias_gives_the_address_the_loader_gives():
    libc = ctypes.CDLL(LIBC)
    with open("/proc/self/maps") as f:
        maps = f.read()
    st = os.stat(LIBC)
    functions = symaddr.read_functions(LIBC, ["dlsym", "dlopen", "write"])
    bias = symaddr.load_bias(maps, st.st_ino, st.st_dev, functions)
    for name in ("dlsym", "dlopen", "write"):
        real = ctypes.cast(getattr(libc, name), ctypes.c_void_p).value
        assert real in {bias + off for off in functions.offsets[name]}, name
    assert symaddr.load_bias(maps, st.st_ino + 1, st.st_dev, functions) is None


def test_bad_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "x.so"
    bad.write_bytes(b"not an elf at all")
    for path, words in ((str(bad), "not a 64-bit"), (str(tmp_path / "missing.so"), "No such file")):
        with pytest.raises(symaddr.SymaddrError) as exc:
            symaddr.read_functions(path, ["cuInit"])
        assert words in str(exc.value) and "\n" not in str(exc.value)
