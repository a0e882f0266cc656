"""Operating a running cloud with a FakeExecutor: status, repair, stop/start/reboot, capacity, cluster view."""
from __future__ import annotations

from uhelpers import NODE, WORKERS, build_slice, lab_config, make_api, ok

from usecases import capacity


def deployed(tmp_path, config=None, **kw):
    api, db, ex = make_api(tmp_path, config=config)
    sid, ids = build_slice(api, vms=(("vm1", 1, True), ("vm2", 1, False)), links=((0, "eth1", 1, "eth1"),), **kw)
    ok(api.deploy_slice("admin", sid))
    return api, db, ex, sid, ids


def healthy_scans(ex, ids, crashed=(), dead_vlan=None, trunk="ok"):
    """Scan outputs of a healthy deployed slice (VM 1 on worker 0, VM 2 on worker 1), minus what is broken."""
    for i, (vm_id, worker) in enumerate(zip(ids, WORKERS)):
        lines = [] if vm_id in crashed else [f"qemu {vm_id} {4000 + i}", f"vmfiles vm{vm_id}.pid"]
        lines += [f"tap tap{vm_id}_0", f"tap tap{vm_id}_1", f"port tap{vm_id}_1 100"] if vm_id not in crashed else []
        if vm_id not in crashed:
            lines.append(f"flows cookie=0x4352{0:04x}{vm_id:08x}, priority=200,udp,in_port=tap{vm_id}_1,"
                         "tp_src=67,tp_dst=68 actions=drop")
        if i == 0 and vm_id not in crashed:
            lines.append(f"port tap{vm_id}_0 400")
            lines.append("trunkfilter cookie=0x4352000100000190, priority=50,dl_vlan=400 actions=drop")
        lines.append(f"overlay vm{i + 1}_img.qcow2")
        ex.answer("scan", host=worker, out="\n".join(lines) + "\n")
    node = []
    for vlan, gw in ((100, "192.168.100.1/24"), (400, "10.60.7.1/24")):
        node += [f"vlan {vlan}", f"gateway {vlan} {gw}", f"namespace {vlan}", f"vlanflows {vlan} 5",
                 f"dnsmasq {vlan} {'dead' if vlan == dead_vlan else 'alive'}"]
    node += [f"reservation {ids[0]}", "nat -A POSTROUTING -s 10.60.7.0/24 -o uplink0 -m comment "
             "--comment cloud-repositorio -j MASQUERADE", "isolation ipv4", "isolation ipv6",
             "isolation gateways-ipv4", "isolation gateways-ipv6"]
    node += [] if trunk is None else [f"trunk cr-trunk {trunk}"]
    ex.answer("scan", host=NODE, out="\n".join(node) + "\n")


def test_status_of_a_healthy_slice_has_no_problem(tmp_path):
    api, _db, ex, sid, ids = deployed(tmp_path)
    healthy_scans(ex, ids)
    report = ok(api.slice_status("admin", sid))
    assert report.problems == [], [(c.label, c.problem) for c in report.problems]
    assert {c.key.kind for c in report.checks} >= {"qemu", "tap", "port", "vlan", "gateway", "namespace",
                                                   "dnsmasq", "reservation", "nat", "isolation", "overlay"}
    assert all(report.vm_state(vm) == "running" for vm in report.slice["vms"])


def test_status_shows_a_crashed_vm_and_a_dead_dnsmasq_and_repair_restores_only_them(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    other, _ = build_slice(api, name="other", vms=(("o1", 1, False), ("o2", 1, False)),
                           links=((0, "eth1", 1, "eth1"),))
    ok(api.deploy_slice("admin", other))
    healthy_scans(ex, ids, crashed=(ids[1],), dead_vlan=100)
    report = ok(api.slice_status("admin", sid))
    missing = {(c.key.kind, c.key.vm_id, c.key.vlan) for c in report.problems}
    assert ("qemu", ids[1], None) in missing and ("dnsmasq", None, 100) in missing
    assert report.vm_state(next(v for v in report.slice["vms"] if v["vm_id"] == ids[1])) == "crashed"
    ex.commands.clear()
    ok_, outcome = api.repair_slice("admin", sid)
    assert ok_, outcome
    done = [(c.action, c.target) for c in ex.commands if c.action not in ("connect", "scan", "leases")]
    assert sorted(done, key=str) == sorted([("vlan_up", 100), ("start_vm", ids[1])], key=str)
    assert [s.ok for s in outcome.steps] == [True, True]
    assert db.get_slice(sid)["vms"][1]["pid"] == "4242"
    other_ids = [vm["vm_id"] for vm in db.get_slice(other)["vms"]]
    assert not [c for c in ex.commands if c.target in other_ids or c.target == 101]  # never another slice


def test_repair_with_nothing_missing_does_nothing(tmp_path):
    api, _db, ex, sid, ids = deployed(tmp_path)
    healthy_scans(ex, ids)
    ex.commands.clear()
    ok_, outcome = api.repair_slice("admin", sid)
    assert ok_ and outcome.message.startswith("Nothing to repair")
    assert [c.action for c in ex.commands if c.action not in ("connect", "scan", "leases")] == []


def test_status_needs_the_owner_or_an_admin(tmp_path):
    api, _db, _ex, sid, _ids = deployed(tmp_path)
    assert api.slice_status("student", sid) == (False, "Slice not found or not authorized")
    assert api.repair_slice("student", sid) == (False, "Slice not found or not authorized")


def test_stop_and_start_one_vm_keeps_its_disk_and_quota(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ex.commands.clear()
    ok(api.stop_vm("admin", sid, ids[1]))
    assert [(c.action, c.target) for c in ex.commands if c.action == "stop_vm"] == [("stop_vm", ids[1])]
    assert not [c for c in ex.commands if c.action == "delete_overlay"]
    s = db.get_slice(sid)
    assert s["status"] == "running" and [v["status"] for v in s["vms"]] == ["running", "stopped"]
    assert db.get_user("admin")["used_vms"] == 2
    assert WORKERS[1] not in capacity.allocations([s])  # a stopped VM frees its worker
    assert api.stop_vm("admin", sid, 424242)[0] is False
    ok(api.start_vm("admin", sid, ids[1]))
    assert [v["status"] for v in db.get_slice(sid)["vms"]] == ["running", "running"]
    assert api.start_vm("admin", sid, ids[1]) == (False, "Nothing to start: the VM is not stopped")


def test_stop_and_start_the_whole_slice(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ok(api.stop_vm("admin", sid))
    assert db.get_slice(sid)["status"] == "stopped"
    assert ex.made("vm") == set()
    assert api.deploy_slice("admin", sid) == (False, "Slice is stopped: start it (option 14) instead of deploying it")
    ok(api.start_vm("admin", sid))
    s = db.get_slice(sid)
    assert s["status"] == "running" and [v["status"] for v in s["vms"]] == ["running", "running"]
    assert {w for _k, w, _i in ex.made("vm")} == {WORKERS[0], WORKERS[1]}
    ok(api.delete_slice("admin", sid))  # delete works from every state
    assert ex.made("vm") == set()


def test_delete_a_stopped_slice(tmp_path):
    api, db, ex, sid, _ids = deployed(tmp_path)
    ok(api.stop_vm("admin", sid))
    assert api.delete_slice("admin", sid) == (True, "Slice deleted")
    assert db.get_slice(sid) is None


def test_reboot_resets_the_vm_over_its_monitor(tmp_path):
    api, _db, ex, sid, ids = deployed(tmp_path)
    ex.commands.clear()
    assert api.reboot_vm("admin", sid, ids[0]) == (True, f"VM {ids[0]} is rebooting")
    cmd = next(c for c in ex.commands if c.action == "reboot_vm")
    assert '"system_reset"' in cmd.script and f"vm{ids[0]}.qmp" in cmd.script


SMALL = {"hosts": {w: {"memory_mib": 1024 + 512, "vcpus": 2} for w in WORKERS}, "cpu_ratio": 1.0}


def test_a_vm_that_fits_nowhere_is_refused_before_anything_is_made(tmp_path):
    api, db, ex = make_api(tmp_path, config=lab_config(capacity=SMALL))
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    for i in range(6):  # 2 x 512 MiB per worker fill all three
        ok(api.add_vm_to_slice("admin", sid, f"v{i}", "cirros", 0))
    before = len([c for c in ex.commands if c.action == "create_overlay"])
    res = api.add_vm_to_slice("admin", sid, "v6", "cirros", 0)
    assert res == (False, "No worker has room for this VM: not enough memory: needs 512 MiB, 0 MiB free on the "
                          "best worker (short by 512 MiB)")
    assert len([c for c in ex.commands if c.action == "create_overlay"]) == before
    assert len(db.get_slice(sid)["vms"]) == 6 and db.get_user("admin")["used_vms"] == 6


def test_a_vm_that_can_never_fit_says_so(tmp_path):
    tiny = {"hosts": {w: {"memory_mib": 512 + 256, "vcpus": 1} for w in WORKERS}}
    api, _db, _ex = make_api(tmp_path, config=lab_config(capacity=tiny))
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    res = api.add_vm_to_slice("admin", sid, "big", "cirros", 0)
    assert res[0] is False and "can never fit" in res[1] and "needs 512 MiB" in res[1], res


def test_deploy_and_start_check_capacity_again(tmp_path):
    api, db, ex = make_api(tmp_path, config=lab_config(capacity=SMALL))
    sid, ids = build_slice(api, vms=(("a", 0, False), ("b", 0, False)))
    ok(api.deploy_slice("admin", sid))
    ok(api.stop_vm("admin", sid))
    other, _ = build_slice(api, name="o", vms=tuple((f"o{i}", 0, False) for i in range(6)))
    res = api.start_vm("admin", sid)
    assert res[0] is False and res[1].startswith("Not started: not enough memory on "), res
    assert db.get_slice(sid)["status"] == "stopped"
    with db.transaction() as data:  # an instructor lowers a worker's share by hand: deploy checks again
        data["slices"][str(other)]["vms"][0]["flavor"]["ram_gb"] = 4
    res = api.deploy_slice("admin", other)
    assert res[0] is False and "Not deployed: not enough memory on" in res[1] and "Nothing was created" in res[1]


def test_cluster_view_for_admins(tmp_path):
    api, _db, ex, _sid, _ids = deployed(tmp_path)
    view = ok(api.cluster_view("admin"))
    rows = {r["host"]: r for r in view["rows"]}
    assert set(rows) == set(WORKERS) | {NODE}
    w0 = rows[WORKERS[0]]
    assert w0["reachable"] and w0["memory_used"] == 512 and w0["vcpus_used"] == 1
    assert w0["memory_cap"] == 16 * 1024 - 512 and w0["vcpus_cap"] == 32 and w0["disk_free_mib"] == 100 * 1024
    ex.down_hosts.add(WORKERS[2])
    view = ok(api.cluster_view("admin"))
    down = next(r for r in view["rows"] if r["host"] == WORKERS[2])
    assert not down["reachable"] and "No route to host" in down["error"]
    assert api.cluster_view("student") == (False, "Only an admin can do this")


def test_a_detached_or_missing_trunk_is_shown_and_repaired_by_the_first_link_vlans_set_up(tmp_path):
    api, _db, ex, sid, ids = deployed(tmp_path)
    for state in ("detached", None):
        healthy_scans(ex, ids, trunk=state)
        report = ok(api.slice_status("admin", sid))
        assert [(c.key.kind, c.found) for c in report.problems] == [("trunk", state)]
        ex.commands.clear()
        ok(api.repair_slice("admin", sid))
        done = [(c.action, c.target) for c in ex.commands if c.action not in ("connect", "scan", "leases")]
        assert done == [("vlan_up", 100)]
        assert "port-to-br cr-trunk-br" in next(c.script for c in ex.commands if c.action == "vlan_up")
