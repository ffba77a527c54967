"""The devices each process was told about, decoded from the calls it made: what ggml prints in
`llama-server --list-devices` ("CUDA0: NAME (TOTAL MiB, FREE MiB free)") and its "Device N: NAME,
compute capability X.Y" line, and what ollama's probe reads, whatever the program printed or kept
quiet about. One row per (process, device); each field says which call answered it, so two
layers that disagree (the runtime's cudaDeviceProp and the driver's attributes) both show.
Pure: never imports gdb.
"""
from __future__ import annotations

from .finding import base as _lib
from .timeline import Timeline


def devices(tl: Timeline) -> list[dict]:
    """[{pid, device, name, cc, total, free, uuid, pci, from}] in the order the processes asked."""
    rows: dict[tuple[int, object], dict] = {}

    def row(pid, dev):
        return rows.setdefault((pid, dev), {"pid": pid, "device": dev, "name": None, "cc": None, "total": None,
                                            "free": None, "uuid": None, "pci": None, "from": []})

    def said(r, key, value, how):
        if value is None or value == "":
            return
        if r[key] is None:
            r[key] = value
        elif r[key] != value:  # the layers disagree: both stand
            r[key] = f"{r[key]} / {value}"
        r["from"].append(how)

    current: dict[int, object] = {}  # pid -> the device cudaSetDevice last chose (cudaMemGetInfo asks for it)
    attrs: dict[tuple[int, object], dict] = {}
    for c in tl.calls:
        if not c.returned or c.failed:
            continue
        a, fn = c.args, c.function
        how = f"{fn} ({_lib(c.library)})"
        if fn == "cudaGetDeviceProperties_v2" and isinstance(a.get("prop"), dict):
            p, r = a["prop"], row(c.pid, a.get("device"))
            said(r, "name", p.get("name"), how)
            if p.get("major") is not None:
                said(r, "cc", f"{p.get('major')}.{p.get('minor')}", how)
            said(r, "total", p.get("totalGlobalMem"), how)
        elif fn == "cudaSetDevice":
            current[c.pid] = a.get("device")
        elif fn == "cuDevicePrimaryCtxRetain":
            current[c.pid] = a.get("dev")  # cuMemGetInfo_v2 answers for the context's device
        elif fn in ("cudaMemGetInfo", "cuMemGetInfo_v2"):
            r = row(c.pid, current.get(c.pid, 0))
            r["free"] = a.get("free")
            said(r, "total", a.get("total"), how)
        elif fn == "cuDeviceGetName":
            said(row(c.pid, a.get("dev")), "name", a.get("name"), how)
        elif fn == "cuDeviceTotalMem_v2":
            said(row(c.pid, a.get("dev")), "total", a.get("bytes"), how)
        elif fn in ("cuDeviceGetUuid_v2", "cuDeviceGetUuid") and isinstance(a.get("uuid"), dict):
            said(row(c.pid, a.get("dev")), "uuid", a["uuid"].get("uuid"), how)
        elif fn == "cuDeviceGetPCIBusId":
            said(row(c.pid, a.get("dev")), "pci", a.get("pciBusId"), how)
        elif fn == "cuDeviceGetAttribute" and a.get("attrib") in (75, 76):
            got = attrs.setdefault((c.pid, a.get("dev")), {})
            got[a["attrib"]] = a.get("pi")
            if 75 in got and 76 in got:
                said(row(c.pid, a.get("dev")), "cc", f"{got[75]}.{got[76]}", how)
    for r in rows.values():
        r["from"] = list(dict.fromkeys(r["from"]))
    return list(rows.values())


def _mib(n) -> str:
    if isinstance(n, int):
        return f"{n >> 20} MiB"
    if isinstance(n, str):  # two layers' answers, "a / b"
        return " / ".join(_mib(int(x)) if x.strip().isdigit() else x.strip() for x in n.split("/"))
    return "?"


def render(rows: list[dict]) -> list[str]:
    """The table, as ggml would print each device."""
    if not rows:
        return []
    from tabulate import tabulate

    table = [[r["pid"], r["device"], r["name"] or "?", r["cc"] or "?", _mib(r["total"]), _mib(r["free"]),
              r["uuid"] or "", ", ".join(f.split(" ")[0] for f in r["from"])] for r in rows]
    out = ["", "Devices as each process was told (from its calls)"]
    out += ["  " + line for line in tabulate(table, headers=["pid", "dev", "name", "cc", "total", "free", "uuid",
                                                             "answered by"], tablefmt="simple",
                                                    disable_numparse=True).splitlines()]
    return out
