"""yamltext.fast_emit writes exactly what yaml.dump writes; line_of finds key paths."""
from __future__ import annotations

import copy
import datetime
import math
import random

import pytest
import yaml
from classdb import class_database

from yamltext import fast_emit, line_of, reference_dump

# Strings that need quoting, escaping or folding, or that look like something else.
TRICKY = [
    "yes", "no", "on", "Off", "TRUE", "y", "n", "null", "Null", "~", "", " ", "1e3", "1.5", ".5", "1_000", "0x1f",
    "0o17", "0b101", "010", "+1", "-1", "10:30", "52:54:00:03:10:00", "52:54:00:03:e9:00", ".inf", "-.inf", ".nan",
    "2025-03-01", "2025-03-01 10:00:00", "=", "<<", ": ", "a: b", "a:", ":a", "#", "a #b", "a#b", "- x", "-", "--",
    "---", "...", "? x", "?", "[a]", "{a: 1}", "a, b", ",", "!tag", "&anchor", "*alias", "|", ">", "%x", "@x",
    "`x", "'", '"', "don't", 'say "hi"', "back\\slash", "tab\there", " leading", "trailing ", "two  spaces",
    "multi\nline", "ends with newline\n", "\n", "a\n\nb", "crlf\r\n", "\x00nul", "\x07bell", "\x85next", "\u2028",
    "\ufeffbom", "é", "naïve café", "日本語", "emoji 🎓", "ß" * 40, "~/vm_images/vm1_img.qcow2", "/tmp/x y.img",
    "scrypt$16384$8$1$00ff$abcd", "192.168.100.10,192.168.100.250", "word " * 30 + "end",
    "x" * 130, "a b " * 50, "'quoted'", "\"dq\"", "@", "1:2:3", "12:60", "0:0", "-0", "+.5", "1.", "1e", "0.",
]


def _same(data) -> None:
    text = fast_emit(data)
    assert text == reference_dump(data)
    assert yaml.safe_load(text) == data


def test_a_class_database_is_written_byte_for_byte_like_yaml_dump():
    data = class_database()
    text = fast_emit(data)
    assert text == reference_dump(data)
    assert yaml.safe_load(text) == data


@pytest.mark.parametrize("s", TRICKY)
def test_tricky_strings_in_every_position(s):
    _same({
        "users": {s: {"username": s, "slices": [s, 1, None], "nested": {"deep": {"deeper": s, s: s}}}},
        "slices": {"1000": {"vms": [{"name": s, "interfaces": [{s: s, "x": [s]}]}, {s: [s]}], "links": []}},
        s: [{"first": s}, {s: {}}, [s], []],
        "next_vm_id": 1000,
    })


@pytest.mark.parametrize("value", [
    0, -5, 10 ** 30, 0.5, 2.2, -0.0, 1e20, 1e-7, 3.0, float("inf"), float("-inf"), True, False, None,
    datetime.date(2025, 3, 1), datetime.datetime(2025, 3, 1, 10, 0, 0), b"\x00\xffbytes", {1, 2},
    [], {}, [[1, [2, []]], {}], {1: "int key", None: "null key", False: "bool key", 1.5: "float key"},
])
def test_other_values_in_every_position(value):
    v = lambda: copy.deepcopy(value)  # noqa: E731 - a shared object would be an alias for yaml.dump
    data = {"a": v(), "b": [v(), {"c": v()}], "d": {"e": {"f": [[v()]]}}}
    assert fast_emit(data) == reference_dump(data)
    if not isinstance(value, float) or not math.isnan(value):
        assert yaml.safe_load(fast_emit(data)) == data


def test_nan_is_written_like_yaml_dump():
    data = {"a": float("nan"), "b": [float("nan")]}
    assert fast_emit(data) == reference_dump(data)
    assert math.isnan(yaml.safe_load(fast_emit(data))["a"])


def _random_value(rng: random.Random, depth: int):
    pick = rng.random()
    if depth > 4 or pick < 0.45:
        return rng.choice(TRICKY + [0, 7, -3, 1.25, True, False, None, "plain", "vm1", "10.0.0.1"])
    if pick < 0.75:
        return {_random_key(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _random_key(rng: random.Random):
    return rng.choice(TRICKY[:60] + ["name", "vlan_id", "k", 5, None])


def test_random_documents_are_written_like_yaml_dump():
    rng = random.Random(2025)
    for _ in range(300):
        data = {_random_key(rng): _random_value(rng, 0) for _ in range(rng.randint(1, 5))}
        _same(data)


def test_a_self_referencing_structure_ends():
    inner: list = [1]
    inner.append(inner)
    text = fast_emit({"a": {"b": inner}})
    again = yaml.safe_load(text)["a"]["b"]
    assert again[0] == 1 and again[1][0] == 1


def test_a_shared_object_is_written_in_full_at_each_place():
    """yaml.dump would write an anchor and an alias (&id001 / *id001): an instructor reads plain copies."""
    shared = {"cores": 1}
    data = {"vms": [{"flavor": shared}, {"flavor": shared}]}
    text = fast_emit(data)
    assert "&" not in text and "*" not in text
    assert text == reference_dump({"vms": [{"flavor": {"cores": 1}}, {"flavor": {"cores": 1}}]})
    assert yaml.safe_load(text) == data


TEXT = """\
# comment
users:
  admin:
    quota_vms: 10
slices:
  '1000':
    vms:
    - name: a
    - name: b
      interfaces:
      - {name: eth0}
next_vm_id: 5
"""


@pytest.mark.parametrize("path, line", [
    ((), 2), (("users",), 2), (("users", "admin", "quota_vms"), 4), (("slices", "1000"), 6),
    (("slices", "1000", "vms", 1), 9), (("slices", "1000", "vms", 1, "interfaces", 0, "name"), 11),
    (("slices", 1000, "vms", 0, "name"), 8), (("next_vm_id",), 12), (("slices", "1000", "missing"), 6),
    (("slices", "1000", "vms", 7), 7),
])
def test_line_of_a_key_path(path, line):
    assert line_of(TEXT, path) == line


def test_line_of_unparsable_or_empty_text_is_none():
    assert line_of("a: [\n", ("a",)) is None
    assert line_of("", ("a",)) is None
