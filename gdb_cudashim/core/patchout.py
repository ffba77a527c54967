"""What cuda-patch --out writes through a pointer argument: parsed here into bytes at an offset.

  INDEX=VALUE[:SIZE]     a number or a result name, SIZE bytes (1, 2, 4 or 8; default 4)
  INDEX=str:TEXT         TEXT and its NUL (a version string, a device name)
  INDEX=hex:HEX          raw bytes (a 16-byte UUID; '-' and a leading 'GPU-' are ignored)
  INDEX.FIELD=...        one field of the struct the argument points to (cudaDeviceProp.major,
                         nvmlMemory.total, ...): its offset and size come from the struct's layout,
                         so a number takes the field's size and a char[N] field takes str:

A string written into a buffer whose length is another argument (nvmlSystemGetDriverVersion's
length, cuDeviceGetName's len) is cut to that length at the call, NUL included: the program's
buffer is never overrun, as NVIDIA's own functions never overrun it.
Pure: never imports gdb.
"""
from __future__ import annotations

import re

from .calls import ARG_REGISTERS, SPECS
from .codes import UnknownValue, parse_value
from .devprops import STRUCTS, slot
from .record import record


class OutError(ValueError):
    """An --out the user gave that cannot be written; its text is the one line to print."""


@record
class Out:
    index: int  # the pointer argument (0-based)
    offset: int  # bytes past the pointer
    data: bytes  # what is written there
    shown: str  # as given, for 'cuda-patch list' and the report
    cap_arg: int | None = None  # the argument holding the buffer's length (a str: into a char *)
    field: str | None = None


_LENGTH_NAMES = ("len", "length", "size")
_INT_SIZES = (1, 2, 4, 8)


def fits(value: int, size: int) -> bool:
    """VALUE fits SIZE bytes as a signed or an unsigned number."""
    return -(1 << (8 * size - 1)) <= value < (1 << (8 * size))


def parse(text: str, function: str) -> Out:
    m = re.fullmatch(r"([0-9]+)(?:\.([A-Za-z_][A-Za-z0-9_]*))?=(.*)", text, re.S)
    if not m:
        raise OutError(f"--out takes INDEX=VALUE[:SIZE], INDEX=str:TEXT, INDEX=hex:BYTES or INDEX.FIELD=VALUE, "
                       f"not {text!r}")
    index, field, value = int(m.group(1)), m.group(2), m.group(3)
    spec = SPECS.get(function)
    limit = len(spec.args) if spec else len(ARG_REGISTERS)
    if index >= limit:
        what = f"{function}'s {limit} argument(s)" if spec else f"the {limit} register arguments"
        raise OutError(f"--out index {index} is beyond {what}")
    if field is not None:
        return _field_out(text, function, spec, index, field, value)
    kind = spec.args[index][1] if spec else None
    room, what = _room(kind, spec.args[index][0] if spec else "")
    if value.startswith("str:"):
        if kind is not None and kind != "out_str":
            raise OutError(f"--out {text}: argument {index} of {function} is {what}, not a string buffer")
        # a string buffer's size is its length argument at the call (capped there), else unknown
        return Out(index, 0, _text(text, value[4:]) + b"\0", text, cap_arg=_length_arg(spec, index))
    if value.startswith("hex:"):
        data = _hex(text, value[4:])
    else:
        number, size = _number(text, value)
        data = _encode(number, size)
    if room is not None and len(data) > room:
        raise OutError(f"--out {text}: {len(data)} bytes do not fit in argument {index} of {function} ({what})")
    if kind is not None and not kind.startswith("out_"):
        raise OutError(f"--out {text}: argument {index} of {function} is {what}, passed by value: nothing to write "
                       f"through")
    return Out(index, 0, data, text)


# an out-parameter's size in bytes, by its kind (calls.SPECS)
_ROOM = {"out_i32": (4, "an int"), "out_u32": (4, "an unsigned int"), "out_u64": (8, "a 64-bit integer"),
         "out_ptr": (8, "a pointer")}


def _room(kind: str | None, name: str) -> tuple[int | None, str]:
    """(how many bytes the out-parameter KIND holds, or None: unknown; what it is, in words)."""
    if kind is None:
        return None, "an argument of a function I have no description of"
    if kind in _ROOM:
        return _ROOM[kind]
    if kind.startswith("out_struct:"):
        struct = kind.partition(":")[2]
        return STRUCTS.get(struct), f"a {struct} of {STRUCTS.get(struct)} bytes"
    if kind == "out_str":
        return None, "a string buffer"
    return None, f"'{name}' ({kind})"


def _text(text: str, value: str) -> bytes:
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise OutError(f"--out {text.split('=', 1)[0]}=str:...: not text that can be written as UTF-8") from None


def _field_out(text, function, spec, index, field, value) -> Out:
    kind = spec.args[index][1] if spec else ""
    struct = kind.partition(":")[2] if kind.startswith("out_struct:") else None
    if struct is None:
        raise OutError(f"--out {text}: argument {index} of {function} is not a struct I know the layout of "
                       f"(give INDEX=VALUE, or INDEX=hex:BYTES for the whole out-parameter)")
    where = slot(struct, field)
    if where is None:
        raise OutError(f"--out {text}: {struct} has no field {field!r}")
    offset, size, ctype = where
    if value.startswith("str:"):
        if not ctype.startswith("char["):
            raise OutError(f"--out {text}: {struct}.{field} is {ctype}, not a string")
        data = _text(text, value[4:])[:size - 1] + b"\0"
        return Out(index, offset, data, text, field=field)
    if value.startswith("hex:"):
        data = _hex(text, value[4:])
        if len(data) > size:
            raise OutError(f"--out {text}: {len(data)} bytes do not fit in {struct}.{field} ({size} bytes)")
        return Out(index, offset, data, text, field=field)
    if size not in _INT_SIZES or ctype.startswith(("char[", "int[", "cudaUUID")):
        raise OutError(f"--out {text}: {struct}.{field} is {ctype}: give str:TEXT or hex:BYTES")
    number, given = _number(text, value, default=size)
    if given != size:
        raise OutError(f"--out {text}: {struct}.{field} is {size} bytes ({ctype}), not {given}")
    return Out(index, offset, _encode(number, size), text, field=field)


def _number(text: str, value: str, default: int = 4) -> tuple[int, int]:
    m = re.fullmatch(r"([^:]+)(?::(\d+))?", value)
    if not m:
        raise OutError(f"--out {text}: VALUE[:SIZE] expected")
    size = int(m.group(2) or default)
    if size not in _INT_SIZES:
        raise OutError(f"--out {text}: SIZE is 1, 2, 4 or 8 bytes, not {size}")
    try:
        number = parse_value(m.group(1))
    except UnknownValue as exc:
        raise OutError(f"--out {text}: {exc}") from None
    if not fits(number, size):
        raise OutError(f"--out {text}: {number} does not fit in {size} byte{'s' if size > 1 else ''} "
                       f"(give :8 for a 64-bit out-parameter)")
    return number, size


def _encode(number: int, size: int) -> bytes:
    return int(number & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _hex(text: str, digits: str) -> bytes:
    digits = re.sub(r"^GPU-", "", digits.strip()).replace("-", "")
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        raise OutError(f"--out {text}: not hex digits") from None
    if not data:
        raise OutError(f"--out {text}: no bytes")
    return data


def _length_arg(spec, index: int) -> int | None:
    """The argument right after a char * out-parameter that holds its buffer's length."""
    if spec is None or spec.args[index][1] != "out_str" or index + 1 >= len(spec.args):
        return None
    return index + 1 if spec.args[index + 1][0] in _LENGTH_NAMES else None


def capped(out: Out, cap: int | None) -> bytes:
    """OUT's bytes cut to a buffer of CAP bytes (its length argument at the call), NUL kept last."""
    if out.cap_arg is None or cap is None:
        return out.data
    cap &= 0xFFFFFFFF
    if cap <= 0:
        return b""
    return out.data if len(out.data) <= cap else out.data[:cap - 1] + b"\0"
