"""Strict YAML for what people write: no anchors or aliases, no key given twice, with the lines.

PyYAML silently keeps the last of two equal keys (``role: student`` then
``role: admin`` reads as admin; a user block pasted twice loses one), and
expands aliases, so a 1 KB file of nested aliases (a "YAML bomb") becomes
billions of entries for whatever walks the data.  Every YAML file the product
reads from people (``database.yaml``, ``cluster.yaml``, topology files,
rosters) goes through these checks first:

* ``anchor_problem(text)``: the line of the first anchor (``&name``) or alias
  (``*name``).  The product never writes them; a file that has one is refused
  before anything is built from it.
* ``duplicate_problem(node)``: two keys of one mapping that mean the same key,
  with both lines: the same text, or the same text once read (``1000`` and
  ``'1000'`` are the same slice ID once the store spells keys as text).
* ``load(text)``: the data of a document that passes both (``yaml.safe_load``
  otherwise), or ``YamlRefused`` / ``yaml.YAMLError``.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import yaml

from store.text import clip, excerpt

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore

_STR_TAG = "tag:yaml.org,2002:str"
_constructor = yaml.constructor.SafeConstructor()
ANCHORS_REFUSED = "YAML anchors and aliases (&name, *name) are not accepted: write each value out in full"


class YamlRefused(ValueError):
    """A YAML document refused by these checks: ``message`` names what, ``line`` where (1-based)."""

    def __init__(self, message: str, line: int):
        super().__init__(f"line {line}: {message}")
        self.message, self.line = message, line


def anchor_problem(text: Union[str, bytes], loader=_Loader) -> Optional[YamlRefused]:
    """The first anchor or alias of ``text`` (None when it has none, or is not YAML: the parse says why)."""
    marks = (b"&", b"*") if isinstance(text, bytes) else ("&", "*")
    if marks[0] not in text and marks[1] not in text:
        return None                     # the common case: no event scan at all
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                return YamlRefused(ANCHORS_REFUSED, event.start_mark.line + 1)
    except yaml.YAMLError:
        return None
    return None


def _key_text(node: yaml.Node) -> Optional[str]:
    """The text a scalar key stands for once read (``1000``, ``'1000'`` and ``1_000`` all give "1000")."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    if node.tag == _STR_TAG:
        return node.value
    make = _constructor.yaml_constructors.get(node.tag)
    try:
        return str(make(_constructor, node)) if make else node.value
    except (yaml.YAMLError, ValueError, TypeError):
        return node.value


def _dotted(path: tuple) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out.lstrip(".")


def duplicate_problem(root: yaml.Node) -> Optional[YamlRefused]:
    """Two keys of one mapping meaning the same key, anywhere under ``root`` (each node visited once)."""
    stack: list = [(root, ())]
    seen_nodes: set = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key, value in node.value:
                text = _key_text(key)
                if text is not None:
                    if text in first:
                        return _twice(path, text, first[text], key)
                    first[text] = key
                stack.append((value, path + (text if text is not None else "?",)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,)) for i, item in enumerate(node.value))
    return None


def _twice(path: tuple, text: str, first: yaml.Node, again: yaml.Node) -> YamlRefused:
    where = f"{clip(_dotted(path))} has " if path else "the file has "
    spelled = "" if (first.tag, first.value) == (again.tag, again.value) else \
        f" (written {_spelling(first)} and {_spelling(again)}: the same key once read)"
    line1, line2 = first.start_mark.line + 1, again.start_mark.line + 1
    return YamlRefused(f"{where}the key {excerpt(text)} twice, on lines {line1} and {line2}{spelled}: "
                       "each key may appear once", line1)


def _spelling(node: yaml.Node) -> str:
    if node.tag == _STR_TAG:
        return f"{excerpt(node.value)} (text)"
    return f"{clip(node.value)} ({node.tag.rsplit(':', 1)[-1]})"


def load(text: Union[str, bytes], loader=_Loader) -> Any:
    """``yaml.safe_load(text)`` after the checks: YamlRefused (with its line) or yaml.YAMLError."""
    found = anchor_problem(text, loader)
    if found:
        raise found
    parser = loader(text)
    try:
        node = parser.get_single_node()
        if node is None:
            return None
        found = duplicate_problem(node)
        if found:
            raise found
        return parser.construct_document(node)
    except RecursionError:
        raise YamlRefused("nested too deeply", 1) from None
    finally:
        parser.dispose()
