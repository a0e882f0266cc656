"""The network node's shared checks under its locks, run for real by dash with flock (issue 18).

``vlan_manager._locked_once``: when a class deploys at once, the set-ups that
queued for a node lock while one of them checked the shared state (the
trunk, the isolation chains, the internet VLAN) skip the same check; without
contention, after a removal, or for different lines, the check runs.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess

import pytest

import naming
import vlan_manager

pytestmark = pytest.mark.skipif(not (shutil.which("dash") and shutil.which("flock")), reason="needs dash and flock")


def script(state: str, lock: str, lines: list, always: tuple = ()) -> str:
    """``_locked_once`` with the node's state directory moved to ``state``."""
    return vlan_manager._locked_once(lock, lines, always).replace(naming.STATE_DIR, state)


def run(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dash", "-ec", text], capture_output=True, text=True, timeout=30)


def children(pid: int) -> list:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def waiting_on_flock(procs: list) -> bool:
    """Every script of ``procs`` is inside ``flock 9`` (it has read the record and waits for the lock)."""
    def in_flock(pid: int) -> bool:
        for child in children(pid):
            for grandchild in [child, *children(child)]:
                try:
                    with open(f"/proc/{grandchild}/cmdline", "rb") as f:
                        if os.path.basename(f.read().split(b"\0")[0]).startswith(b"flock"):
                            return True
                except FileNotFoundError:
                    pass
        return False
    return all(in_flock(p.pid) for p in procs)


def queued_behind_the_lock(state: str, lock: str, texts: list) -> list:
    """Start ``texts`` while the test holds ``lock``, wait until each waits for it, release: their results."""
    with open(os.path.join(state, lock), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [subprocess.Popen(["dash", "-ec", t], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for t in texts]
        for _ in range(3000):
            if waiting_on_flock(procs):
                break
            os.sched_yield()
            subprocess.run(["true"])
        else:
            raise AssertionError("the scripts never waited for the lock")
    return [(p.wait(30), *p.communicate()) for p in procs]


def log_lines(state: str) -> list:
    path = os.path.join(state, "checks")
    return open(path).read().splitlines() if os.path.exists(path) else []


def check(state: str, who: str) -> list:
    return [f"echo {who} >> {state}/checks"]


def test_without_contention_every_script_checks(tmp_path):
    state = str(tmp_path)
    for who in ("a", "b", "c"):
        assert run(script(state, "trunk.lock", check(state, who))).returncode == 0
    assert log_lines(state) == ["a", "b", "c"]
    assert open(os.path.join(state, "trunk.ensured")).read().split()[:2] == ["3", "3"]


def test_scripts_that_waited_while_one_checked_skip_the_check_but_run_their_own_lines(tmp_path):
    state = str(tmp_path)
    same = check(state, "$$")   # the same lines in every script, each logs its own pid
    texts = [script(state, "vlan400.lock", same, always=(f"echo mine{i}",)) for i in range(6)]
    results = queued_behind_the_lock(state, "vlan400.lock", texts)
    assert [r[0] for r in results] == [0] * 6, results
    assert len(log_lines(state)) == 1            # one checked, five found it checked while they waited
    assert [r[1].strip() for r in results] == [f"mine{i}" for i in range(6)]


def test_a_removal_under_the_lock_makes_the_next_script_check_again(tmp_path):
    state = str(tmp_path)
    assert run(script(state, "iptables.lock", check(state, "first"))).returncode == 0
    removal = vlan_manager._locked("iptables.lock", [vlan_manager._ensured_forget("iptables.lock")])
    texts = [removal.replace(naming.STATE_DIR, state), script(state, "iptables.lock", check(state, "after"))]
    # the removal gets the lock first, then the set-up that waited behind it
    queued_behind_the_lock(state, "iptables.lock", texts[:1])
    assert run(texts[1]).returncode == 0
    assert log_lines(state) == ["first", "after"]


def test_removals_of_shared_node_state_forget_the_record():
    assert vlan_manager._ensured_forget("iptables.lock") in vlan_manager.remove_isolation_rules()
    assert vlan_manager._ensured_forget("trunk.lock") in "\n".join(vlan_manager.remove_trunk("br-int"))
    assert vlan_manager._ensured_forget("vlan400.lock") in "\n".join(vlan_manager.vlan_teardown("br-int", 400))


def test_other_lines_under_the_same_lock_are_checked_again(tmp_path):
    state = str(tmp_path)
    assert run(script(state, "iptables.lock", check(state, "policy-1"))).returncode == 0
    texts = [script(state, "iptables.lock", check(state, "policy-2")) for _ in range(2)]
    queued_behind_the_lock(state, "iptables.lock", texts)
    assert log_lines(state) == ["policy-1", "policy-2"]   # the first of the two checks policy 2, not skipped


def test_a_failed_check_is_not_recorded_and_the_next_script_checks(tmp_path):
    state = str(tmp_path)
    failing = script(state, "trunk.lock", [*check(state, "failed"), "false"])
    assert run(failing).returncode != 0
    assert not os.path.exists(os.path.join(state, "trunk.ensured"))
    assert run(script(state, "trunk.lock", [*check(state, "failed"), "false"])).returncode != 0
    assert log_lines(state) == ["failed", "failed"]


def test_a_damaged_record_means_a_check(tmp_path):
    state = str(tmp_path)
    with open(os.path.join(state, "trunk.ensured"), "w") as f:
        f.write("x; rm -rf / y z\n")
    r = run(script(state, "trunk.lock", check(state, "checked")))
    assert r.returncode == 0, r.stderr
    assert log_lines(state) == ["checked"]
