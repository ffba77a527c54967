"""core/runtime.py without gdb: what a runtime file is and what libggml-cuda needs from it, on
real files (NVIDIA's libcudart.so.12, the real libggml-cuda, the fake runtime's variants) and
on small runtimes built here the ways a shim author would."""
import subprocess

from conftest import SHIM_BUILD

from gdb_cudashim.core import cudafiles, runtime, symaddr
from gdb_cudashim.core.elf import read_elf

VARIANTS = SHIM_BUILD / "variants"


def test_nvidias_runtime_is_told_from_a_fake(stack):
    nvidia = stack.ggml_cuda.parent / "libcudart.so.12"
    assert cudafiles.is_nvidia_runtime(str(nvidia))
    assert cudafiles.runtime_kind(str(nvidia), "libcudart.so.12") == cudafiles.NVIDIA_RUNTIME
    fake = VARIANTS / "fakert" / "libcudart.so.12"
    assert not cudafiles.is_nvidia_runtime(str(fake))
    assert cudafiles.runtime_kind(str(fake), "libcudart.so.12") == cudafiles.REPLACEMENT
    assert cudafiles.runtime_kind(str(VARIANTS / "fakert-own" / "libfakert.so"), "libfakert.so") == cudafiles.OWN_SONAME
    assert cudafiles.is_runtime_soname("libcudart.so.13") and not cudafiles.is_runtime_soname("libcudart.so")


def test_nvidias_runtime_satisfies_every_import(stack):
    check = runtime.check_imports(read_elf(str(stack.ggml_cuda.parent / "libcudart.so.12")), read_elf(str(stack.ggml_cuda)))
    assert check.missing == [] and check.imported == 57 and check.version_node


def test_old_name_only_and_the_stage_each_import_bites(stack):
    ggml = read_elf(str(stack.ggml_cuda))
    check = runtime.check_imports(read_elf(str(VARIANTS / "fakert-v1" / "libcudart.so.12")), ggml)
    (m,) = check.missing
    assert (m.symbol, m.version, m.stage) == ("cudaGetDeviceProperties_v2", "libcudart.so.12", "init")
    assert m.note.startswith("it exports cudaGetDeviceProperties, but CUDA 12's headers #define")
    nofat = runtime.check_imports(read_elf(str(VARIANTS / "fakert-nofat" / "libcudart.so.12")), ggml)
    assert [m.stage for m in nofat.missing] == ["registration", "registration"]
    assert "registration: __cudaRegisterFatBinary, __cudaRegisterFatBinaryEnd" in nofat.summary()


def _build(tmp_path, name, body, *flags):
    src = tmp_path / f"{name}.c"
    src.write_text(body)
    out = tmp_path / name / "libcudart.so.12"
    out.parent.mkdir()
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcudart.so.12", *flags, "-o", str(out), str(src)], check=True)
    return read_elf(str(out))


def test_unversioned_definitions_count_only_in_a_file_with_symbol_versions(tmp_path, stack):
    """glibc accepts an unversioned definition for name@libcudart.so.12 when the file has a
    .gnu.version section (any versioned import gives it one); with none at all, it asserts."""
    body = "#include <stdlib.h>\nint cudaGetDeviceCount(int *n) { *n = atoi(getenv(\"N\")); return 0; }\n"
    with_versym = _build(tmp_path, "libc", body)
    bare = _build(tmp_path, "bare", "int cudaGetDeviceCount(int *n) { *n = 1; return 0; }\n", "-nostdlib")
    assert with_versym.has_versym and not bare.has_versym
    assert with_versym.exports_symbol("cudaGetDeviceCount", "libcudart.so.12")
    assert not bare.exports_symbol("cudaGetDeviceCount", "libcudart.so.12")
    ggml = read_elf(str(stack.ggml_cuda))
    assert "cudaGetDeviceCount" not in {m.symbol for m in runtime.check_imports(with_versym, ggml).missing}
    assert "cudaGetDeviceCount" in {m.symbol for m in runtime.check_imports(bare, ggml).missing}


def test_globals_read_from_the_symbol_tables_static_ones_included():
    objects = symaddr.read_objects(str(SHIM_BUILD / "libcuda.so.1"))
    assert {"g_in_init_phase", "g_gpu_info", "g_configured", "g_lock"} <= set(objects)  # g_configured is static
    assert all(name.startswith("g_") for name in objects)
    assert objects["g_lock"][1] == 40  # sizeof(pthread_mutex_t)


def _without_section_headers(src, dst, damage=None):
    """A copy of SRC that ld.so still loads: its section headers removed (sstrip's way), or with
    section DAMAGE's offset pointed past the end of the file."""
    import struct

    data = bytearray(src.read_bytes())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    if damage is None:
        struct.pack_into("<Q", data, 0x28, 0)
        struct.pack_into("<HHH", data, 0x3A, 0, 0, 0)
    else:
        for i in range(shnum):
            if struct.unpack_from("<I", data, shoff + i * shentsize + 4)[0] == damage:
                struct.pack_into("<Q", data, shoff + i * shentsize + 24, 0xFFFFFFFFFFFFFF00)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))
    subprocess.run(["/bin/true"], env={"LD_PRELOAD": str(dst)}, check=True)  # the loader takes it
    return dst


def test_a_file_without_readable_section_headers_is_read_as_ld_so_reads_it(tmp_path, stack):
    from gdb_cudashim.core import dynsym

    src = VARIANTS / "fakert" / "libcudart.so.12"
    ggml = read_elf(str(stack.ggml_cuda))
    for name, damage in (("sstrip", None), ("bad-dynsym", 11), ("bad-symtab", 2)):
        f = _without_section_headers(src, tmp_path / name / "libcudart.so.12", damage)
        dyn = dynsym.read(str(f))
        assert dyn.soname == "libcudart.so.12" and dyn.dlsym_finds("cudaGetDeviceCount"), name
        assert symaddr.read_functions(str(f), ["cudaGetDeviceCount"]).offsets == \
            symaddr.read_functions(str(src), ["cudaGetDeviceCount"]).offsets, name
        info = read_elf(str(f))
        assert cudafiles.exports_runtime(info.exports) and runtime.check_imports(info, ggml).missing == [], name


def test_a_dynamic_section_that_says_nothing_is_one_error(tmp_path):
    """No section headers and a PT_DYNAMIC holding only DT_NULL: one DynsymError, never a KeyError."""
    import struct

    from gdb_cudashim.core import dynsym

    f = _without_section_headers(VARIANTS / "fakert" / "libcudart.so.12", tmp_path / "x" / "libcudart.so.12")
    data = bytearray(f.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 2:
            data[offset:offset + filesz] = bytes(filesz)
    f.write_bytes(bytes(data))
    try:
        dynsym.read(str(f))
    except dynsym.DynsymError as exc:
        assert "no section headers" in str(exc)
    else:
        raise AssertionError("read a file with nothing to read")
    assert not cudafiles.is_runtime_file(str(f))
    other = f.with_name("libpreloaded.so")  # a file under its own name is judged by its exports
    other.write_bytes(f.read_bytes())
    assert cudafiles.role(str(other)) is None


def test_a_shim_carrying_cudarts_marks_is_not_nvidias_runtime(tmp_path):
    """nvcc links cudart statically by default: a shim built with it carries the CUDART_INTERFACE
    UUID and "libcuda.so.1" too. NVIDIA's runtime is also the shared one: 300+ exports."""
    body = ("static const unsigned char uuid[16] = {0x6b,0xd5,0xfb,0x6c,0x5b,0xf4,0xe7,0x4a,0x89,0x87,0xd9,0x39,"
            "0x12,0xfd,0x9d,0xf9};\nconst char *driver = \"libcuda.so.1\";\n"
            "const void *keep(void) { return uuid; }\nint cudaGetDeviceCount(int *n) { *n = 1; return 0; }\n")
    info = _build(tmp_path, "nvcc_like", body)
    assert cudafiles._carries_interface(info.path, *(lambda st: (st.st_mtime, st.st_size))(__import__("os").stat(info.path)))
    assert not cudafiles.is_nvidia_runtime(info.path)
    assert cudafiles.runtime_kind(info.path, "libcudart.so.12") == cudafiles.REPLACEMENT


def test_cxx_typeinfo_is_not_a_shared_global(tmp_path):
    from gdb_cudashim.core import dynsym

    src = tmp_path / "a.cc"
    src.write_text("struct Base { virtual ~Base() {} virtual int f() { return 1; } };\n"
                   "int g_counter = 0;\nint use() { Base b; return b.f() + g_counter; }\n")
    out = tmp_path / "libcxx.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    assert dynsym.read(str(out)).exported_data() == {"g_counter"}


def test_a_users_shim_with_the_seeds_globals_is_not_the_bundled_shim(tmp_path):
    """The seeds' own shims export g_in_init_phase and g_gpu_info too: only the marker that
    shim/cudashim.c alone exports makes a file the bundled shim (issue #18 item 4)."""
    from conftest import SHIM_BUILD, build_lib

    src = tmp_path / "users_shim.c"
    src.write_text("int g_in_init_phase; struct { int major, minor; } g_gpu_info;\n"
                   "int cuInit(unsigned flags) { (void)flags; g_in_init_phase = 1; return 0; }\n")
    users = build_lib(src, tmp_path / "libcuda.so.1", "-Wl,-soname,libcuda.so.1")
    assert cudafiles.file_kind(str(users), "driver") == "driver shim"
    assert cudafiles.file_kind(str(SHIM_BUILD / "libcuda.so.1"), "driver") == "bundled cudashim"
    assert cudafiles.file_kind(str(SHIM_BUILD / "variants" / "seed" / "libcuda.so.1"), "driver") == "bundled cudashim"
