"""Hostile input to `gdb-cudashim audit` and `cuda-audit`: one clear answer each (issue #12).

A file that cannot be audited is exit 2 and one line naming it and why, never "nothing missing"
and never a traceback; a --shim that exports no CUDA entry point is exit 2 as well; a shim
without DWARF is only a warning.
"""
import os
import shutil
import signal
import subprocess

import pytest

from conftest import CLI, ROOT, SHIM_BUILD, env_with, run_cli, run_gdb
from gdb_cudashim.core.elf import ElfProblem, read_elf

GOOD = SHIM_BUILD / "libcuda.so.1"

# kind -> words the one line must carry
BAD = {
    "random": "not an ELF file",
    "empty": "empty file",
    "truncated": "truncated or damaged ELF",
    "directory": "is a directory",
    "32-bit": "32-bit EM_386 ELF",
    "fifo": "is a FIFO",
    "symlink-loop": "symbolic link loop",
    "dangling-symlink": "dangling symbolic link",
    "nonexistent": "no such file",
}


def _elf32(path):
    """A real 32-bit shared object when the compiler can make one, else a 64-bit one made to look 32-bit."""
    src = path.with_suffix(".c")
    src.write_text("int cuInit(unsigned flags) { return 0; }\n")
    obj = path.with_suffix(".o")
    try:
        subprocess.run(["cc", "-m32", "-fPIC", "-c", "-o", str(obj), str(src)], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_i386", "-shared", "-soname", "libcuda.so.1", "-o", str(path), str(obj)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        data = bytearray(GOOD.read_bytes())
        data[4] = 1  # EI_CLASS: ELFCLASS32
        data[18:20] = (3).to_bytes(2, "little")  # e_machine: EM_386
        path.write_bytes(bytes(data))
    return path


def make_bad(kind, tmp_path):
    path = tmp_path / f"{kind}.so"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(GOOD.read_bytes()[:100])
    elif kind == "directory":
        path.mkdir()
    elif kind == "32-bit":
        _elf32(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-loop":
        os.symlink(tmp_path / "other.so", path)
        os.symlink(path, tmp_path / "other.so")
    elif kind == "dangling-symlink":
        os.symlink(tmp_path / "gone.so", path)
    return path


def audit_args(role, path, stack):
    if role == "shim":
        return ["--shim", str(path), "--consumer", str(stack.cudart)]
    return ["--shim", str(GOOD), "--consumer", str(path)]


def assert_one_line(proc, path, words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "nothing missing" not in proc.stdout, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and words in lines[0], lines[0]


@pytest.mark.parametrize("role", ["shim", "consumer"])
@pytest.mark.parametrize("kind", list(BAD))
def test_a_file_that_cannot_be_audited_is_one_line_and_exit_2(stack, tmp_path, kind, role):
    path = make_bad(kind, tmp_path)
    proc = run_cli(["audit", *audit_args(role, path, stack)], env=env_with(LD_LIBRARY_PATH=SHIM_BUILD), timeout=30)
    assert_one_line(proc, path, BAD[kind])
    assert proc.stdout == ""  # nothing else was audited: no tables


@pytest.mark.parametrize("kind", ["fifo", "directory", "nonexistent"])
def test_json_says_so_too(stack, tmp_path, kind):
    import json

    path = make_bad(kind, tmp_path)
    proc = run_cli(["audit", "--json", *audit_args("consumer", path, stack)], env=env_with(LD_LIBRARY_PATH=SHIM_BUILD),
                   timeout=30)
    assert_one_line(proc, path, BAD[kind])
    result = json.loads(proc.stdout)
    assert result["errors"] == [proc.stderr.splitlines()[0].split("audit: ", 1)[1]]


@pytest.mark.parametrize("role", ["shim", "consumer"])
def test_a_file_nobody_may_read(stack, tmp_path, role):
    """chmod 000. We run as root, which reads it anyway (so the audit goes on); without
    CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, as any other user, it is one line and exit 2."""
    path = tmp_path / "libcuda.so.1"
    shutil.copy(GOOD, path)
    path.chmod(0)
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD)
    args = ["audit", *audit_args(role, path, stack)]
    if os.geteuid() == 0:
        assert run_cli(args, env=env).returncode == 0  # root can read it: it is audited
        if not shutil.which("setpriv"):
            pytest.skip("setpriv is needed to drop root's read override")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    else:
        prefix = []
    proc = subprocess.run(prefix + CLI + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert_one_line(proc, path, "not readable (permission denied)")


@pytest.mark.parametrize("which", ["ggml-cuda", "libc"])
def test_a_shim_that_is_not_a_cuda_shim(stack, which):
    path = stack.ggml_cuda if which == "ggml-cuda" else "/lib/x86_64-linux-gnu/libc.so.6"
    proc = run_cli(["audit", "--shim", str(path), "--consumer", str(stack.cudart)],
                   env=env_with(LD_LIBRARY_PATH=SHIM_BUILD))
    assert_one_line(proc, os.path.basename(path), "not a CUDA shim: exports none of the driver (cu*)")


def test_a_bad_file_beside_good_ones_still_gets_exit_2(stack, tmp_path):
    """The rest is audited and printed, but the answer is incomplete: not 'nothing missing', not 0."""
    path = make_bad("random", tmp_path)
    proc = run_cli(["audit", "--shim", str(GOOD), "--shim", str(path), "--consumer", str(stack.cudart)],
                   env=env_with(LD_LIBRARY_PATH=SHIM_BUILD))
    assert_one_line(proc, path, "not an ELF file")
    assert "Needs: 4 checked, 0 missing" in proc.stdout
    assert "incomplete: 1 of the files given could not be audited" in proc.stdout


def test_a_stripped_shim_is_a_warning_only(stack, tmp_path):
    lib = tmp_path / "libcuda.so.1"
    subprocess.run(["strip", "-o", str(lib), str(GOOD)], check=True)
    proc = run_cli(["audit", "--shim", str(lib)], env=env_with(LD_LIBRARY_PATH=tmp_path))
    assert proc.returncode == 0, proc.stdout
    assert "Traceback" not in proc.stderr
    assert "warning(s)" in proc.stdout and "[no-debug-info]" in proc.stdout
    assert proc.stdout.rstrip().endswith("nothing missing")


# ---------------------------------------------------------------- in gdb --
@pytest.mark.parametrize("role", ["shim", "consumer"])
@pytest.mark.parametrize("kind", list(BAD))
def test_cuda_audit_in_gdb_is_one_line_and_gdb_goes_on(stack, tmp_path, kind, role):
    path = make_bad(kind, tmp_path)
    proc = run_gdb(["cuda-audit " + " ".join(audit_args(role, path, stack)), "echo still-here\\n"],
                   env=env_with(LD_LIBRARY_PATH=SHIM_BUILD), timeout=30)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout.strip() == "still-here", proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith("cuda-audit: ") and str(path) in line and BAD[kind] in line, line


def test_cuda_audit_in_gdb_not_a_shim(stack):
    proc = run_gdb([f"cuda-audit --shim {stack.ggml_cuda} --consumer {stack.cudart}", "echo still-here\\n"],
                   env=env_with(LD_LIBRARY_PATH=SHIM_BUILD))
    assert proc.stdout.strip() == "still-here", proc.stdout
    (line,) = proc.stderr.splitlines()
    assert "not a CUDA shim" in line and os.path.basename(stack.ggml_cuda) in line


# ------------------------------------------------------------ the reader --
@pytest.mark.parametrize("kind", list(BAD))
def test_read_elf_raises_one_line(tmp_path, kind):
    path = make_bad(kind, tmp_path)

    def hung(signum, frame):
        raise AssertionError(f"read_elf({path}) hangs")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)  # a FIFO opened for reading would block here forever
    try:
        with pytest.raises(ElfProblem) as info:
            read_elf(str(path))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and BAD[kind] in message
