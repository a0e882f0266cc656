"""yamltext.fast_emit writes exactly what yaml.dump writes; line_of finds key paths."""
from __future__ import annotations

import copy
import datetime
import math
import random

import pytest
import yaml
from classdb import class_database

from store.yamltext import NotSimple, fast_emit, fast_load, line_of, reference_dump

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


# --- fast_load: PyYAML's result for the store's own form, NotSimple for anything else ---------------

def _identical(a, b) -> bool:
    """Equal with the same types and the same key order (1, 1.0 and True are all == in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(map(_typed, a)) == list(map(_typed, b)) and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def _typed(key):
    return type(key), key


def _agrees_with_pyyaml(text: str) -> bool:
    """fast_load either declines or gives exactly what yaml.safe_load gives (True when it read the text)."""
    try:
        got = fast_load(text)
    except NotSimple:
        return False
    try:
        expected = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AssertionError(f"fast_load read what PyYAML refuses ({e}):\n{text}") from e
    assert _identical(got, expected), f"fast_load differs from PyYAML on:\n{text}\n{got!r}\n{expected!r}"
    return True


def test_fast_load_reads_a_class_database_like_pyyaml():
    text = fast_emit(class_database())
    assert _agrees_with_pyyaml(text)


def test_fast_load_reads_the_tricky_documents_like_pyyaml_or_declines():
    read = 0
    for s in TRICKY:
        doc = {"users": {s: {"username": s, "slices": [s, 1, None]}}, s: [{"first": s}, {s: {}}, []]}
        read += _agrees_with_pyyaml(fast_emit(doc))
    assert read > len(TRICKY) // 2      # the quoted and odd ones are read too, not only left to PyYAML


def test_fast_load_reads_random_documents_like_pyyaml_or_declines():
    rng = random.Random(7)
    read = 0
    for _ in range(300):
        data = {_random_key(rng): _random_value(rng, 0) for _ in range(rng.randint(1, 5))}
        read += _agrees_with_pyyaml(fast_emit(data))
    assert read > 30


HAND_WRITTEN_READ = [
    "a: 1\nb:\n  c: x\n",
    "# comment first\n\nusers:\n    admin:            # never: ' #' is left to PyYAML\n",
    "users:\n    admin:\n        quota_vms: 10\n\n\n        role: admin\nnext_vm_id: 5",
    "slices:\n  - 1000\n  - 1001\nx: []\n",
    "slices:\n- 1000\n# between\n- '1001'\ny: {}\n",
    "'1000':\n  slice_id: 1000\n'1001':\n  slice_id: 1001\n",
    "k:   spaced value\n",
    "vms:\n- vm_id: 1\n  name: a\n  interfaces:\n  - name: eth0\n    vlan_id: null\n- vm_id: 2\n",
    "t: 2025-03-01\nu: 2025-03-01 10:00:00\nv: ~\nw: yes\nx: 0x1f\ny: 1_000\nz: 1:20\nf: .inf\ng: -.5\n",
    "q: 'it''s'\nr: ''\ns: 'a: b # c'\n",
    "mac: 52:54:00:03:10:00\npath: ~/vm_images/a_img.qcow2\nrange: 192.168.1.10,192.168.1.250\n",
    "a:\n- b:\n  - c: 1\n    d:\n      e: f\n  g: h\n",
    "unicode: naïve café 日本語\n",
]


@pytest.mark.parametrize("text", HAND_WRITTEN_READ)
def test_hand_edits_in_the_stores_form_are_read_like_pyyaml(text):
    if " #" in text:
        with pytest.raises(NotSimple):
            fast_load(text)
    else:
        assert _agrees_with_pyyaml(text)


LEFT_TO_PYYAML = [
    "a: [1, 2]\n", "a: {b: 1}\n", "a: \"dq\"\n", "a: |\n  text\n", "a: >\n  text\n", "a: &x 1\nb: *x\n",
    "a: !!str 5\n", "a: value\n  continued\n", "- 1\n- 2\n", "just text\n", "a:\tb\n", "a: b\r\n",
    "---\na: 1\n", "a: 1\n...\n", "%YAML 1.1\n---\na: 1\n", "a: b # comment\n", "a: 'multi\n  line'\n",
    "<<: {a: 1}\n", "a:\n  <<: x\n", "? complex\n: value\n", "a: 1\n  b: 2\n", "- - 1\n", "a:\n-\n",
    "a: b: c\n", "a:b\n", "a: \u2028\n", "\ufeffa: 1\n", "a: trailing \n", "  a: 1\nb: 2\n",
    # a key twice, keys that are not text: the store's strict loader refuses or respells them, with the lines
    "dup: 1\ndup: 2\nother: 3\n", "a:\n  k: 1\n  k: 2\n", "'1000':\n  slice_id: 1000\n1001:\n  slice_id: 1001\n",
    "1000: x\n", "true: x\n",
]


@pytest.mark.parametrize("text", LEFT_TO_PYYAML)
def test_other_yaml_is_left_to_pyyaml(text):
    with pytest.raises(NotSimple):
        fast_load(text)


MUTATION_BASES = [
    fast_emit(class_database(slices=1, users=3)),
    "users:\n  admin:\n    quota_vms: 10\n    slices: [1000]\n    role: admin\nslices:\n  '1000':\n"
    "    slice_id: 1000\n    vms:\n    - vm_id: 1001\n      name: vm1\n      interfaces:\n      - name: eth0\n"
    "        vlan_id: null\n    links: []\nnext_vm_id: 1002\n",
    "# notes\nusers:\n    a:\n        k: 'x''y'\n        l:\n            - 1\n            - two\nz: ~\n",
]
PIECES = [" ", "  ", "-", "- ", ":", ": ", "#", " #", "'", "''", '"', "\n", "\n  ", "a", "1", "0", "[", "]", "{",
          "}", "&", "*", "!", "|", ">", "?", ",", "\t", "~", ".", "yes", "null", "1e3", "1:2", "2025-01-01",
          "<<", "=", "...", "---", "é", "\u2028"]


def _mutate(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    kind = rng.randrange(6)
    if kind == 0:
        pos = rng.randrange(len(text) + 1)
        return text[:pos] + rng.choice(PIECES) + text[pos:]
    if kind == 1 and text:
        pos = rng.randrange(len(text))
        return text[:pos] + text[pos + rng.randint(1, 3):]
    n = rng.randrange(len(lines))
    if kind == 2:
        lines.insert(n, lines[n])
    elif kind == 3:
        del lines[n]
    elif kind == 4:
        lines[n] = " " * rng.randint(1, 3) + lines[n] if rng.random() < 0.5 else lines[n][rng.randint(1, 2):]
    else:
        if ": " in lines[n]:
            head = lines[n].split(": ", 1)[0]
            lines[n] = head + ": " + rng.choice(PIECES + TRICKY[:40]).replace("\n", "")
    return "\n".join(lines)


def test_fast_load_never_differs_from_pyyaml_on_damaged_texts():
    """Random edits of the store's form (keys, values, indentation, special characters): fast_load
    reads a text only when PyYAML reads it, and then gives exactly the same data."""
    rng = random.Random(1234)
    read = declined = 0
    for _ in range(3000):
        text = rng.choice(MUTATION_BASES)
        for _ in range(rng.randint(1, 3)):
            text = _mutate(rng, text)
        if _agrees_with_pyyaml(text):
            read += 1
        else:
            declined += 1
    assert read > 500 and declined > 300, (read, declined)   # both paths were really exercised
