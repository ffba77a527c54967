"""core/loader.py held against the real ld.so on the same inputs: for each environment and
working directory below, the library `ld.so --list` maps for a DT_NEEDED is the one the model's
search picks first, and the preloads it maps are the model's. The libraries are built here, one
copy of the same soname in each directory, so that every step of the order picks another file."""
import os
import re
import subprocess

import pytest

from gdb_cudashim.core import loader
from gdb_cudashim.core.elf import read_elf

LD_SO = next((p for p in loader.LD_SO if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(LD_SO is None, reason="no x86-64 ld.so here")


def _cc(*args):
    subprocess.run(["cc", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """a/, b/, c/ each with a libdep.so.1; lib-rpath/ and lib-runpath/ each with a libneed.so that
    needs libdep.so.1 with $ORIGIN/../a in its DT_RPATH or DT_RUNPATH; a program per libneed."""
    t = tmp_path_factory.mktemp("ldmodel")
    (t / "dep.c").write_text("int dep(void) { return 0; }\n")
    for d in ("a", "b", "c", "b/glibc-hwcaps/x86-64-v2"):
        (t / d).mkdir(parents=True)
        _cc("-shared", "-fPIC", "-Wl,-soname,libdep.so.1", "-o", t / d / "libdep.so.1", t / "dep.c")
    (t / "need.c").write_text("int dep(void); int need(void) { return dep(); }\n")
    (t / "main.c").write_text("int need(void); int main(void) { return need(); }\n")
    for kind, tags in (("rpath", "--disable-new-dtags"), ("runpath", "--enable-new-dtags")):
        lib = t / f"lib-{kind}"
        lib.mkdir()
        _cc("-shared", "-fPIC", "-o", lib / "libneed.so", t / "need.c", f"-Wl,{tags}", "-Wl,-rpath,$ORIGIN/../a",
            "-Wl,--no-as-needed", t / "a" / "libdep.so.1")
        _cc("-o", t / f"prog-{kind}", t / "main.c", "-Wl,--no-as-needed", lib / "libneed.so")
    return t


def _ld_so_list(prog, env, cwd):
    """name -> real path of each library ld.so maps for PROG (preloads included). ld.so prints
    "name => path" for a DT_NEEDED, and the path alone where it was found as written: a preload, or a
    name found in the working directory (relative, so taken from CWD here)."""
    out = subprocess.run([LD_SO, "--list", str(prog)], env=env, cwd=cwd, capture_output=True, text=True,
                         check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*(?:(\S+) => )?(\S+) \(0x", line)
        if m and m.group(2) != "linux-vdso.so.1":
            real = os.path.realpath(os.path.join(cwd, m.group(2)))
            found[m.group(1) or os.path.basename(m.group(2))] = real
    return found


CASES = [
    # (variant, LD_LIBRARY_PATH as written, cwd under the tree, what it shows)
    ("rpath", "{t}/lib-rpath:{t}/b", ".", "DT_RPATH comes before LD_LIBRARY_PATH"),
    ("runpath", "{t}/lib-runpath:{t}/c", ".", "LD_LIBRARY_PATH comes before DT_RUNPATH"),
    ("runpath", "{t}/lib-runpath", ".", "DT_RUNPATH ($ORIGIN) when LD_LIBRARY_PATH holds none"),
    ("runpath", "{t}/lib-runpath:", "c", "an empty entry is the working directory"),
    ("runpath", "{t}/lib-runpath;{t}/c", ".", "';' separates like ':'"),
    ("runpath", "{t}/lib-runpath:c", ".", "a relative entry is taken from the working directory"),
    ("runpath", "{t}/lib-runpath:{t}/nonexistent:{t}/b", ".", "a supported glibc-hwcaps subdirectory wins in its directory"),
]


@pytest.mark.parametrize("variant,llp,cwd,why", CASES, ids=[c[3] for c in CASES])
def test_the_search_picks_what_ld_so_maps(tree, variant, llp, cwd, why):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_LIBRARY_PATH": llp.format(t=tree)}
    cwd = str(tree / cwd)
    real = _ld_so_list(tree / f"prog-{variant}", env, cwd)
    needer = read_elf(str(tree / f"lib-{variant}" / "libneed.so"))
    chosen = loader.first(loader.search("libdep.so.1", needer, env, cwd))
    assert chosen is not None and os.path.realpath(chosen["path"]) == real["libdep.so.1"], (why, chosen, real)
    # and found_by names the step that found the file ld.so mapped
    how = loader.found_by(real["libdep.so.1"], "libdep.so.1", [needer], env, cwd, [])
    assert how == (chosen["how"] if chosen["how"] not in (loader.RPATH, loader.RUNPATH)
                   else f"{chosen['how']} of libneed.so"), why


def test_preloads_are_found_where_ld_so_finds_them(tree):
    """A bare name is searched (LD_LIBRARY_PATH here); a relative path is taken from the working directory."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_LIBRARY_PATH": f"{tree}/lib-runpath:{tree}/c"}
    for preload, cwd in (("libdep.so.1", tree), ("b/libdep.so.1", tree), ("./libdep.so.1", tree / "c")):
        env["LD_PRELOAD"] = preload
        real = _ld_so_list(tree / "prog-runpath", env, str(cwd))
        (path, how), = [p for p in loader.preloads(env, str(cwd)) if p[1] == loader.PRELOAD]
        assert how == loader.PRELOAD and os.path.realpath(path) in real.values(), (preload, path, real)
