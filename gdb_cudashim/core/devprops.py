"""What a shim says a device is: CUDA 12's cudaDeviceProp and NVML's nvmlMemory_t decoded from
the bytes the gdb layer read at the return, and the GPU architectures a libggml-cuda was built for.

The cudaDeviceProp layout is generated from NVIDIA's driver_types.h (devprops_layout.py).
Pure: never imports gdb.
"""
from __future__ import annotations

import os
import struct
from functools import lru_cache

from .devprops_layout import FIELDS, SIZE

_FIELD = {f[0]: f for f in FIELDS}

# The fields the report and the rules read, in the order shown.
SHOWN = ("name", "uuid", "totalGlobalMem", "major", "minor", "multiProcessorCount", "pciBusID", "pciDeviceID",
         "pciDomainID", "integrated", "warpSize", "sharedMemPerBlock")

# cudaDeviceAttr / CUdevice_attribute: the same numbers in both APIs.
ATTRIBUTES = {16: "MultiProcessorCount", 75: "ComputeCapabilityMajor", 76: "ComputeCapabilityMinor"}

NVML_MEMORY = (("total", 0), ("free", 8), ("used", 16))  # nvmlMemory_t (nvml.h): three unsigned long long

STRUCTS = {"cudaDeviceProp": SIZE, "nvmlMemory": 24, "CUuuid": 16}


def slot(struct_name: str, field: str) -> tuple[int, int, str] | None:
    """(offset, size, C type) of FIELD in the struct STRUCT_NAME (STRUCTS), or None: what
    cuda-patch --out INDEX.FIELD writes."""
    if struct_name == "cudaDeviceProp" and field in _FIELD:
        return _FIELD[field][1:]
    if struct_name == "nvmlMemory":
        return next(((o, 8, "unsigned long long") for k, o in NVML_MEMORY if k == field), None)
    if struct_name == "CUuuid" and field == "bytes":
        return 0, 16, "unsigned char[16]"
    return None


def uuid_text(data: bytes) -> str:
    """16 bytes as nvidia-smi and CUDA_VISIBLE_DEVICES write a GPU's UUID: GPU-8-4-4-4-12 lowercase hex."""
    h = data.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _value(data: bytes, name: str):
    _, offset, size, ctype = _FIELD[name]
    raw = data[offset:offset + size]
    if ctype.startswith("char["):
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    if ctype == "cudaUUID_t":
        h = raw.hex()
        return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if ctype == "size_t":
        return int.from_bytes(raw, "little")
    return int.from_bytes(raw, "little", signed=ctype == "int")


def nonzero_runs(data: bytes) -> list[list]:
    """[offset, hex] for each run of non-zero bytes (gaps under 4 zero bytes kept inside a run)."""
    runs, start, last = [], None, None
    for i, b in enumerate(data):
        if not b:
            continue
        if start is not None and i - last > 4:
            runs.append([start, data[start:last + 1].hex()])
            start = None
        if start is None:
            start = i
        last = i
    if start is not None:
        runs.append([start, data[start:last + 1].hex()])
    return runs


def decode(struct_name: str, data: bytes) -> dict:
    """The named struct as a JSON-ready dict; a cudaDeviceProp keeps its non-zero bytes under
    'nonzero' so that the rules can say where a shim wrote."""
    if struct_name == "CUuuid":
        return {"uuid": uuid_text(data), "zero": not any(data)}
    if struct_name == "nvmlMemory":
        return {k: int.from_bytes(data[o:o + 8], "little") for k, o in NVML_MEMORY}
    out = {name: _value(data, name) for name in SHOWN}
    out["nonzero"] = nonzero_runs(data)
    return out


def raw(prop: dict) -> bytes:
    """The bytes a decoded cudaDeviceProp came from (zeros where nothing was written)."""
    data = bytearray(SIZE)
    for offset, hexed in prop.get("nonzero") or ():
        chunk = bytes.fromhex(hexed)
        data[offset:offset + len(chunk)] = chunk
    return bytes(data)


def field_at(offset: int) -> str:
    for name, off, size, _ in FIELDS:
        if off <= offset < off + size:
            return name
    return "padding"


def written_fields(prop: dict) -> list[str]:
    """The CUDA 12 fields holding a non-zero byte, in layout order."""
    data = raw(prop)
    return [name for name, off, size, _ in FIELDS if any(data[off:off + size])]


def is_blank(prop: dict) -> bool:
    return not prop.get("nonzero")


def misplaced(prop: dict) -> list[str]:
    """Where the values of a struct filled in another layout went: a compute capability pair and a
    memory size found at offsets where CUDA 12 keeps something else."""
    data = raw(prop)
    out = []
    name_end = _FIELD["name"][2]
    found_cc = found_mem = None
    for off in range(name_end, SIZE - 7, 8):
        v = struct.unpack_from("<Q", data, off)[0]
        if off != _FIELD["totalGlobalMem"][1] and v >= 256 << 20 and v % (1 << 20) == 0 and v < 1 << 44:
            found_mem = (off, v)
            break
    for off in range(name_end, SIZE - 7, 4):
        if off == _FIELD["major"][1] or (found_mem and found_mem[0] - 4 <= off < found_mem[0] + 8):
            continue
        a, b = struct.unpack_from("<ii", data, off)
        if 1 <= a <= 12 and 0 <= b <= 9:
            found_cc = (off, a, b)
            break
    if found_mem:
        off, v = found_mem
        out.append(f"{v} bytes ({v / (1 << 30):.1f} GiB) at offset {off}, which CUDA 12 reads as {field_at(off)}; "
                   f"totalGlobalMem is at {_FIELD['totalGlobalMem'][1]}")
    if found_cc:
        off, a, b = found_cc
        out.append(f"a compute capability {a}.{b} at offsets {off}/{off + 4}, which CUDA 12 reads as {field_at(off)}; "
                   f"major/minor are at {_FIELD['major'][1]}/{_FIELD['minor'][1]}")
    shift = None
    if found_mem and found_mem[0] < _FIELD["totalGlobalMem"][1]:
        shift = (found_mem[0], _FIELD["totalGlobalMem"][1])
    elif found_cc and found_cc[0] < _FIELD["major"][1]:
        shift = (found_cc[0], _FIELD["major"][1])
    if shift:
        lo, hi = shift
        between = [n for n, o, _, _ in FIELDS if lo <= o < hi]
        between = between[:5] + ["..."] if len(between) > 5 else between
        out.append(f"the values sit {hi - lo} bytes early: the shim's struct lacks what CUDA 12 has in between "
                   f"({', '.join(between)})")
    return out


# -- the GPU code in a libggml-cuda ---------------------------------------------------------

FATBIN_MAGIC = 0xBA55ED50
_PTX, _ELF = 1, 2
# An entry's flags (the 64-bit field at offset 40 of its header): its payload is compressed
# (nvcc -Xfatbin -compress-all, the default of recent toolkits). A driver older than the one of
# CUDA 12.4 (r550) cannot load compressed code: "device kernel image is invalid" / "no kernel image".
FATBIN_FLAG_COMPRESS = 0x2000
COMPRESSED_NEEDS_DRIVER = 12040


def fatbin_targets(path: str) -> dict | None:
    """{'sm': [75, ...], 'ptx': [75, ...], 'compressed_sm': [...], 'compressed_ptx': [...]}: the
    cubin (SASS) and PTX architectures in the .nv_fatbin section of PATH, and those stored
    compressed, read from the fat binary headers; None when it has none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _fatbin_targets(path, st.st_mtime, st.st_size)


@lru_cache(maxsize=8)
def _fatbin_targets(path: str, mtime: float, size: int) -> dict | None:
    import mmap

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    sm, ptx, compressed = set(), set(), set()
    try:
        with open(path, "rb") as f:
            section = ELFFile(f).get_section_by_name(".nv_fatbin")
            if section is None or section["sh_type"] == "SHT_NOBITS":
                return None
            start, end = section["sh_offset"], section["sh_offset"] + section["sh_size"]
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                magic = struct.pack("<I", FATBIN_MAGIC)
                pos = m.find(magic, start, end)
                while pos >= 0:
                    _, _, header, total = struct.unpack_from("<IHHQ", m, pos)
                    p, q = pos + header, min(pos + header + total, end)
                    while p + 32 <= q:
                        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", m, p)
                        arch = struct.unpack_from("<I", m, p + 28)[0]
                        flags = struct.unpack_from("<Q", m, p + 40)[0] if p + 48 <= q else 0
                        if kind == _PTX:
                            ptx.add(arch)
                        elif kind == _ELF:
                            sm.add(arch)
                        if flags & FATBIN_FLAG_COMPRESS and kind in (_PTX, _ELF):
                            compressed.add(("ptx" if kind == _PTX else "sm", arch))
                        if entry_header == 0:
                            break
                        p += entry_header + payload
                    pos = m.find(magic, max(q, pos + 4), end)
    except (OSError, ValueError, struct.error, ELFError):
        return None
    if not sm and not ptx:
        return None
    return {"sm": sorted(sm), "ptx": sorted(ptx), "compressed_sm": sorted(a for k, a in compressed if k == "sm"),
            "compressed_ptx": sorted(a for k, a in compressed if k == "ptx")}


def targets_words(targets: dict) -> str:
    """TARGETS (fatbin_targets) as a person reads them: "sm_75, sm_86 and PTX compute_75"."""
    return " and ".join(filter(None, [
        f"sm_{', sm_'.join(map(str, targets['sm']))}" if targets["sm"] else "",
        f"PTX compute_{', compute_'.join(map(str, targets['ptx']))}" if targets["ptx"] else ""])) or "nothing"


def runs_on(targets: dict, major: int, minor: int) -> bool:
    """Can a device of compute capability major.minor run this code? A cubin runs on its own
    major version at an equal or higher minor; PTX is compiled for any later device."""
    cc = major * 10 + minor
    return (any(t // 10 == major and t <= cc for t in targets["sm"])
            or any(t <= cc for t in targets["ptx"]))


def code_for(targets: dict, major: int, minor: int) -> tuple[str, int] | None:
    """What a device of compute capability major.minor loads from TARGETS: ('sm', arch), the
    best cubin of its own major, else ('ptx', arch), the newest PTX at or below it, which the
    driver compiles; None when nothing runs there."""
    cc = major * 10 + minor
    cubins = [t for t in targets["sm"] if t // 10 == major and t <= cc]
    if cubins:
        return "sm", max(cubins)
    ptx = [t for t in targets["ptx"] if t <= cc]
    return ("ptx", max(ptx)) if ptx else None
