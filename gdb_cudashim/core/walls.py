"""What-if: test a finding by simulating its fix and running the program again (run --what-if).

A finding is an inference from one run. Its fix can often be simulated with cuda-patch: the
result (and out-parameters) a call would have had once the shim is fixed. The re-run then says
whether the error ggml printed went away or changed (the finding is proven) or stayed (it is not
the cause), and what the next wall is. Pure: never imports gdb; the CLI runs the programs.
"""
from __future__ import annotations

# init calls whose failure a stand-in result can lift, with the out-parameters a success needs
_SUCCESS_OUTS = {
    "cuInit": [],
    "cuDeviceGetCount": ["0=1"],
    "cuDeviceGet": ["0=0"],
    "cuDevicePrimaryCtxRetain": [],
    "nvmlInit_v2": [],
    "nvmlInit": [],
}

# memory queries past init (rules_road): a success with a device's figures (8 GiB free and total)
_MEMORY_OUTS = {
    "cuDevicePrimaryCtxRetain": [],
    "cuMemGetInfo_v2": ["0=8589934592:8", "1=8589934592:8"],  # size_t out-parameters
    "cudaMemGetInfo": ["0=8589934592:8", "1=8589934592:8"],
}

_CANNOT = {
    "nvml-driver-version": "the answer is a string (cuda-patch sets results and integer out-parameters): answer "
                           "NVIDIA's form in the shim and run again",
    "device-uuid-zero": "the answer is a 16-byte UUID (cuda-patch sets results and integer out-parameters)",
    "proc-address-target": "the fix is the pointer itself: the shim's own implementation of that entry point",
    "visible-devices": "the fix is how the shim reads CUDA_VISIBLE_DEVICES in each child, not one call's result",
    "missing-cuGetExportTable": "NVIDIA's private export tables (CUDART_INTERFACE...) exist only in NVIDIA's driver: "
                                "no stand-in can answer for them without one",
    "export-table-failed": "NVIDIA's private export tables (CUDART_INTERFACE...) exist only in NVIDIA's driver: "
                           "no stand-in can answer for them without one",
    "missing-cuGetProcAddress_v2": "a cuGetProcAddress_v2 that answers for the shim needs a stand-in library; "
                                   "none is bundled yet",
    "crash-in-runtime": "the crash is NVIDIA's cudart using a table the shim handed it: only the real table fixes it",
    "backend-load-failed": "a file problem (what ld.so could not load), not a call's result: fix the file",
    "preload-ignored": "a file problem (what ld.so could not preload), not a call's result: fix the path",
}


def simulation(finding: dict, report: dict) -> tuple[list[str] | None, str | None]:
    """(the cuda-patch arguments that simulate FINDING's fix, None) or (None, why it cannot be)."""
    rule = finding.get("rule")
    pid = finding.get("pid")
    if rule == "driver-version":
        return ["cuDriverGetVersion", "--return", "SUCCESS", "--out", f"0={_version_wanted(finding)}"], None
    if rule in ("driver-error-passed-through", "init-call-failed"):
        return _success_for_first_failure(report, pid, _SUCCESS_OUTS)
    if rule == "memory-query-failed":  # the first memory query that failed, answered with a device's figures
        return _success_for_first_failure(report, pid, _MEMORY_OUTS)
    if rule in _CANNOT:
        return None, _CANNOT[rule]
    return None, "no stand-in for this finding's fix yet (cuda-patch sets results and integer out-parameters)"


def _success_for_first_failure(report: dict, pid, outs: dict) -> tuple[list[str] | None, str | None]:
    """cuda-patch arguments that make PID's first failing call among OUTS's functions succeed, with
    the out-parameters OUTS gives it."""
    call = next((c for c in report.get("calls") or [] if (pid is None or c.get("pid") == pid)
                 and c.get("function") in outs and c.get("returned") and c.get("result") not in (0, None)), None)
    if call is None:
        return None, "the failing call is not in the report"
    args = [call["function"], "--return", "SUCCESS"]
    for out in outs[call["function"]]:
        args += ["--out", out]
    return args, None


def _version_wanted(finding: dict) -> int:
    import re

    text = " ".join([finding.get("summary", ""), *finding.get("evidence", [])])
    m = re.search(r"\((1[23]\d{3})\)", text) or re.search(r"needs (1[23]\d{3})", text)
    return 13000 if m and m.group(1).startswith("13") else 12090


def error_text(report: dict) -> str | None:
    """What the run printed as its CUDA init error (the first one), or None."""
    errors = report.get("errors") or []
    return errors[0]["text"].strip() if errors else None


def verdict(before: dict, after: dict) -> tuple[str, str]:
    """(proven | not the cause, the evidence in words) from the runs before and after a simulation."""
    was, now = error_text(before), error_text(after)
    first_before = (before.get("findings") or [{}])[0]
    first_after = (after.get("findings") or [{}])[0] if after.get("findings") else {}
    if was and not now:
        return "proven", f"the error {was!r} is gone"
    if was != now:
        return "proven", f"the error changed from {was!r} to {now!r}"
    if _same_words(first_before) != _same_words(first_after):
        went = (f"its first finding is now {first_after.get('rule')}: {first_after.get('summary')}"
                if first_after else "no finding is left")
        return "proven", ("the same text, but " if now else "") + f"the run went further ({went})"
    return "not the cause", (f"the run failed the same way ({now!r})" if now else
                             "the run failed the same way (the same first finding, no error text)")


def _same_words(finding: dict) -> tuple:
    """A finding as two runs can compare it: its rule and summary without process ids."""
    import re

    return finding.get("rule"), re.sub(r"\bpids? \d+", "pid N", finding.get("summary") or "")


def render(walls: list[dict], seconds: float) -> list[str]:
    out = ["", f"What-if: each finding's fix simulated and the program run again ({len(walls)} wall(s), "
               f"{seconds:.1f} s in all)"]
    for w in walls:
        head = f"wall {w['wall']}: {w['summary']}"
        if w["verdict"] == "cannot simulate":
            out.append(f"{head} -- cannot simulate: {w['why']}")
        else:
            out.append(f"{head} -- {w['verdict']} (with {' '.join(w['simulation'])}: {w['why']})")
    return out
