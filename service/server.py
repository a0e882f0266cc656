"""The manager service: one ``OrchestratorAPI`` for every menu, over a Unix socket.

It runs as its own account, the only one that holds the SSH key, the site
key, the log and write access to ``database.yaml``; menus run as any Unix
user and reach it through the socket (``service.protocol``).

Sessions.  A connection is one session.  It starts unbound; the only call it
may make is ``login`` (the menu's login prompt), which the service checks
against the database, slowing down repeated failures (per user name and per
caller uid).  From then on every call acts as that user: the service puts the
session's user in as the first argument, and a call may only be one of the
verbs of ``service.methods``, arguments checked.  A client never names a
user, a session or a path; a message with a field the protocol does not have
is refused.  The caller's uid and pid come from the kernel (SO_PEERCRED) and
are on every log line of the session's work, with its user.

Calls.  One call at a time per session, run in its own thread so that the
session still reads the client: ``cancel`` (Ctrl-C in the menu) interrupts
the call as Ctrl-C does to the menu run alone (the deploy rolls back), and a
console's bytes flow both ways.  Progress events are sent as they happen.  A
client that disappears does not stop a call: a deploy goes on to its end or
to its rollback, never half-made; its consoles are closed.

The service owns the use cases' state: one executor (one SSH connection per
host, at most ``MAX_SESSIONS_PER_HOST`` sessions on it), one runner, the
store's parsed state kept between calls and re-read only when the file
changed (an instructor's hand edit is seen, or refused with its line).
"""
from __future__ import annotations

import contextvars
import grp
import itertools
import logging
import os
import pwd
import select
import socket
import stat
import threading
import time
from typing import Any, Callable, Optional

from hosts.runner import CALL_CONTROL, CallControl
from remote_executor import LOG_ACTOR
from service import methods, protocol
from service.peercred import Peer, peer_of

log = logging.getLogger("cloudrepo.service")

MAX_SESSIONS = 1000         # connections at once (200 idle menus use a few MiB)
MAX_SESSIONS_PER_UID = 32
MAX_LOGIN_TEXT = 256
CLIENT_FIELDS = {"id", "op", "method", "args", "kwargs", "username", "password", "stream", "data", "version"}


class LoginThrottle:
    """Slows down repeated failed logins, per user name and per caller uid.

    After ``free`` failures in a row, each further attempt waits 1, 2, 4 ... up
    to ``cap`` seconds before it is answered; a success clears the name's
    count; counts are forgotten after ``forget`` seconds without a failure.
    """

    def __init__(self, free: int = 2, cap: float = 30.0, forget: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        self.free, self.cap, self.forget, self.clock = free, cap, forget, clock
        self._lock = threading.Lock()
        self._failures: dict = {}  # key -> (count, last failure time)

    def _count(self, key: tuple) -> int:
        count, last = self._failures.get(key, (0, 0.0))
        if count and self.clock() - last > self.forget:
            self._failures.pop(key, None)
            return 0
        return count

    def delay(self, username: str, uid: Optional[int]) -> float:
        with self._lock:
            n = max(self._count(("user", username)), self._count(("uid", uid)))
        return 0.0 if n < self.free else min(self.cap, 2.0 ** (n - self.free))

    def failed(self, username: str, uid: Optional[int]) -> None:
        with self._lock:
            now = self.clock()
            for key in (("user", username), ("uid", uid)):
                self._failures[key] = (self._count(key) + 1, now)

    def succeeded(self, username: str, uid: Optional[int]) -> None:
        with self._lock:
            self._failures.pop(("user", username), None)
            self._failures.pop(("uid", uid), None)


class Session:
    """One menu's connection: who is at the other end, who logged in, what runs for it."""

    def __init__(self, service: ManagerService, sock: socket.socket, number: int):
        self.service, self.sock, self.id = service, sock, f"s{number}"
        self.peer: Peer = peer_of(sock)
        self.user: Optional[str] = None
        self.reader = protocol.LineReader(sock)
        self._send_lock = threading.Lock()
        self.alive = True
        self.call_id: Any = None
        self.control: Optional[CallControl] = None
        self._streams: dict = {}
        self._stream_numbers = itertools.count(1)

    # --- sending ------------------------------------------------------------------------

    def send(self, msg: dict) -> bool:
        """Send one message; False (and nothing raised) when the client is gone."""
        if not self.alive:
            return False
        try:
            data = protocol.dumps(msg)
        except (TypeError, ValueError, protocol.ProtocolError) as e:
            log.error("%s: cannot send a reply: %s", self.id, e)
            data = protocol.dumps({"id": msg.get("id"), "ok": False, "error": "the reply could not be sent"})
        try:
            with self._send_lock:
                self.sock.sendall(data)
            return True
        except OSError:
            self.alive = False
            return False

    def reply(self, msg_id: Any, result: Any) -> None:
        self.send({"id": msg_id, "ok": True, "result": protocol.encode(result, self._open_stream)})

    def refuse(self, msg_id: Any, why: str) -> None:
        self.send({"id": msg_id, "ok": False, "error": why})

    def actor(self) -> str:
        return f"session={self.id} user={self.user or '-'} {self.peer.describe()}"

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        LOG_ACTOR.set(self.actor())
        log.info("%s: connected (%s)", self.id, self.peer.describe())
        try:
            while self.alive:
                try:
                    msg = self.reader.read()
                except protocol.ConnectionClosed:
                    break
                except protocol.ProtocolError as e:
                    self.refuse(None, f"bad message: {e}")
                    break
                self.handle(msg)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.alive = False
        for channel in list(self._streams.values()):
            _close_quietly(channel)
        self._streams.clear()
        _close_quietly(self.sock)
        self.service.forget(self)
        log.info("%s: disconnected (user %s)", self.id, self.user or "-")

    def handle(self, msg: dict) -> None:
        """One message from the client (on the session's reading thread: never blocks on a use case)."""
        msg_id, op = msg.get("id"), msg.get("op")
        extra = sorted(set(msg) - CLIENT_FIELDS)
        if extra:
            return self.refuse(msg_id, f"unknown field {extra[0]!r}: a client never names a user or a session")
        handler = {"hello": self._hello, "login": self._login, "logout": self._logout, "call": self._call,
                   "cancel": self._cancel, "stream": self._stream_write,
                   "stream_eof": self._stream_eof,
                   "stream_close": self._stream_close}.get(op) if isinstance(op, str) else None
        if handler is None:
            return self.refuse(msg_id, f"unknown operation {op!r}")
        handler(msg_id, msg)

    # --- operations ---------------------------------------------------------------------

    def _hello(self, msg_id: Any, msg: dict) -> None:
        self.reply(msg_id, {"version": protocol.VERSION, "session": self.id, "user": self.user})

    def _login(self, msg_id: Any, msg: dict) -> None:
        username, password = msg.get("username"), msg.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or \
                len(username) > MAX_LOGIN_TEXT or len(password) > MAX_LOGIN_TEXT:
            return self.refuse(msg_id, "login needs a user name and a password (text)")
        self._start(msg_id, "login", self._do_login, username, password)

    def _do_login(self, username: str, password: str) -> Any:
        throttle = self.service.throttle
        wait = throttle.delay(username.strip(), self.peer.uid)
        if wait:
            time.sleep(wait)
        ok, info = self.service.api.authenticate(username, password)
        if not ok:
            throttle.failed(username.strip(), self.peer.uid)
            log.warning("%s: failed login as %r (%s)", self.id, username.strip()[:64], self.peer.describe())
            return [False, info]
        throttle.succeeded(username.strip(), self.peer.uid)
        previous, self.user = self.user, info["username"]
        log.info("%s: logged in as %s (%s)%s", self.id, self.user, self.peer.describe(),
                 f", was {previous}" if previous else "")
        return [True, info]

    def _logout(self, msg_id: Any, msg: dict) -> None:
        if self.call_id is not None:
            return self.refuse(msg_id, "a call is still running")
        log.info("%s: %s logged out", self.id, self.user or "-")
        self.user = None
        self.reply(msg_id, [True, "logged out"])

    def _call(self, msg_id: Any, msg: dict) -> None:
        if self.user is None:
            return self.refuse(msg_id, "log in first")
        method = methods.method_of(msg.get("method"))
        if method is None:
            return self.refuse(msg_id, f"unknown method {msg.get('method')!r}")
        try:
            bound = methods.bind(method, msg.get("args", []), msg.get("kwargs", {}))
        except methods.BadCall as e:
            return self.refuse(msg_id, str(e))
        self._start(msg_id, method.name, self._do_call, method, bound, msg_id)

    def _do_call(self, method: methods.Method, bound: dict, msg_id: Any) -> Any:
        user = self.user
        log.info("%s: %s calls %s(%s)", self.id, user, method.name, _summary(bound))
        if method.progress:
            bound["progress"] = lambda event: self.send({"id": msg_id, "event": protocol.encode(event)})
        if method.name == "cleanup_orphans":
            bound["orphans"] = self.service.recheck_orphans(user, bound["orphans"])
        result = getattr(self.service.api, method.name)(user, **bound)
        ok = bool(result[0]) if isinstance(result, tuple) and result else None
        log.info("%s: %s %s -> %s", self.id, user, method.name, "ok" if ok else "refused or failed")
        return result

    def _start(self, msg_id: Any, name: str, fn: Callable, *args: Any) -> None:
        """Run ``fn`` in a thread of its own (one at a time per session), then reply."""
        if self.call_id is not None:
            return self.refuse(msg_id, "one request at a time: the previous one is still running")
        self.call_id, self.control = msg_id, CallControl()
        context = contextvars.copy_context()
        context.run(CALL_CONTROL.set, self.control)
        context.run(LOG_ACTOR.set, self.actor())
        threading.Thread(target=context.run, args=(self._run_call, msg_id, name, fn, args),
                         name=f"{self.id}-{name}", daemon=True).start()

    def _run_call(self, msg_id: Any, name: str, fn: Callable, args: tuple) -> None:
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - the client gets one line, the log the traceback
            log.exception("%s: %s failed", self.id, name)
            result, failed = None, f"internal error in {name}: {e or type(e).__name__} (details in the log)"
        else:
            failed = None
        self.call_id, self.control = None, None
        if failed:
            self.refuse(msg_id, failed)
        else:
            try:
                self.reply(msg_id, list(result) if isinstance(result, tuple) else result)
            except TypeError as e:
                log.error("%s: %s returned what cannot be sent: %s", self.id, name, e)
                self.refuse(msg_id, f"internal error in {name}: its result cannot be sent")

    def _cancel(self, msg_id: Any, msg: dict) -> None:
        control = self.control
        if control is not None and msg_id == self.call_id:
            log.info("%s: %s interrupted %s (Ctrl-C)", self.id, self.user, msg_id)
            control.interrupt()

    # --- streams (consoles) -------------------------------------------------------------

    def _open_stream(self, channel: Any) -> int:
        number = next(self._stream_numbers)
        self._streams[number] = channel
        threading.Thread(target=self._relay, args=(number, channel), name=f"{self.id}-stream{number}",
                         daemon=True).start()
        return number

    def _relay(self, number: int, channel: Any) -> None:
        """Copy what the channel prints to the client until it ends or the client goes."""
        how = "closed"
        try:
            channel.settimeout(0.0)
            while self.alive and number in self._streams:
                select.select([channel], [], [], 1.0)
                data, err, ended = _drain_channel(channel)
                if data and not self.send({"stream": number, "data": protocol.encode(data)["__bytes__"]}):
                    break
                if err and not self.send({"stream": number, "err": protocol.encode(err)["__bytes__"]}):
                    break
                if ended:
                    break
        except OSError:
            how = "lost"
        finally:
            self._streams.pop(number, None)
            _close_quietly(channel)
            self.send({"stream": number, "end": how})

    def _stream_write(self, msg_id: Any, msg: dict) -> None:
        channel = self._streams.get(msg.get("stream"))
        data = msg.get("data")
        if channel is None or not isinstance(data, str):
            return
        try:
            channel.sendall(protocol.decode({"__bytes__": data}))
        except (OSError, ValueError):
            _close_quietly(channel)

    def _stream_eof(self, msg_id: Any, msg: dict) -> None:
        """The client has no more to send (a capture stops on it); what the channel still prints follows."""
        channel = self._streams.get(msg.get("stream"))
        if channel is None:
            return
        try:
            channel.shutdown_write()
        except (OSError, EOFError, AttributeError):
            _close_quietly(channel)

    def _stream_close(self, msg_id: Any, msg: dict) -> None:
        channel = self._streams.pop(msg.get("stream"), None)
        if channel is not None:
            _close_quietly(channel)


def _drain_channel(channel: Any) -> tuple:
    """(stdout bytes, stderr bytes, ended) of a non-blocking paramiko channel."""
    out, err = b"", b""
    while channel.recv_ready():
        out += channel.recv(65536)
    while channel.recv_stderr_ready():
        err += channel.recv_stderr(65536)
    ended = not out and not err and (channel.eof_received or channel.closed)
    return out, err, ended


def _close_quietly(thing: Any) -> None:
    try:
        thing.close()
    except Exception:  # noqa: BLE001 - closing what may already be broken
        pass


def _summary(bound: dict) -> str:
    """The call's arguments for the log: secrets and long texts left out."""
    parts = []
    for k, v in bound.items():
        if "password" in k and v is not None:
            v = "***"
        elif isinstance(v, str) and len(v) > 40:
            v = f"<{len(v)} characters>"
        elif isinstance(v, list) and len(v) > 8:
            v = f"<{len(v)} items>"
        parts.append(f"{k}={v!r}")
    return ", ".join(parts)


class ManagerService:
    """Serves an ``OrchestratorAPI`` to menus over a Unix socket (see the module docstring)."""

    def __init__(self, api: Any, socket_path: str, *, socket_mode: int = 0o666,
                 socket_group: Optional[str] = None, allowed_group: Optional[str] = None,
                 throttle: Optional[LoginThrottle] = None):
        self.api = api
        self.socket_path = socket_path
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self.allowed_gid = grp.getgrnam(allowed_group).gr_gid if allowed_group else None
        self.throttle = throttle or LoginThrottle()
        self._sessions: set = set()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._listener: Optional[socket.socket] = None
        self._stopping = threading.Event()

    # --- the socket ---------------------------------------------------------------------

    def bind(self) -> None:
        """Make the socket (refusing to start beside another running service)."""
        folder = os.path.dirname(os.path.abspath(self.socket_path))
        os.makedirs(folder, mode=0o755, exist_ok=True)
        if os.path.exists(self.socket_path):
            if _answers(self.socket_path):
                raise RuntimeError(f"another manager service already answers on {self.socket_path}")
            if not stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                raise RuntimeError(f"{self.socket_path} exists and is not a socket: refusing to replace it")
            os.unlink(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # nobody may connect before the mode below is set
        try:
            sock.bind(self.socket_path)
        finally:
            os.umask(old)
        if self.socket_group:
            os.chown(self.socket_path, -1, grp.getgrnam(self.socket_group).gr_gid)
        os.chmod(self.socket_path, self.socket_mode)
        sock.listen(128)
        self._listener = sock
        log.info("listening on %s (mode %o)", self.socket_path, self.socket_mode)

    def serve_forever(self) -> None:
        """Accept menus until ``stop()``."""
        if self._listener is None:
            self.bind()
        listener = self._listener
        while not self._stopping.is_set():
            try:
                r, _, _ = select.select([listener], [], [], 0.5)
                if not r:
                    continue
                conn, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        session = Session(self, conn, next(self._numbers))
        why = self._refusal(session.peer)
        if why:
            log.warning("refused a connection (%s): %s", session.peer.describe(), why)
            session.send({"id": None, "ok": False, "error": why})
            _close_quietly(conn)
            return
        with self._lock:
            self._sessions.add(session)
        threading.Thread(target=session.run, name=session.id, daemon=True).start()

    def _refusal(self, peer: Peer) -> str:
        """Why this caller may not connect ("" when it may)."""
        with self._lock:
            total = len(self._sessions)
            mine = sum(s.peer.uid == peer.uid for s in self._sessions)
        if peer.uid is None:
            return "the caller's identity is unknown"
        if total >= MAX_SESSIONS:
            return "too many menus are connected: try again later"
        if mine >= MAX_SESSIONS_PER_UID and peer.uid not in (0, os.geteuid()):  # the operator is not capped
            return f"too many menus of uid {peer.uid} are connected"
        if self.allowed_gid is not None and not _in_group(peer, self.allowed_gid):
            return "this account may not use the manager service (not in its group)"
        return ""

    def forget(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def sessions(self) -> list:
        with self._lock:
            return list(self._sessions)

    def stop(self) -> None:
        """Stop accepting, close every session; running calls go on to their end (or rollback)."""
        self._stopping.set()
        if self._listener is not None:
            _close_quietly(self._listener)
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        for session in self.sessions():
            _close_quietly(session.sock)

    def interrupt_calls(self) -> None:
        """Ctrl-C to every running call (a service asked to stop rolls its deploys back)."""
        for session in self.sessions():
            if session.control is not None:
                session.control.interrupt()

    def running_calls(self) -> int:
        return sum(s.call_id is not None for s in self.sessions())

    # --- what only the service may decide -------------------------------------------------

    def recheck_orphans(self, user: str, given: list) -> list:
        """The orphans a client asks to remove, as found on the hosts now: only those it named."""
        ok, found = self.api.find_orphans(user)
        if not ok:
            return []
        wanted = {(o.get("host"), o.get("kind"), o.get("name")) for o in given}
        return [o for o in found if (o.host, o.kind, o.name) in wanted]


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _in_group(peer: Peer, gid: int) -> bool:
    if peer.uid == 0 or peer.uid == os.geteuid() or peer.gid == gid:
        return True
    try:
        entry = pwd.getpwuid(peer.uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(entry.pw_name, entry.pw_gid)
