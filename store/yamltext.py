"""YAML text helpers shared by the store and the cluster config.

``fast_emit(data)`` writes a mapping of plain data (dicts, lists, strings,
numbers, booleans, None) as block-style YAML, the same text as
``yaml.dump(data, Dumper=CSafeDumper, default_flow_style=False,
sort_keys=False, allow_unicode=True)`` but many times faster: the common
scalars (names, numbers, addresses, MACs, paths, hashes) are written
directly; anything else (strings that need quoting, folding or escapes,
unusual keys, other types, nested lists) is handed to PyYAML itself, placed
at the same indentation as in the whole document, so the text is identical.
One deliberate difference: an object that appears twice in the data is
written in full at each place, where yaml.dump writes an anchor and an alias
(``&id001`` / ``*id001``); both read back as equal data.

``fast_load(text)`` is the reverse for that form: ``yaml.safe_load(text)``
(scalars resolved and constructed by PyYAML's own rules), about four times
faster, for block mappings and sequences of one-line scalars with text keys,
each key once; for anything else (flow collections, double quotes,
multi-line scalars, anchors, tags, tabs, control characters, comments after
content, a key given twice, keys that are not text...) it raises NotSimple
and the caller uses PyYAML (the store: its strict loader, store/yamlcheck.py).
Tests compare it with PyYAML on thousands of damaged texts.

``line_of(text, path)`` finds the line of a key path (``("slices", "1000",
"vms", 2)``) in a YAML text, for error messages that name the line.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import yaml

try:
    from yaml import CSafeDumper as _Dumper
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeDumper as _Dumper  # type: ignore
    from yaml import SafeLoader as _Loader  # type: ignore

DUMP_OPTIONS = {"default_flow_style": False, "sort_keys": False, "allow_unicode": True}
_STR_TAG = "tag:yaml.org,2002:str"
# Plain in block context whatever the column (no spaces: never folded, no indicator inside).
_SIMPLE = re.compile(r"[A-Za-z0-9_./~$+=()][A-Za-z0-9_./~$+=()@,:-]*")
_MAX_SIMPLE_KEY = 100    # libyaml writes keys of 128+ characters as complex keys ("? ")
_MAX_DEPTH = 64          # deeper (or self-referencing) data goes to PyYAML whole
_MEMO_LIMIT = 100_000
_resolver = yaml.resolver.Resolver()


class _NoAliasDumper(_Dumper):
    """PyYAML's dumper writing an object that appears twice in full each time (data that contains itself
    cannot be written: RecursionError)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def reference_dump(data: Any, aliases: bool = True) -> str:
    """What ``fast_emit`` must equal: PyYAML's own block-style dump (``aliases=False``: no ``&id001``)."""
    return yaml.dump(data, Dumper=_Dumper if aliases else _NoAliasDumper, **DUMP_OPTIONS)


def _simple_str(s: str) -> Optional[str]:
    """The text of a string that needs no context (plain or single-quoted), or None."""
    if s == "":
        return "''"
    if not _SIMPLE.fullmatch(s) or s.endswith(":") or s.startswith("..."):
        return None
    if _resolver.resolve(yaml.ScalarNode, s, (True, False)) == _STR_TAG:
        return s
    return f"'{s}'"  # reads as a number, bool, null...: quoted (no quote can be inside)


class _Memo(dict):
    """A cache that fills itself: ``memo[x]`` computes ``make(x)`` once."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        if len(self) > _MEMO_LIMIT:
            self.clear()
        text = self[key] = self.make(key)
        return text


def _other_scalar(value: Any) -> Optional[str]:
    """The text of a non-string scalar (None for containers and other types)."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return _FLOATS[repr(value)]  # by repr: 0.0 and -0.0 are equal keys but different texts
    return None


# Strings repeat from one save to the next: their texts are kept (bounded) across calls.
_STRINGS = _Memo(_simple_str)
_FLOATS = _Memo(lambda r: reference_dump([float(r)])[2:-1])   # PyYAML's spelling: .inf, 1.0e+20...
_KEYS = _Memo(lambda k: _simple_str(k) if len(k) <= _MAX_SIMPLE_KEY else None)


def _scalar(value: Any) -> Optional[str]:
    """The context-free text of a scalar, or None when PyYAML must write it."""
    if type(value) is str:
        return _STRINGS[value]
    return _other_scalar(value)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _holds_control(value: Any, depth: int = 0) -> bool:
    """True when a string inside ``value`` (a key too) holds a control character (newlines and tabs too)."""
    kind = type(value)
    if kind is str:
        return _CONTROL.search(value) is not None
    if depth > _MAX_DEPTH:
        return True         # too deep to tell: the caller checks the whole data
    if kind is dict:
        return any(_holds_control(k, depth + 1) or _holds_control(v, depth + 1) for k, v in value.items())
    if kind in (list, tuple):
        return any(_holds_control(v, depth + 1) for v in value)
    return False


class _Emitter:
    """One document's worth of block YAML, built as a list of lines."""

    def __init__(self):
        self.out: list[str] = []
        self.control = False    # something handed to PyYAML holds a control character

    def mapping(self, d: dict, indent: int, lead: str, depth: int) -> None:
        """``d`` at ``indent``; the first line starts with ``lead`` (spaces, or ``- `` of a list item)."""
        pad = " " * indent
        prefix = lead
        out = self.out
        for k, v in d.items():
            ks = _KEYS[k] if type(k) is str and depth <= _MAX_DEPTH else None
            t = type(v)
            if ks is None:
                self.delegate({k: v}, indent, prefix)
            elif t is str:
                vs = _STRINGS[v]
                if vs is None:
                    self.delegate({k: v}, indent, prefix)
                else:
                    out.append(f"{prefix}{ks}: {vs}")
            elif t is dict:
                if not v:
                    out.append(f"{prefix}{ks}: {{}}")
                else:
                    out.append(f"{prefix}{ks}:")
                    self.mapping(v, indent + 2, pad + "  ", depth + 1)
            elif t is list:
                if not v:
                    out.append(f"{prefix}{ks}: []")
                else:
                    out.append(f"{prefix}{ks}:")
                    self.sequence(v, indent, depth + 1)
            else:
                vs = _other_scalar(v)
                if vs is None:
                    self.delegate({k: v}, indent, prefix)
                else:
                    out.append(f"{prefix}{ks}: {vs}")
            prefix = pad

    def sequence(self, items: list, indent: int, depth: int) -> None:
        """A list that is a mapping's value: its ``- `` at the mapping's own indent."""
        lead = " " * indent + "- "
        for item in items:
            if type(item) is dict and item and depth <= _MAX_DEPTH:
                self.mapping(item, indent + 2, lead, depth + 1)
            elif type(item) is dict and not item:
                self.out.append(lead + "{}")
            else:
                vs = _scalar(item)
                if vs is None:
                    self.delegate_item(item, indent)
                else:
                    self.out.append(lead + vs)

    def delegate(self, entry: dict, indent: int, prefix: str) -> None:
        """A one-key mapping written by PyYAML as if it stood at ``indent``."""
        self.control = self.control or _holds_control(entry)
        lines = _dump_at(entry, indent // 2).split("\n")
        lines[0] = prefix + lines[0][indent:]
        self.out.extend(lines)

    def delegate_item(self, item: Any, indent: int) -> None:
        """One list item written by PyYAML, its ``- `` at column ``indent``."""
        self.control = self.control or _holds_control(item)
        self.out.extend(_dump_at({"k": [item]}, indent // 2).split("\n")[1:])


def _dump_at(node: Any, depth: int) -> str:
    """PyYAML's text for ``node`` nested ``depth`` mappings deep, without the nesting lines."""
    for _ in range(depth):
        node = {"k": node}
    text = reference_dump(node)
    return text.split("\n", depth)[depth].rstrip("\n")


def fast_emit(data: dict) -> str:
    """Block-style YAML of a mapping, identical to ``reference_dump(data)``."""
    return fast_emit_checked(data)[0]


def fast_emit_checked(data: dict) -> tuple:
    """(``fast_emit(data)``, whether some string in it may hold a control character).

    Only strings handed to PyYAML can (the direct form has none), so the
    store checks names again only then."""
    if type(data) is not dict or not data:
        return reference_dump(data), True
    emitter = _Emitter()
    emitter.mapping(data, 0, "", 0)
    return "\n".join(emitter.out) + "\n", emitter.control


# --- reading the block YAML that fast_emit writes ---------------------------------------

class NotSimple(Exception):
    """The text uses YAML beyond what ``fast_load`` reads: PyYAML must parse it."""


_STR_TAGS = {"tag:yaml.org,2002:" + t for t in ("int", "float", "bool", "null", "timestamp")}
_INDICATOR_FIRST = frozenset("-?:,[]{}#&*!|>'\"%@` ")
_constructor = yaml.constructor.SafeConstructor()


def _read_plain(s: str) -> Any:
    """A one-line plain scalar, resolved and constructed by PyYAML's own rules (5, 'x', True, None...)."""
    first = s[0]
    if (first in _INDICATOR_FIRST and not (first in "-?:" and len(s) > 1 and s[1] != " ")) \
            or ": " in s or s[-1] in ": " or s.startswith(("---", "...")):
        raise NotSimple(s)
    tag = _resolver.resolve(yaml.ScalarNode, s, (True, False))
    if tag == _STR_TAG:
        return s
    if tag not in _STR_TAGS:        # merge keys (<<), '=': leave them to PyYAML
        raise NotSimple(s)
    return _constructor.yaml_constructors[tag](_constructor, yaml.ScalarNode(tag, s))


def _plain_value(s: str) -> Any:
    if s.isdigit() and (s[0] != "0" or s == "0") and s.isascii():
        return int(s)               # the common case, without the resolver
    return _PLAIN[s]


_PLAIN = _Memo(_read_plain)         # constructed scalars are immutable: shared safely


def _read_quoted(s: str) -> str:
    inner = s[1:-1]
    if len(s) < 2 or s[-1] != "'" or "'" in inner.replace("''", ""):
        raise NotSimple(s)
    return inner.replace("''", "'")


def _read_scalar(s: str) -> Any:
    if s == "{}":
        return {}
    if s == "[]":
        return []
    return _read_quoted(s) if s[0] == "'" else _plain_value(s)


def _read_key(s: str) -> Any:
    if not s or s in ("{}", "[]"):
        raise NotSimple(s)
    return _read_quoted(s) if s[0] == "'" else _plain_value(s)


def _split_entry(content: str) -> Optional[tuple]:
    """(key text, value text) of ``key: value`` or ``key:``; None when the line is a lone scalar."""
    if content[0] == "'":
        end = 1
        while True:
            end = content.find("'", end)
            if end < 0:
                raise NotSimple(content)
            if content[end + 1:end + 2] != "'":
                break
            end += 2
        rest = content[end + 1:]
        if not rest:
            return None
        if rest == ":" or rest.startswith(": "):
            return content[:end + 1], rest[2:].lstrip(" ")
        raise NotSimple(content)
    pos = content.find(": ")
    if pos >= 0:
        return content[:pos], content[pos + 2:].lstrip(" ")
    if content[-1] == ":":
        return content[:-1], ""
    return None


def _tokens(text: str) -> list:
    """[indent, is a list item, content] per line that is not blank or a comment."""
    tokens = []
    for line in text.split("\n"):
        content = line.lstrip(" ")
        if not content or content[0] == "#":
            continue
        indent = len(line) - len(content)
        if content[:2] == "- ":
            tokens.append([indent, True, content[2:]])
        elif content == "-":
            raise NotSimple(line)
        else:
            tokens.append([indent, False, content])
    return tokens


def _read_mapping(tokens: list, i: int, indent: int) -> tuple:
    """(mapping, next token) of the block mapping whose keys start at column ``indent``."""
    out: dict = {}
    count = len(tokens)
    while i < count:
        col, dash, content = tokens[i]
        if col < indent:
            break
        entry = _split_entry(content) if col == indent and not dash else None
        if entry is None:
            raise NotSimple(content)
        key = _read_key(entry[0])
        if type(key) is not str or key in out:     # a key twice, or one the store would respell: the strict
            raise NotSimple(content)                # loader says which, with both lines
        i += 1
        if entry[1]:
            value = _read_scalar(entry[1])
            if i < count and tokens[i][0] > indent:     # a scalar continued on the next line
                raise NotSimple(content)
        elif i < count and tokens[i][0] > indent:
            nested = tokens[i][0]
            value, i = (_read_sequence if tokens[i][1] else _read_mapping)(tokens, i, nested)
        elif i < count and tokens[i][0] == indent and tokens[i][1]:
            value, i = _read_sequence(tokens, i, indent)   # "key:" then "- item" at the key's column
        else:
            value = None
        out[key] = value
    return out, i


def _read_sequence(tokens: list, i: int, indent: int) -> tuple:
    """(list, next token) of the block sequence whose ``- `` are at column ``indent``."""
    out: list = []
    count = len(tokens)
    while i < count:
        col, dash, content = tokens[i]
        if col < indent or (col == indent and not dash):
            break
        if col > indent or content[:2] in ("- ", "? ") or content == "-":
            raise NotSimple(content)
        if _split_entry(content) is not None:         # "- key: value": a mapping two columns in
            tokens[i] = [indent + 2, False, content]
            value, i = _read_mapping(tokens, i, indent + 2)
        else:
            value = _read_scalar(content)
            i += 1
            if i < count and tokens[i][0] > indent:
                raise NotSimple(content)
        out.append(value)
    return out, i


def _unusual(text: str) -> bool:
    """Characters or forms fast_load leaves to PyYAML: tabs, control and line-separator characters,
    trailing spaces, comments after content, document markers."""
    return (not text.replace("\n", " ").isprintable() or " \n" in text or text.endswith(" ")
            or " #" in text or text.startswith(("---", "...", "%")) or "\n---" in text or "\n..." in text)


def fast_load(text: str) -> Any:
    """``yaml.safe_load(text)`` for the block YAML ``fast_emit`` writes (and hand edits that keep its form).

    Reads block mappings and sequences of one-line plain or single-quoted
    scalars, ``{}`` and ``[]``, comment lines; anything else (flow
    collections, double quotes, multi-line scalars, anchors, tags, tabs...)
    raises NotSimple, and the caller parses with PyYAML."""
    if _unusual(text):
        raise NotSimple("unusual characters")
    tokens = _tokens(text)
    if not tokens:
        return None
    if tokens[0][0] != 0 or tokens[0][1]:
        raise NotSimple("not a mapping at column 0")
    try:
        data, end = _read_mapping(tokens, 0, 0)
    except RecursionError as e:
        raise NotSimple("too deep") from e
    if end != len(tokens):
        raise NotSimple("text after the mapping")
    return data


# --- where is a key path in a YAML text -------------------------------------------------

def _child(node: yaml.Node, step: Any) -> tuple:
    """(key node or None, value node) of ``step`` inside ``node``, or (None, None)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(step):
                return key, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        return None, node.value[step]
    return None, None


def line_of(text: Any, path: Sequence) -> Optional[int]:
    """1-based line of the deepest part of ``path`` found in the YAML ``text`` (None if none)."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    line = node.start_mark.line + 1
    for step in path:
        key, value = _child(node, step)
        if value is None:
            break
        line = (key or value).start_mark.line + 1
        node = value
    return line
