"""The manager service's wire protocol: JSON lines over a Unix stream socket.

One message is one JSON object on one line (UTF-8, ``\\n``-terminated), at
most ``MAX_MESSAGE`` bytes.  A menu (the client) sends requests; the service
answers each with events and then one reply, all carrying the request's
``id``::

    client -> service                          service -> client
    {"op": "hello", "version": 1}              {"id": 0, "ok": true, "result": {...}}
    {"id": 1, "op": "login", "username": ..., "password": ...}
                                               {"id": 1, "ok": true, "result": {user info}}
    {"id": 2, "op": "call", "method": "deploy_slice", "args": [1000]}
                                               {"id": 2, "event": {progress event}}  (any number)
                                               {"id": 2, "ok": true, "result": [ok, payload]}
    {"id": 2, "op": "cancel"}                  (Ctrl-C: the call's runner is cancelled)
    {"op": "stream", "stream": 3, "data": B64} {"stream": 3, "data": B64}   (console bytes)
                                               {"stream": 3, "err": B64}    (its stderr)
    {"op": "stream_eof", "stream": 3}          (EOF to the channel: a capture stops, its last bytes follow)
    {"op": "stream_close", "stream": 3}        {"stream": 3, "end": "closed"}
    {"id": 4, "op": "logout"}

A refused request gets ``{"id": N, "ok": false, "error": "why"}``.  The
user is never named by a call: the service puts in the session's user.

Payloads are encoded by ``encode`` (the service) and ``decode`` (the menu):
dataclasses of the product's own modules travel as ``{"__dc__": "module.Name",
"fields": {...}}``, bytes as ``{"__bytes__": base64}``, maps with keys that are
not strings (``{slice_id: [...]}``) as ``{"__map__": [[k, v], ...]}``, sets as
``{"__set__": [...]}`` and a live stream (a console channel) as
``{"__stream__": N}``.  Only the menu decodes those markers, and only into
dataclasses of the product's packages; what a client sends is plain JSON and
is checked argument by argument (``service.methods``).
"""
from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import socket
from typing import Any, Callable, Optional

VERSION = 1
MAX_MESSAGE = 8 * 1024 * 1024  # a topology file, a roster or a slice export fits many times over
# Modules whose dataclasses a menu rebuilds from a reply (the service's own result types).
DECODABLE_PREFIXES = ("usecases.", "hosts.", "topology.", "store.", "models", "service.")


class ProtocolError(Exception):
    """A message that is not what the protocol allows (too long, not JSON, not an object)."""


class ConnectionClosed(Exception):
    """The other side closed the connection."""


# --- framing -------------------------------------------------------------------------

class LineReader:
    """Reads whole JSON messages from a socket, at most ``MAX_MESSAGE`` bytes each."""

    def __init__(self, sock: socket.socket, limit: int = MAX_MESSAGE):
        self.sock = sock
        self.limit = limit
        self.buf = b""

    def buffered(self) -> bool:
        """Is a whole message already waiting in the buffer?"""
        return b"\n" in self.buf

    def read(self) -> dict:
        """The next message (blocking); ConnectionClosed at the end, ProtocolError for a bad one."""
        while b"\n" not in self.buf:
            if len(self.buf) > self.limit:
                raise ProtocolError(f"message longer than {self.limit} bytes")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionClosed()
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        if len(line) > self.limit:
            raise ProtocolError(f"message longer than {self.limit} bytes")
        return parse(line)

    def read_ready(self) -> list:
        """Every whole message that can be had without blocking (the socket must be readable or buffered)."""
        if not self.buffered():
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionClosed()
            self.buf += chunk
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            out.append(parse(line))
        if len(self.buf) > self.limit:
            raise ProtocolError(f"message longer than {self.limit} bytes")
        return out


def parse(line: bytes) -> dict:
    try:
        msg = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"not a JSON message: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a JSON object")
    return msg


def dumps(msg: dict) -> bytes:
    """One message as its line (``ensure_ascii`` keeps it one line whatever the text holds)."""
    data = json.dumps(msg, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message longer than {MAX_MESSAGE} bytes")
    return data


# --- payloads ------------------------------------------------------------------------

def encode(value: Any, stream: Optional[Callable[[Any], int]] = None) -> Any:
    """A result as JSON-able data; ``stream(channel)`` registers a live channel and gives its number."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [encode(v, stream) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"__set__": [encode(v, stream) for v in sorted(value, key=repr)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v, stream) for k, v in value.items()}
        return {"__map__": [[encode(k, stream), encode(v, stream)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "channel" and stream is not None and item is not None:
                fields[f.name] = {"__stream__": stream(item)}
            else:
                fields[f.name] = encode(item, stream)
        cls = type(value)
        return {"__dc__": f"{cls.__module__}.{cls.__qualname__}", "fields": fields}
    raise TypeError(f"cannot send a {type(value).__name__} to a menu")


def decode(value: Any, stream: Optional[Callable[[int], Any]] = None) -> Any:
    """The inverse of ``encode`` (on the menu's side); ``stream(n)`` makes the menu's end of stream n."""
    if isinstance(value, list):
        return [decode(v, stream) for v in value]
    if not isinstance(value, dict):
        return value
    if "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    if "__set__" in value:
        return set(decode(v, stream) for v in value["__set__"])
    if "__map__" in value:
        return {_hashable(decode(k, stream)): decode(v, stream) for k, v in value["__map__"]}
    if "__stream__" in value:
        if stream is None:
            raise ProtocolError("a stream where none is expected")
        return stream(int(value["__stream__"]))
    if "__dc__" in value:
        return _dataclass(value["__dc__"], {k: decode(v, stream) for k, v in value["fields"].items()})
    return {k: decode(v, stream) for k, v in value.items()}


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _dataclass(name: str, fields: dict) -> Any:
    module_name, _, qualname = name.rpartition(".")
    if not module_name.startswith(DECODABLE_PREFIXES) and module_name not in ("models",):
        raise ProtocolError(f"{name} is not a type of this product")
    try:
        cls = getattr(importlib.import_module(module_name), qualname)
    except (ImportError, AttributeError) as e:
        raise ProtocolError(f"unknown type {name}: {e}") from None
    if not dataclasses.is_dataclass(cls):
        raise ProtocolError(f"{name} is not a data type")
    init = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.init and f.name in fields}
    obj = cls(**init)
    for f in dataclasses.fields(cls):
        if not f.init and f.name in fields:
            object.__setattr__(obj, f.name, fields[f.name])
    return obj
