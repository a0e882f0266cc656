"""Link VLANs from the whole free range (SPEC §16, issue 19): blocks recorded when free, links in order,
slices beyond the 198 blocks, the refusal when the wire is full, concurrent menus, the menu's note."""
from __future__ import annotations

import multiprocessing

import pytest
from fakes import FakeExecutor
from uhelpers import build_slice, lab_config, make_api, ok, scripts

import naming
from database import Database
from deployment_api import DeploymentAPI
from menu.prompts import link_vlan_note, pool_text
from models import VM, Flavor, Interface, Link, Slice
from orchestrator_api import OrchestratorAPI
from usecases.design import add_link

CTX = multiprocessing.get_context("fork")
BLOCKS = 198


# --- the rule (naming) -------------------------------------------------------------------------

def test_link_vlan_order_covers_every_link_vlan_once_and_never_a_reserved_one():
    order = list(naming.link_vlan_order(reserved=(400, 125, 4090)))
    assert len(order) == len(set(order)) == 4094 - 100 + 1 - 3
    assert not {400, 125, 4090} & set(order) and min(order) == 100 and max(order) == 4094
    assert sorted(order) == naming.link_vlan_range(reserved=(400, 125, 4090))


def test_link_vlan_order_takes_vlans_in_no_block_first_then_the_ends_of_blocks():
    order = list(naming.link_vlan_order())
    assert order[:34] == list(range(401, 420)) + list(range(4080, 4095))
    assert order[34:37] == [119, 139, 159]          # the 20th VLAN of each block
    assert order[34 + BLOCKS:34 + BLOCKS + 2] == [118, 138]  # then the 19th
    assert order[-1] == 4060 and 100 in order[-BLOCKS:]      # the blocks' first VLANs come last


def test_a_block_holding_a_reserved_vlan_is_no_block():
    order = list(naming.link_vlan_order(reserved=(400, 125)))
    assert order[:20] == [120, 121, 122, 123, 124] + list(range(126, 140)) + [401]


def test_link_takes_the_first_free_vlan_of_its_block():
    assert naming.allocate_link_vlan(100, set()) == 100
    assert naming.allocate_link_vlan(100, {100, 101}) == 102
    assert naming.allocate_link_vlan(380, {380}) == 381
    assert naming.allocate_link_vlan(100, set(range(100, 120))) == 401   # block full: elsewhere
    assert naming.allocate_link_vlan(None, set()) == 401                  # no block
    assert naming.allocate_link_vlan(None, set(range(401, 420)) | set(range(4080, 4095))) == 119


def test_no_link_vlan_free_gives_none():
    assert naming.allocate_link_vlan(100, set(naming.link_vlan_range())) is None
    assert naming.allocate_link_vlan(None, set(naming.link_vlan_range())) is None


def test_the_internet_vlan_is_never_a_link_vlan_even_unlisted():
    used = set(naming.link_vlan_range()) - {399}
    assert naming.allocate_link_vlan(None, used, reserved=()) == 399
    assert naming.allocate_link_vlan(None, used | {399}, reserved=()) is None


# --- the model and the store ------------------------------------------------------------------

def test_slice_without_block_round_trips_with_null_fields():
    s = Slice.from_dict({"slice_id": 1300, "owner": "ana", "vlan_pool_start": None, "vlan_pool_end": None,
                         "vlan_pool_used": [401]})
    assert (s.vlan_pool_start, s.vlan_pool_end) == (None, None)
    assert s.get_next_vlan() is None
    d = s.to_dict()
    assert (d["vlan_pool_start"], d["vlan_pool_end"], d["vlan_pool_used"]) == (None, None, [401])
    assert Slice(1300, "ana").vlan_pool_start == 100      # the documented default is unchanged


def _class_of_blocks(db: Database, slices: int = BLOCKS, owner: str = "admin") -> None:
    """``slices`` design slices recording blocks, written straight into the database (no VMs)."""
    starts = [b for b in range(100, 4080, 20) if b != 400]
    with db.transaction() as data:
        sid = int(data.get("next_vm_id", 1000))
        for start in starts[:slices]:
            data["slices"][str(sid)] = Slice(sid, owner, name=f"full{sid}", vlan_pool_start=start).to_dict()
            data["users"][owner]["slices"].append(sid)
            sid += 1
        data["next_vm_id"] = sid


def test_slice_created_when_every_block_is_recorded_has_none(tmp_path):
    api, db, _ex = make_api(tmp_path)
    _class_of_blocks(db)
    made = ok(api.create_slice("admin", "beyond"))
    assert (made["vlan_pool_start"], made["vlan_pool_end"]) == (None, None)
    stored = db.get_slice(made["slice_id"])
    assert (stored["vlan_pool_start"], stored["vlan_pool_end"]) == (None, None)
    again = Database(db.path, fast=False).get_slice(made["slice_id"])   # PyYAML reads the same file
    assert (again["vlan_pool_start"], again["vlan_pool_end"]) == (None, None)


def test_links_of_a_slice_without_block_get_free_vlans_elsewhere_and_distinct(tmp_path):
    api, db, _ex = make_api(tmp_path, lab_config(reserved_vlans=[403]))
    _class_of_blocks(db, owner="student")
    sid, ids = build_slice(api, name="beyond", vms=(("a", 3, False), ("b", 3, False)),
                           links=((0, "eth1", 1, "eth1"), (0, "eth2", 1, "eth2"), (0, "eth3", 1, "eth3")))
    s = db.get_slice(sid)
    assert [link["vlan_id"] for link in s["links"]] == [401, 402, 404]
    assert s["vlan_pool_used"] == [401, 402, 404]
    assert s["networks"][0]["cidr"] == str(naming.link_subnet(401))
    vm = s["vms"][0]
    assert [i["vlan_id"] for i in vm["interfaces"]] == [None, 401, 402, 404]


def test_documented_block_is_recorded_and_taken_in_order_when_free(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, _ = build_slice(api, vms=(("a", 2, False), ("b", 2, False)),
                         links=((0, "eth1", 1, "eth1"), (0, "eth2", 1, "eth2")))
    s = db.get_slice(sid)
    assert (sid, s["vlan_pool_start"], s["vlan_pool_end"], s["vlan_pool_used"]) == (1000, 100, 119, [100, 101])


def test_a_block_vlan_held_by_another_slices_link_is_skipped(tmp_path):
    # a slice without a block took 119 (the end of a block) when nothing else was free; the slice
    # that later records 100-119 takes 100..118 in order and then goes elsewhere
    api, db, _ex = make_api(tmp_path)
    with db.transaction() as data:
        s = Slice(999, "admin", name="other", vlan_pool_start=None)
        s.vlan_pool_start = s.vlan_pool_end = None
        s.vlan_pool_used = [101]
        data["slices"]["999"] = s.to_dict()
    sid, _ = build_slice(api, vms=(("a", 3, False), ("b", 3, False)),
                         links=((0, "eth1", 1, "eth1"), (0, "eth2", 1, "eth2"), (0, "eth3", 1, "eth3")))
    assert db.get_slice(sid)["vlan_pool_used"] == [100, 102, 103]


def _vm(vm_id: int, owner: str, n_data: int) -> dict:
    ifaces = [Interface(f"eth{i}", mac=f"52:54:00:{(vm_id >> 8) & 255:02x}:{vm_id & 255:02x}:{i:02x}")
              for i in range(n_data + 1)]
    vm = VM(vm_id, f"v{vm_id}", owner, "10.250.0.11", 5901 + vm_id - 1000, ifaces, Flavor.get("cirros"),
            f"~/vm_images/v{vm_id}_img.qcow2")
    vm.status = "design"
    return vm.to_dict()


def test_300_slices_of_4_links_each_every_link_on_its_own_vlan():
    """The class of issue 19: 1,200 link VLANs at once; the first 198 slices keep their blocks in order."""
    data = {"users": {"admin": {"username": "admin", "slices": [], "used_vms": 0, "quota_vms": 10000,
                                "role": "admin"}}, "slices": {}, "next_vm_id": 1000}
    reserved = (400,)
    for n in range(300):
        sid = 1000 + 2 * n
        taken = [(s["vlan_pool_start"], s["vlan_pool_end"]) for s in data["slices"].values()
                 if s["vlan_pool_start"] is not None]
        start = naming.allocate_vlan_pool(sid, taken, reserved)
        s = Slice(sid, "admin", name=f"s{n}", vlan_pool_start=start)
        if start is None:
            s.vlan_pool_start = s.vlan_pool_end = None
        d = s.to_dict()
        d["vms"] = [_vm(sid + 1, "admin", 8)]
        data["slices"][str(sid)] = d
        for k in range(4):
            made, link = add_link(data, "admin", sid, (sid + 1, f"eth{2 * k + 1}"), (sid + 1, f"eth{2 * k + 2}"),
                                  reserved)
            assert made, link
    slices = list(data["slices"].values())
    vlans = [link["vlan_id"] for s in slices for link in s["links"]]
    assert len(vlans) == len(set(vlans)) == 1200 and 400 not in vlans
    with_block = [s for s in slices if s["vlan_pool_start"] is not None]
    assert len(with_block) == BLOCKS
    for s in with_block:
        start = s["vlan_pool_start"]
        assert [link["vlan_id"] for link in s["links"]] == [start, start + 1, start + 2, start + 3]
    without = [s for s in slices if s["vlan_pool_start"] is None]
    assert len(without) == 102
    outside = {link["vlan_id"] for s in without for link in s["links"]}
    assert set(range(401, 420)) | set(range(4080, 4095)) <= outside     # the VLANs in no block first
    in_blocks = outside - set(range(401, 420)) - set(range(4080, 4095))
    assert len(outside) == 408 and all((v - 100) % 20 >= 17 for v in in_blocks)  # then the ends of blocks


def _full_wire(db: Database) -> None:
    """Every link VLAN held: one design slice per block with 20 links, the rest in slices without a block."""
    with db.transaction() as data:
        sid = 5000
        vlans = naming.link_vlan_range()
        for k in range(0, len(vlans), 20):
            s = Slice(sid, "admin", name=f"w{sid}")
            s.vlan_pool_start = s.vlan_pool_end = None
            for j, v in enumerate(vlans[k:k + 20]):
                s.vlan_pool_used.append(v)
                s.links.append(Link(j + 1, v, sid + 1, f"eth{2 * j + 1}", sid + 1,
                                                        f"eth{2 * j + 2}"))
            data["slices"][str(sid)] = s.to_dict()
            sid += 2
        data["next_vm_id"] = sid


def test_refusal_when_every_link_vlan_is_held_says_how_many_links_hold_them(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, (a, b) = build_slice(api)
    _full_wire(db)
    before = db.get_slice(sid)
    made, message = api.create_link("admin", sid, a, "eth1", b, "eth1")
    assert not made
    assert message == ("No free VLAN for this link: all 3994 link VLANs (100-4094 less the reserved ones) are "
                       "held by 3994 links of 200 slices. Delete slices that are no longer needed first.")
    assert db.get_slice(sid) == before


def test_twenty_links_is_still_the_most_a_slice_has(tmp_path):
    api, db, _ex = make_api(tmp_path)
    _class_of_blocks(db)
    sid, ids = build_slice(api, vms=tuple((f"vm{i}", 8, False) for i in range(6)))
    ends = [(v, f"eth{k}") for v in ids for k in range(1, 9)]
    for n in range(20):
        ok(api.create_link("admin", sid, *ends[2 * n], *ends[2 * n + 1]))
    assert api.create_link("admin", sid, *ends[40], *ends[41]) == (False, "VLAN pool exhausted")


def test_deploy_of_a_slice_without_block_sets_up_its_own_vlans(tmp_path):
    api, db, ex = make_api(tmp_path)
    _class_of_blocks(db)
    sid, _ = build_slice(api, links=((0, "eth1", 1, "eth1"),))
    ok(api.deploy_slice("admin", sid))
    node = scripts(ex, ex.config.network_node)
    assert any(f"ip link add link {naming.NODE_TRUNK} name gw_vlan401 " in s for s in node), node


# --- what the menu says ------------------------------------------------------------------------

def test_menu_note_only_for_a_vlan_outside_the_slices_block():
    inside = {"vlan_pool_start": 100, "vlan_pool_end": 119}
    assert link_vlan_note(inside, 100) is None and link_vlan_note(inside, 119) is None
    assert link_vlan_note(inside, 401) == ("   VLAN 401 is outside the slice's VLAN pool 100-119 "
                                           "(its VLANs there are held by other links)")
    none = {"vlan_pool_start": None, "vlan_pool_end": None}
    assert link_vlan_note(none, 401) == ("   VLAN 401 is a free VLAN outside any slice's own block: this slice "
                                         "has none (every block of 20 VLANs is held by a slice)")
    assert pool_text(inside) == "100-119"
    assert pool_text(none).startswith("none (")


# --- two menus at once -------------------------------------------------------------------------

def _linker(path: str, sid: int, vm: int, barrier, queue) -> None:
    api = OrchestratorAPI(Database(path), DeploymentAPI(FakeExecutor()))
    barrier.wait()
    for k in range(4):
        queue.put(api.create_link("admin", sid, vm, f"eth{2 * k + 1}", vm, f"eth{2 * k + 2}"))


@pytest.mark.parametrize("with_blocks", [False, True])
def test_menus_creating_links_at_once_never_get_the_same_vlan(tmp_path, with_blocks):
    path = str(tmp_path / "db.yaml")
    api = OrchestratorAPI(Database(path), DeploymentAPI(FakeExecutor()))
    if not with_blocks:
        _class_of_blocks(api.db)   # every new slice has no block: all of them draw from the same order
    made = []
    for n in range(6):
        sid = ok(api.create_slice("admin", f"m{n}"))["slice_id"]
        vm = ok(api.add_vm_to_slice("admin", sid, "v", "cirros", 8))["vm_id"]
        made.append((sid, vm))
    barrier, queue = CTX.Barrier(len(made)), CTX.Queue()
    procs = [CTX.Process(target=_linker, args=(path, sid, vm, barrier, queue)) for sid, vm in made]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in range(4 * len(made))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r[0] for r in results), results
    stored = Database(path).load()["slices"]
    vlans = [link["vlan_id"] for sid, _ in made for link in stored[str(sid)]["links"]]
    assert len(vlans) == len(set(vlans)) == 24
    assert sorted(r[1]["vlan_id"] for r in results) == sorted(vlans)


# --- rosters beyond the 198 blocks -------------------------------------------------------------

def test_roster_beyond_the_blocks_makes_every_students_ring(tmp_path):
    """196 blocks recorded already: of 5 students with a ring of 4, 2 get blocks and 3 get VLANs elsewhere."""
    api, db, ex = make_api(tmp_path)
    ex.config.raw["capacity"].update(ram_ratio=64.0, cpu_ratio=64.0)
    _class_of_blocks(db, slices=BLOCKS - 2)
    with open(naming.__file__.replace("naming.py", "topologies/ring4.yaml")) as f:
        ring = f.read()
    roster = "username,quota,password\n" + "".join(f"r{i},6,generate\n" for i in range(5))
    made, report = api.import_roster("admin", roster, "csv", ring, None, str(tmp_path / "pw"))
    assert made, report
    assert [s.slice for s in report.students] == ["made"] * 5
    slices = [db.get_slice(s.slice_id) for s in report.students]
    assert [s["vlan_pool_start"] is not None for s in slices] == [True, True, False, False, False]
    for s in slices[:2]:
        assert s["vlan_pool_used"] == list(range(s["vlan_pool_start"], s["vlan_pool_start"] + 4))
    elsewhere = [v for s in slices[2:] for v in s["vlan_pool_used"]]
    assert elsewhere == list(range(401, 413))
    every = [link["vlan_id"] for s in db.load()["slices"].values() for link in s["links"]]
    assert len(every) == len(set(every)) == 20
