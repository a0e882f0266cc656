"""Admission and the reservation it grants are one transaction (issue 17 item 10), FakeExecutor.

Two menus act at the same moment on one worker with room for one more VM: exactly one is
admitted.  Each menu is its own program (its own OrchestratorAPI, executor and Database object on
the same file), in its own thread; a hook holds each one at its VM's start on the worker until the
other has either reached its own start or finished, so both admissions overlap in time.
"""
from __future__ import annotations

import threading

from uhelpers import WORKERS, build_slice, lab_config, make_api, ok, restart

# one worker, room for two cirros VMs (512 MiB, 1 vCPU each)
TWO_SLOTS = lab_config(workers=[WORKERS[0]],
                       capacity={"hosts": {WORKERS[0]: {"memory_mib": 1024 + 512, "vcpus": 2}}, "cpu_ratio": 1.0})


class Meeting:
    """Holds each thread at its VM's start until the other arrived there too, or finished (5 s at most)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.arrived = self.done = 0

    def hook(self, _cmd) -> None:
        with self.cond:
            self.arrived += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.arrived >= 2 or self.done >= 1, timeout=5)

    def run(self, fn, out: list) -> threading.Thread:
        def body():
            try:
                out.append(fn())
            finally:
                with self.cond:
                    self.done += 1
                    self.cond.notify_all()
        return threading.Thread(target=body)


def one_slot_left(tmp_path):
    """A running VM, and two slices of one stopped VM each: one slot left on the worker."""
    api, db, ex = make_api(tmp_path, TWO_SLOTS)
    x, _ = build_slice(api, name="x", vms=(("x", 0, False),))
    ok(api.deploy_slice("admin", x))
    stopped = []
    for name in ("a", "b"):
        sid, _ = build_slice(api, name=name, vms=((name, 0, False),))
        ok(api.deploy_slice("admin", sid))
        ok(api.stop_vm("admin", sid))
        stopped.append(sid)
    return api, db, ex, stopped


def menus(tmp_path, db, n: int, meeting: Meeting) -> list:
    out = []
    for _ in range(n):
        api, _db, ex = restart(tmp_path, db, TWO_SLOTS)
        ex.hooks["start_vm"] = meeting.hook
        ex.hooks["create_overlay"] = meeting.hook
        out.append(api)
    return out


def running_vms(db) -> int:
    return sum(1 for s in db.all_slices().values() for vm in s["vms"] if vm["status"] == "running")


def test_two_starts_at_once_with_one_slot_left_admit_one(tmp_path):
    _api, db, _ex, (a, b) = one_slot_left(tmp_path)
    meeting = Meeting()
    first, second = menus(tmp_path, db, 2, meeting)
    results: list = []
    threads = [meeting.run(lambda: first.start_vm("admin", a), results),
               meeting.run(lambda: second.start_vm("admin", b), results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r[0] for r in results) == [False, True], results
    refused = next(r[1] for r in results if not r[0])
    assert refused.startswith("Not started: not enough memory on ") or "vCPUs" in refused, refused
    assert running_vms(db) == 2   # the worker's two slots, never three
    assert {db.get_slice(a)["status"], db.get_slice(b)["status"]} == {"running", "stopped"}
    assert all("busy" not in s for s in db.all_slices().values())


def test_a_start_and_an_add_at_once_with_one_slot_left_admit_one(tmp_path):
    api, db, _ex, (a, _b) = one_slot_left(tmp_path)
    design = ok(api.create_slice("admin", "d"))["slice_id"]
    meeting = Meeting()
    first, second = menus(tmp_path, db, 2, meeting)
    results: list = []
    threads = [meeting.run(lambda: first.start_vm("admin", a), results),
               meeting.run(lambda: second.add_vm_to_slice("admin", design, "new", "cirros", 0), results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r[0] for r in results) == [False, True], results
    placed = sum(1 for s in db.all_slices().values() for vm in s["vms"]
                 if vm["status"] in ("running", "design", "pending"))
    assert placed == 2, db.all_slices()


def test_a_start_admitted_holds_its_slot_until_it_ends(tmp_path):
    api, db, ex, (a, b) = one_slot_left(tmp_path)
    seen = {}

    def second_start(_cmd):
        if "other" not in seen:  # while VM a starts on the worker, another menu starts b
            other, _db, _ex = restart(tmp_path, db, TWO_SLOTS)
            seen["other"] = other.start_vm("admin", b)

    ex.hooks["start_vm"] = second_start
    assert ok(api.start_vm("admin", a)) == "Started 1 VM(s)"
    assert seen["other"][0] is False and seen["other"][1].startswith("Not started: not enough memory"), seen
    ex.hooks.clear()
    ok(api.stop_vm("admin", a))
    ok(api.start_vm("admin", b))    # the slot is free again once a stopped


def test_a_start_and_a_deploy_at_once_with_one_slot_left_admit_one(tmp_path):
    # the designed VM took the last slot when it was added: the deploy keeps it, the start is refused
    api, db, _ex, (a, _b) = one_slot_left(tmp_path)
    d, _ = build_slice(api, name="d", vms=(("d", 0, False),))
    meeting = Meeting()
    first, second = menus(tmp_path, db, 2, meeting)
    results: list = []
    threads = [meeting.run(lambda: ("start", first.start_vm("admin", a)), results),
               meeting.run(lambda: ("deploy", second.deploy_slice("admin", d)), results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got = dict(results)
    assert got["deploy"][0] is True and got["start"][0] is False, results
    assert got["start"][1].startswith("Not started: not enough memory on "), results
    assert running_vms(db) == 2 and db.get_slice(d)["status"] == "running"
    assert db.get_slice(a)["status"] == "stopped"
