"""Deadlocks and spins in the shim: real gdb-cudashim runs of the probe on the bundled shim's
CUDASHIM_DEADLOCK / CUDASHIM_SPIN modes, and the rule on hand-made hang evidence."""
from conftest import SHIM_BUILD, env_with, run_report
from gdb_cudashim.core import report as core_report
from gdb_cudashim.core.rules_hang import rule_deadlock_or_spin
from gdb_cudashim.core.timeline import Timeline


def hung(stack, probe, tmp_path, **shim_env):
    env = env_with(LD_LIBRARY_PATH=SHIM_BUILD, GGML_CUDA_LIB=stack.ggml_cuda, **shim_env)
    proc, report = run_report(tmp_path, [probe], env, extra=["--timeout", "4"])
    assert proc.returncode == 3, proc.stdout + proc.stderr
    return proc, report


def finding(report, rule):
    found = [f for f in report["findings"] if f["rule"] == rule]
    assert found, [f["rule"] for f in report["findings"]]
    return found[0]


def test_self_deadlock_names_the_lock_and_where_it_was_taken(stack, probe, tmp_path):
    proc, report = hung(stack, probe, tmp_path, CUDASHIM_DEADLOCK="self")
    (w,) = report["hang"]["locks"]
    assert w["symbol"] == "g_state_lock" and w["library"] == "libcuda.so.1" and w["kind"] == "self"
    assert w["owner"] == w["waiter"] and "shim_refresh_state" in w["waiter_where"]
    f = finding(report, "self-deadlock")
    assert "cuInit" in f["summary"] and "g_state_lock" in f["summary"] and "already holds" in f["summary"]
    assert any("shim_deadlock" in e and "cudashim.c:" in e for e in f["evidence"])
    assert "recursive" in f["fix"]
    assert "owned by itself: self" in proc.stdout


def test_constructor_that_never_unlocked(stack, probe, tmp_path):
    _, report = hung(stack, probe, tmp_path, CUDASHIM_DEADLOCK="ctor")
    (w,) = report["hang"]["locks"]
    assert w["kind"] == "never-unlocked" and w["symbol"] == "g_state_lock"
    f = finding(report, "lock-never-unlocked")
    assert "shim_load (a constructor of libcuda.so.1)" in f["summary"]
    assert "constructor" in f["fix"]


def test_abba_cycle_names_both_locks_and_owners(stack, probe, tmp_path):
    _, report = hung(stack, probe, tmp_path, CUDASHIM_DEADLOCK="abba")
    locks = report["hang"]["locks"]
    assert {w["symbol"] for w in locks} == {"g_state_lock", "g_table_lock"}
    assert all(w["kind"] == "cycle" for w in locks)
    a, b = locks
    assert a["owner"] == b["waiter"] and b["owner"] == a["waiter"]
    assert {"shim_abba_worker", "shim_deadlock"} == {w["owner_where"].split()[0] for w in locks}
    f = finding(report, "lock-cycle")
    assert "g_state_lock" in f["fix"] and "g_table_lock" in f["fix"]
    assert len([x for x in report["findings"] if x["rule"] == "lock-cycle"]) == 1


def test_spin_is_sampled_and_located(stack, probe, tmp_path):
    _, report = hung(stack, probe, tmp_path, CUDASHIM_SPIN="cuInit")
    (sp,) = report["hang"]["spins"]
    assert sp["functions"] == ["shim_spin_forever"] and sp["samples"] == 5
    assert sp["lines"].startswith("cudashim.c:") and sp["library"] == "libcuda.so.1"
    assert sp["cpu"] > 0.2 and "cuInit" in sp["entry"]
    f = finding(report, "spin")
    assert "shim_spin_forever" in f["summary"] and "cuInit" in f["summary"]
    assert report["hang"]["locks"] == []
    # slowed is not hung: the thread was running its own code, not waiting in the kernel
    assert "were still running, not blocked" in report["hang"]["summary"] and not report["hang"]["blocked"]


def test_plain_hang_has_no_lock_finding(stack, probe, tmp_path):
    # CUDASHIM_HANG waits on a condition variable: a futex, but no mutex anyone owns
    _, report = hung(stack, probe, tmp_path, CUDASHIM_HANG="cuInit")
    assert report["hang"]["locks"] == [] and report["hang"]["spins"] == []
    # a hang: the thread inside the shim waits in the kernel, and the report says in what
    assert "(blocked in futex)" in report["hang"]["summary"] and report["hang"]["blocked"], report["hang"]["summary"]


# -- the rule on hand-made evidence --

def lock(waiter, owner, symbol="g_lock", kind="other", **more):
    return {"pid": 10, "waiter": waiter, "owner": owner, "mutex": "0x1000", "symbol": symbol,
            "library": "libcuda.so.1", "locked": True, "kind": kind, "entry": "cuInit (libcuda.so.1)",
            "waiter_where": "helper (libcuda.so.1) at shim.c:5", "owner_where": "helper (libcuda.so.1) at shim.c:5",
            "owner_alive": True, **more}


def findings_for(hang):
    tl = Timeline()
    tl.hang = hang
    return rule_deadlock_or_spin(tl)


def test_rule_self():
    (f,) = findings_for({"locks": [lock(7, 7, kind="self", taken_in="outer (libcuda.so.1) at shim.c:3")]})
    assert f.rule == "self-deadlock" and "g_lock (libcuda.so.1)" in f.summary
    assert any("outer (libcuda.so.1) at shim.c:3" in e for e in f.evidence) and "thread 7" in f.evidence[0]


def test_rule_owner_gone():
    (f,) = findings_for({"locks": [lock(7, 9, kind="never-unlocked", owner_alive=False, owner_where=None)]})
    assert f.rule == "lock-never-unlocked" and "thread 9, which has exited" in f.summary


def test_rule_cycle_once():
    fs = findings_for({"locks": [lock(7, 8, "g_a", "cycle", cycle=[7, 8]), lock(8, 7, "g_b", "cycle", cycle=[8, 7])]})
    (f,) = fs
    assert f.rule == "lock-cycle" and "g_a and g_b" in f.fix


def test_rule_held_by_another_thread():
    (f,) = findings_for({"locks": [lock(7, 8, owner_where="worker (libcuda.so.1) at shim.c:40")]})
    assert f.rule == "lock-held" and "thread 8 at worker (libcuda.so.1) at shim.c:40" in f.summary


def test_rule_spin_and_nothing():
    (f,) = findings_for({"spins": [{"pid": 10, "tid": 7, "cpu": 0.99, "samples": 5, "pcs": ["0x10", "0x14"],
                                    "functions": ["loop"], "lines": "shim.c:8-9", "library": "libcuda.so.1",
                                    "entry": "cuInit (libcuda.so.1)"}]})
    assert f.rule == "spin" and "loop at shim.c:8-9" in f.summary and "99% CPU" in f.evidence[0]
    assert findings_for(None) == [] and findings_for({"threads": []}) == []


def test_report_renders_locks():
    tl = Timeline()
    hang = {"summary": "s", "threads": [], "locks": [lock(7, 7, kind="self")], "spins": []}
    text = "\n".join(core_report.render(core_report.build(tl, [], hang), color=False))
    assert "Locks" in text and "thread 7 waits on g_lock (0x1000), owned by itself: self" in text

