"""The menu's end of the manager service: a connection, and ``RemoteAPI``, the façade as the menu sees it.

``RemoteAPI`` has the ``OrchestratorAPI`` methods the menu calls, with the
same arguments and return values, so ``cli.CLI`` runs unchanged over it.  The
user name the menu passes first is not sent: the service acts as the
session's user.  ``progress=`` callbacks get the events as they come.
Ctrl-C while a call runs is sent to the service as ``cancel`` (a deploy rolls
back there) and the call's own answer is awaited.  A console comes back as a
``RemoteStream``, which behaves like the paramiko channel the menu bridges
when it runs alone.

A reader thread takes every message off the socket: replies and events go to
the waiting call, stream bytes to their stream (whose ``fileno()`` is a pipe
that is readable while bytes wait, as paramiko's channels are).
"""
from __future__ import annotations

import base64
import dataclasses
import os
import queue
import signal
import socket
import threading
from typing import Any, Callable, Optional

from service import methods, protocol

DEFAULT_SOCKET = "/run/cloud-repositorio/manager.sock"


class ServiceGone(Exception):
    """The connection to the manager service ended (it stopped or restarted)."""


class ServiceRefused(Exception):
    """The service refused a request (the message says why)."""


class RemoteStream:
    """The menu's end of a live stream relayed by the service (a VM's console, a capture)."""

    def __init__(self, conn: ServiceConnection, number: int):
        self.conn, self.number = conn, number
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._rfd, self._wfd = os.pipe()
        self.eof_received = False
        self.closed = False

    # fed by the connection's reader thread
    def _feed(self, data: bytes = b"", err: bytes = b"", end: bool = False) -> None:
        with self._lock:
            self._out += data
            self._err += err
            if end:
                self.eof_received = True
        try:
            os.write(self._wfd, b"x")
        except OSError:
            pass

    def _settle(self) -> None:
        with self._lock:
            if not self._out and not self._err and not self.eof_received:
                try:
                    os.read(self._rfd, 65536)
                except OSError:
                    pass

    # the paramiko Channel methods the menu uses
    def fileno(self) -> int:
        return self._rfd

    def settimeout(self, _timeout: Optional[float]) -> None:
        pass

    def recv_ready(self) -> bool:
        return bool(self._out)

    def recv_stderr_ready(self) -> bool:
        return bool(self._err)

    def recv(self, n: int) -> bytes:
        with self._lock:
            data, self._out[:n] = bytes(self._out[:n]), b""
        self._settle()
        return data

    def recv_stderr(self, n: int) -> bytes:
        with self._lock:
            data, self._err[:n] = bytes(self._err[:n]), b""
        self._settle()
        return data

    def sendall(self, data: bytes) -> None:
        if self.closed or self.eof_received:
            raise OSError("the stream is closed")
        self.conn.send({"op": "stream", "stream": self.number, "data": base64.b64encode(data).decode()})

    def shutdown_write(self) -> None:
        """EOF to the other end (a capture then stops and sends what it still has)."""
        if not (self.closed or self.eof_received):
            self.conn.send({"op": "stream_eof", "stream": self.number})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.conn.send({"op": "stream_close", "stream": self.number})
        except ServiceGone:
            pass
        self.conn.streams.pop(self.number, None)
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass


class ServiceConnection:
    """A connection to the manager service (one session)."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 10.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise ServiceGone(f"cannot reach the manager service at {path}: {e.strerror or e}") from None
        self.sock.settimeout(None)
        self.reader = protocol.LineReader(self.sock)
        self.streams: dict = {}
        # Bytes of a stream the service relays before the reply that opens it is read (a capture that ends at
        # once): kept for a number above every stream opened so far, handed over when the reply opens it.
        self._early: dict = {}
        self._last_stream = 0
        self._ids = iter(range(1, 1 << 62))
        self._waiting: dict = {}
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self.gone: Optional[str] = None
        self._thread = threading.Thread(target=self._read_loop, name="service-reader", daemon=True)
        self._thread.start()
        hello = self.request({"op": "hello", "version": protocol.VERSION})
        self.session = hello.get("session")

    # --- plumbing -----------------------------------------------------------------------

    def send(self, msg: dict) -> None:
        if self.gone:
            raise ServiceGone(self.gone)
        try:
            with self._send_lock:
                self.sock.sendall(protocol.dumps(msg))
        except OSError as e:
            self._lost(f"the connection to the manager service was lost ({e.strerror or e})")
            raise ServiceGone(self.gone) from None

    def _read_loop(self) -> None:
        try:
            while True:
                self._dispatch(self.reader.read())
        except protocol.ConnectionClosed:
            self._lost("the manager service closed the connection")
        except (OSError, protocol.ProtocolError) as e:
            self._lost(f"the connection to the manager service broke ({e})")

    def _dispatch(self, msg: dict) -> None:
        if "stream" in msg:
            self._stream_message(msg)
            return
        if msg.get("id") is None and msg.get("ok") is False:  # refused at the door
            self._lost(msg.get("error") or "the manager service refused the connection")
            return
        with self._lock:
            box = self._waiting.get(msg.get("id"))
        if box is not None:
            box.put(msg)

    def _stream_message(self, msg: dict) -> None:
        number = msg["stream"]
        with self._lock:
            stream = self.streams.get(number)
            if stream is None:
                if isinstance(number, int) and number > self._last_stream:
                    self._early.setdefault(number, []).append(msg)
                return
        _feed_message(stream, msg)

    def _lost(self, why: str) -> None:
        if self.gone:
            return
        self.gone = why
        with self._lock:
            boxes = list(self._waiting.values())
        for box in boxes:
            box.put(None)
        for stream in list(self.streams.values()):
            stream._feed(end=True)

    def request(self, msg: dict, on_event: Optional[Callable[[Any], None]] = None) -> Any:
        """Send a request and wait for its reply (events go to ``on_event``); Ctrl-C is sent as cancel."""
        msg_id = next(self._ids)
        box: queue.Queue = queue.Queue()
        with self._lock:
            self._waiting[msg_id] = box
        interrupted = threading.Event()
        old = _catch_sigint(interrupted)
        try:
            self.send(dict(msg, id=msg_id))
            return self._await(msg_id, box, on_event, interrupted)
        finally:
            _restore_sigint(old)
            with self._lock:
                self._waiting.pop(msg_id, None)

    def _await(self, msg_id: int, box: queue.Queue, on_event, interrupted: threading.Event) -> Any:
        sent_cancel = False
        while True:
            if interrupted.is_set() and not sent_cancel:
                self.send({"op": "cancel", "id": msg_id})
                sent_cancel = True
            try:
                reply = box.get(timeout=0.1)
            except queue.Empty:
                continue
            if reply is None:
                raise ServiceGone(self.gone or "the manager service went away")
            if "event" in reply:
                if on_event is not None:
                    on_event(protocol.decode(reply["event"]))
                continue
            if not reply.get("ok"):
                raise ServiceRefused(reply.get("error") or "refused")
            return protocol.decode(reply.get("result"), self._stream)

    def _stream(self, number: int) -> RemoteStream:
        stream = RemoteStream(self, number)
        with self._lock:
            self.streams[number] = stream
            self._last_stream = max(self._last_stream, number)
            early = self._early.pop(number, [])
            for older in [n for n in self._early if n < number]:
                del self._early[older]
        for msg in early:
            _feed_message(stream, msg)
        if self.gone:
            stream._feed(end=True)
        return stream

    def close(self) -> None:
        self.gone = self.gone or "closed"
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _feed_message(stream: RemoteStream, msg: dict) -> None:
    stream._feed(base64.b64decode(msg.get("data", "")), base64.b64decode(msg.get("err", "")), "end" in msg)


def _catch_sigint(flag: threading.Event):
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda _s, _f: flag.set())


def _restore_sigint(old) -> None:
    if old is not None:
        signal.signal(signal.SIGINT, old)


def _plain(value: Any) -> Any:
    """What the menu sends: plain JSON (an orphan as its host, kind and name)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "host") and hasattr(value, "kind") and hasattr(value, "name"):
            return {"host": value.host, "kind": value.kind, "name": value.name}
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class RemoteAPI:
    """``OrchestratorAPI`` as the menu uses it, each call made by the manager service for this session."""

    remote = True

    def __init__(self, socket_path: str = DEFAULT_SOCKET):
        self.socket_path = socket_path
        self.conn = ServiceConnection(socket_path)

    def reconnect(self) -> None:
        """A new connection (a new, unbound session): after the service restarted."""
        self.conn.close()
        self.conn = ServiceConnection(self.socket_path)

    def close(self) -> None:
        self.conn.close()

    def authenticate(self, username: str, password: str) -> tuple:
        ok, info = self._request({"op": "login", "username": username, "password": password})
        return ok, info

    def logout(self, _username: str = "") -> tuple:
        return tuple(self._request({"op": "logout"}))

    def _request(self, msg: dict, on_event=None) -> Any:
        try:
            return self.conn.request(msg, on_event)
        except ServiceRefused as e:
            return [False, f"The manager service refused: {e}"]

    def __getattr__(self, name: str) -> Callable:
        method = methods.METHODS.get(name)
        if method is None:
            raise AttributeError(name)

        def call(_username: Any, *args: Any, progress: Optional[Callable] = None, **kwargs: Any) -> Any:
            msg = {"op": "call", "method": name, "args": _plain(list(args)), "kwargs": _plain(kwargs)}
            result = self._request(msg, progress if method.progress else None)
            return tuple(result) if isinstance(result, list) and len(result) == 2 else result

        call.__name__ = name
        return call
