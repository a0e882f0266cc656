"""The manager service and its protocol (issue 18): sessions, binding, peer credentials, streams, faults.

A real ``ManagerService`` on a Unix socket in a temporary folder, serving
the real ``OrchestratorAPI`` over the recording ``FakeExecutor``; clients are
the menu's ``RemoteAPI`` and, to forge requests, raw sockets speaking JSON
lines as an attacker would.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from fakes import FakeExecutor
from menu_driver import REPO

from database import Database
from deployment_api import DeploymentAPI
from hosts.runner import CALL_CONTROL, CallControl, Cancel, interrupts_cancel
from orchestrator_api import OrchestratorAPI
from service import methods, protocol
from service.client import RemoteAPI, ServiceGone
from service.peercred import Peer, peer_of
from service.server import LoginThrottle, ManagerService


class Raw:
    """A client that writes whatever it likes on the socket."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(str(path))
        self.reader = protocol.LineReader(self.sock)

    def send(self, msg) -> None:
        self.sock.sendall((msg if isinstance(msg, bytes) else json.dumps(msg).encode()) + b"\n")

    def ask(self, msg, skip_events: bool = True) -> dict:
        self.send(msg)
        while True:
            reply = self.reader.read()
            if skip_events and "event" in reply:
                continue
            return reply

    def login(self, user: str, password: str) -> dict:
        return self.ask({"id": 1, "op": "login", "username": user, "password": password})

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def served(tmp_path):
    """(service, api, executor, socket path) with the shipped accounts, a no-wait login throttle."""
    db_path = tmp_path / "database.yaml"
    shutil.copyfile(REPO / "database.yaml", db_path)
    ex = FakeExecutor()
    api = OrchestratorAPI(Database(str(db_path)), DeploymentAPI(ex), ex.config)
    for user in ("admin", "student"):
        assert api.authenticate(user, user)[0]
    assert api.create_user("admin", "ana", "ana-secret", 6)[0]
    assert api.create_user("admin", "ben", "ben-secret", 6)[0]
    path = tmp_path / "run" / "manager.sock"
    service = ManagerService(api, str(path), throttle=LoginThrottle(free=1000))
    service.bind()
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    yield service, api, ex, path
    service.stop()
    thread.join(5)


def two_vm_slice(client: RemoteAPI) -> int:
    ok, s = client.create_slice("-", "lab")
    assert ok, s
    sid = s["slice_id"]
    assert client.add_vm_to_slice("-", sid, "a", "cirros", 1, True)[0]
    assert client.add_vm_to_slice("-", sid, "b", "cirros", 1)[0]
    vms = client.get_slice("-", sid)[1]["vms"]
    assert client.create_link("-", sid, vms[0]["vm_id"], "eth1", vms[1]["vm_id"], "eth1")[0]
    return sid


def ana_with_a_slow_deploy(path: Path, ex: FakeExecutor) -> tuple:
    """(ana's client, her 2-VM slice, started, release): VM starts wait for ``release`` once ``started``."""
    client = RemoteAPI(str(path))
    assert client.authenticate("ana", "ana-secret")[0]
    sid = two_vm_slice(client)
    started, release = threading.Event(), threading.Event()

    def slow_start(cmd):
        started.set()
        release.wait(10)
    ex.hooks["start_vm"] = slow_start
    return client, sid, started, release


# --- the protocol --------------------------------------------------------------------------

def test_payloads_round_trip_with_their_types():
    from hosts.resources import Key
    from usecases.guest_access import NicView, VMView
    from usecases.reconcile import Orphan

    vm = VMView(1001, "a", "10.0.0.1", "running", "cirros", "pw", "10.0.0.1:5901",
                [NicView("eth0", "52:54:00:00:00:00", 400, "10.60.7.101", None)])
    key = Key("tap", "10.0.0.1", 1001, None, "tap1001_0")
    value = (True, {1000: [vm], "raw": b"\x00\xff\x1b", "keys": {key}, "orphans": [Orphan("h", "tap", "t", key)]})
    line = protocol.dumps({"result": protocol.encode(value)})
    assert b"\n" not in line[:-1] and line.isascii()
    back = protocol.decode(protocol.parse(line[:-1])["result"])
    assert back == [True, {1000: [vm], "raw": b"\x00\xff\x1b", "keys": {key},
                           "orphans": [Orphan("h", "tap", "t", key)]}]


def test_only_the_products_own_types_are_rebuilt():
    for name in ("os.system", "subprocess.Popen", "builtins.dict", "pathlib.Path"):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode({"__dc__": name, "fields": {}})


def test_a_message_longer_than_the_limit_is_refused(tmp_path):
    a, b = socket.socketpair()
    reader = protocol.LineReader(b, limit=1000)
    a.sendall(b"{" + b" " * 2000)
    with pytest.raises(protocol.ProtocolError):
        reader.read()
    a.close()
    b.close()


def test_the_method_table_checks_every_argument():
    m = methods.METHODS["create_slice"]
    assert methods.bind(m, ["lab"], {}) == {"slice_name": "lab"}
    for args, kwargs in ([[], {}], [["a", "b", "c"], {}], [["a"], {"username": "admin"}],
                         [[{"x": 1}], {}], [[True], {}], [["a"], {"slice_name": "b"}]):
        with pytest.raises(methods.BadCall):
            methods.bind(m, args, kwargs)
    roster = methods.bind(methods.METHODS["import_roster"], ["x", "csv"], {})
    assert roster["password_file"] is None        # the service never writes a file a client names
    with pytest.raises(methods.BadCall):
        methods.bind(methods.METHODS["import_roster"], ["x", "csv"], {"password_file": "/etc/passwd"})
    with pytest.raises(methods.BadCall):
        methods.bind(methods.METHODS["access_details"], [[1000, {"a": 1}]], {})


def test_every_verb_is_a_method_of_the_facade_and_takes_the_user_first():
    import inspect

    for name, m in methods.METHODS.items():
        fn = getattr(OrchestratorAPI, name)
        params = list(inspect.signature(fn).parameters)
        assert params[1] in ("username", "admin"), name
        for p in m.params:
            assert p.name in params, (name, p.name)
        assert ("progress" in params) == m.progress, name


# --- peer credentials ----------------------------------------------------------------------

def test_peer_credentials_are_the_kernels():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert peer_of(a) == Peer(os.getpid(), os.getuid(), os.getgid())
    finally:
        a.close()
        b.close()


def test_unknown_credentials_are_never_taken_for_an_account(monkeypatch):
    class Fake:
        def getsockopt(self, *_):
            return struct.pack("=iII", 0, 0xFFFFFFFF, 65534)
    assert peer_of(Fake()) == Peer(None, None, None)

    class Short:
        def getsockopt(self, *_):
            return b"\x00\x00"
    assert peer_of(Short()) == Peer(None, None, None)


# --- sessions ------------------------------------------------------------------------------

def test_a_call_before_login_is_refused(served):
    _service, api, _ex, path = served
    raw = Raw(path)
    reply = raw.ask({"id": 5, "op": "call", "method": "list_slices"})
    assert reply == {"id": 5, "ok": False, "error": "log in first"}
    reply = raw.ask({"id": 6, "op": "call", "method": "create_slice", "args": ["x"]})
    assert reply["ok"] is False and api.db.load()["slices"] == {}


def test_the_session_acts_as_its_user_whatever_the_client_sends(served):
    _service, api, _ex, path = served
    raw = Raw(path)
    assert raw.login("ana", "ana-secret")["result"][0] is True
    forged = [
        {"id": 2, "op": "call", "method": "create_slice", "args": ["x"], "user": "admin"},
        {"id": 3, "op": "call", "method": "create_slice", "args": ["x"], "kwargs": {"username": "ben"}},
        {"id": 4, "op": "call", "method": "create_slice", "args": ["ben", "x"]},          # one argument too many
        {"id": 5, "op": "call", "method": "create_user", "args": ["eve", "secret1", 6, "admin"]},
        {"id": 6, "op": "call", "method": "authenticate", "args": ["admin", "admin"]},
        {"id": 7, "op": "call", "method": "__init__"},
        {"id": 8, "op": "call", "method": "db"},
    ]
    replies = [raw.ask(m) for m in forged]
    assert [r["ok"] for r in replies] == [False, False, False, True, False, False, False], replies
    assert replies[3]["result"] == [False, "Only an admin can do this"]
    made = raw.ask({"id": 9, "op": "call", "method": "create_slice", "args": ["mine"]})
    assert made["ok"] and made["result"][0] is True
    slices = api.db.load()["slices"]
    assert [s["owner"] for s in slices.values()] == ["ana"] and "eve" not in api.db.load()["users"]


def test_a_session_id_from_another_client_is_refused(served):
    _service, api, _ex, path = served
    ana = Raw(path)
    hello = ana.ask({"id": 1, "op": "hello", "version": 1})
    assert ana.login("ana", "ana-secret")["result"][0] is True
    sid = hello["result"]["session"]
    ben = Raw(path)
    reply = ben.ask({"id": 2, "op": "call", "method": "list_slices", "session": sid})
    assert reply["ok"] is False and "never names a user or a session" in reply["error"]
    reply = ben.ask({"id": 3, "op": "call", "method": "list_slices"})
    assert reply == {"id": 3, "ok": False, "error": "log in first"}
    # a replayed login message of ana's, with a wrong password, gets ben nothing
    assert ben.login("ana", "guess")["result"][0] is False
    assert ben.ask({"id": 4, "op": "call", "method": "get_quota"})["ok"] is False


def test_logout_unbinds_the_session(served):
    _service, _api, _ex, path = served
    client = RemoteAPI(str(path))
    assert client.authenticate("ana", "ana-secret")[0]
    assert client.get_quota("-")[0]
    assert client.logout()[0]
    assert client.get_quota("-") == (False, "The manager service refused: log in first")


def test_failed_logins_slow_down_per_user_and_per_uid():
    now = [0.0]
    t = LoginThrottle(free=2, cap=30, forget=900, clock=lambda: now[0])
    assert t.delay("ana", 1000) == 0
    for _ in range(2):
        t.failed("ana", 1000)
    assert t.delay("ana", 1000) == 1.0
    for _ in range(10):
        t.failed("ana", 1000)
    assert t.delay("ana", 1000) == 30.0
    assert t.delay("ben", 1000) == 30.0          # the same caller trying another name
    assert t.delay("ana", 2000) == 30.0          # another caller trying the same name
    assert t.delay("ben", 2000) == 0
    now[0] += 1000
    assert t.delay("ana", 1000) == 0             # forgotten after a quiet while
    t.failed("ana", 1000)
    t.failed("ana", 1000)
    t.succeeded("ana", 1000)
    assert t.delay("ana", 1000) == 0


def test_the_service_waits_before_answering_a_repeated_failure(served):
    service, _api, _ex, path = served
    service.throttle = LoginThrottle(free=1, cap=0.4)
    raw = Raw(path)
    assert raw.login("ana", "bad")["result"][0] is False
    t0 = time.monotonic()
    assert raw.login("ana", "bad")["result"][0] is False
    assert time.monotonic() - t0 >= 0.35


def test_the_log_names_the_user_and_the_callers_uid_on_every_change(served, tmp_path, caplog):
    _service, _api, ex, path = served
    caplog.set_level(logging.INFO)
    from remote_executor import _ActorFilter

    handler = logging.FileHandler(tmp_path / "svc.log")
    handler.addFilter(_ActorFilter())
    handler.setFormatter(logging.Formatter("%(actor)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        client = RemoteAPI(str(path))
        assert client.authenticate("ana", "ana-secret")[0]
        sid = two_vm_slice(client)
        assert client.deploy_slice("-", sid)[0]
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    lines = (tmp_path / "svc.log").read_text().splitlines()
    calls = [ln for ln in lines if " calls " in ln]
    assert len(calls) >= 6
    uid = os.getuid()
    for line in calls:
        assert f"user=ana uid={uid} pid={os.getpid()}" in line, line
    host_lines = [ln for ln in lines if "cloudrepo.remote" in ln and "step=" in ln]
    assert host_lines and all(f"user=ana uid={uid}" in ln for ln in host_lines)


# --- calls ------------------------------------------------------------------------------------

def test_progress_is_streamed_and_the_result_is_the_facades(served):
    _service, api, ex, path = served
    client = RemoteAPI(str(path))
    assert client.authenticate("ana", "ana-secret")[0]
    sid = two_vm_slice(client)
    seen = []
    seen_at = []

    def progress(event):
        seen.append(event)
        seen_at.append(len(ex.commands))

    ok, msg = client.deploy_slice("-", sid, progress=progress)
    assert ok and msg.startswith("Slice deployed successfully"), msg
    assert [e["phase"] for e in seen][:1] == ["connect"] and {"network", "vms"} <= {e["phase"] for e in seen}
    assert seen_at == sorted(seen_at) and seen_at[0] < seen_at[-1]   # as they happened, not all at the end
    ok, details = client.access_details("-", [sid])
    assert ok and [v.name for v in details[sid]] == ["a", "b"] and details[sid][0].password
    assert client.get_slice("-", sid) == api.get_slice("ana", sid)


def test_ctrl_c_in_the_menu_rolls_the_deploy_back_on_the_service(served):
    _service, api, ex, path = served
    client, sid, started, release = ana_with_a_slow_deploy(path, ex)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", client.deploy_slice("-", sid)))
    t.start()
    assert started.wait(10)
    session = next(s for s in _service.sessions() if s.user == "ana")
    client.conn.send({"op": "cancel", "id": session.call_id})
    time.sleep(0.2)
    release.set()
    t.join(20)
    ok, msg = box["r"]
    assert not ok and "interrupted" in msg, msg
    assert api.get_slice("ana", sid)[1]["status"] == "design"
    assert ex.made("vm") == set() and ex.made("vlan") == set()


def test_one_request_at_a_time_per_session(served):
    _service, _api, ex, path = served
    _client, sid, started, release = ana_with_a_slow_deploy(path, ex)
    raw = Raw(path)
    assert raw.login("ana", "ana-secret")["result"][0]
    raw.send({"id": 2, "op": "call", "method": "deploy_slice", "args": [sid]})
    assert started.wait(10)
    reply = raw.ask({"id": 3, "op": "call", "method": "get_quota"})
    assert reply == {"id": 3, "ok": False, "error": "one request at a time: the previous one is still running"}
    release.set()
    assert raw.reader.read()["id"] == 2


def test_a_client_that_vanishes_mid_deploy_leaves_it_all_or_nothing(served):
    _service, api, ex, path = served
    client, sid, started, release = ana_with_a_slow_deploy(path, ex)
    raw = Raw(path)
    assert raw.login("ana", "ana-secret")["result"][0]
    raw.send({"id": 7, "op": "call", "method": "deploy_slice", "args": [sid]})
    assert started.wait(10)
    raw.close()                                   # the menu is gone
    release.set()
    deadline = time.monotonic() + 20
    while api.db.get_slice(sid).get("status") == "deploying" and time.monotonic() < deadline:
        time.sleep(0.05)
    s = api.db.get_slice(sid)
    assert s["status"] == "running" and len(ex.made("vm")) == 2      # all of it ...
    assert client.delete_slice("-", sid)[0] and ex.made("vm") == set()  # ... and it can be deleted


def test_a_stopped_service_is_reported_to_the_menu(served):
    service, _api, _ex, path = served
    client = RemoteAPI(str(path))
    assert client.authenticate("ana", "ana-secret")[0]
    service.stop()
    with pytest.raises(ServiceGone):
        for _ in range(50):
            client.get_quota("-")
            time.sleep(0.05)


def test_garbage_on_the_socket_ends_that_session_only(served):
    _service, _api, _ex, path = served
    good = RemoteAPI(str(path))
    assert good.authenticate("ana", "ana-secret")[0]
    for junk in (b"not json", b"[1, 2]", b"\xff\xfe", b'{"op": 7}'):
        raw = Raw(path)
        raw.send(junk)
        reply = raw.reader.read()
        assert reply["ok"] is False
        raw.close()
    assert good.get_quota("-")[0]


# --- streams -------------------------------------------------------------------------------

class FakeChannel:
    """A worker's console as the service sees it: what the guest prints, what it was sent."""

    def __init__(self):
        self.r, self.w = socket.socketpair()
        self.sent = b""
        self.closed = False
        self.eof_received = False
        self._pending = b""

    def fileno(self):
        return self.r.fileno()

    def settimeout(self, _t):
        self.r.setblocking(False)

    def guest_prints(self, data: bytes):
        self.w.sendall(data)

    def _fill(self):
        try:
            data = self.r.recv(65536)
            if data == b"":
                self.eof_received = True
            self._pending += data
        except BlockingIOError:
            pass

    def recv_ready(self):
        self._fill()
        return bool(self._pending)

    def recv(self, n):
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def recv_stderr_ready(self):
        return False

    def sendall(self, data):
        self.sent += data

    def close(self):
        self.closed = True
        self.w.close()


def test_a_console_is_relayed_both_ways_and_closed_with_the_menu(served, monkeypatch):
    from usecases.guest_access import ConsoleSession, VMView

    _service, api, _ex, path = served
    channel = FakeChannel()

    def open_console(user, slice_id, vm_id):
        assert user == "ana"
        return True, ConsoleSession(VMView(1001, "a", "w1", "running", "cirros", "pw", "w1:5901"), channel,
                                    b"early\r\n")
    monkeypatch.setattr(api, "open_console", open_console)
    client = RemoteAPI(str(path))
    assert client.authenticate("ana", "ana-secret")[0]
    ok, session = client.open_console("-", 1000, 1001)
    assert ok and session.early == b"early\r\n" and session.vm.password == "pw"
    stream = session.channel
    channel.guest_prints(b"login: \x1b[6n")
    deadline = time.monotonic() + 5
    got = b""
    while b"login" not in got and time.monotonic() < deadline:
        if stream.recv_ready():
            got += stream.recv(1000)
        time.sleep(0.01)
    assert got == b"login: \x1b[6n"
    stream.sendall(b"cirros\r")
    deadline = time.monotonic() + 5
    while channel.sent != b"cirros\r" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert channel.sent == b"cirros\r"
    stream.close()
    deadline = time.monotonic() + 5
    while not channel.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert channel.closed


def test_a_vanished_menu_closes_its_console(served, monkeypatch):
    from usecases.guest_access import ConsoleSession, VMView

    _service, api, _ex, path = served
    channel = FakeChannel()
    monkeypatch.setattr(api, "open_console", lambda *a, **kw: (True, ConsoleSession(
        VMView(1001, "a", "w1", "running", "cirros", "pw", "w1:5901"), channel)))
    raw = Raw(path)
    assert raw.login("ana", "ana-secret")["result"][0]
    reply = raw.ask({"id": 2, "op": "call", "method": "open_console", "args": [1000, 1001]})
    assert reply["ok"] and reply["result"][1]["fields"]["channel"] == {"__stream__": 1}
    raw.close()
    deadline = time.monotonic() + 5
    while not channel.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert channel.closed


# --- the call control --------------------------------------------------------------------------

def test_an_interrupt_reaches_every_cancel_of_the_call_even_one_attached_later():
    control = CallControl()
    first, later = Cancel(), Cancel()
    token = CALL_CONTROL.set(control)
    try:
        with interrupts_cancel(first):
            control.interrupt()
            assert first.interrupted
        with interrupts_cancel(later):
            assert later.interrupted
    finally:
        CALL_CONTROL.reset(token)


# --- captures (SPEC §17): a stream that may end before its reply is read; EOF to stop it ---------------

class CaptureChannel(FakeChannel):
    """A capture's channel: tcpdump's lines on stdout, its summary on stderr once it is stopped (EOF)."""

    def __init__(self):
        super().__init__()
        self.shut = False
        self.err = b""

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        data, self.err = self.err[:n], self.err[n:]
        return data

    def shutdown_write(self):
        self.shut = True
        self.err = b"3 packets captured\n"
        self.guest_prints(b"last line\n")
        self.w.close()


def _capture_session(channel):
    from usecases.captures import CaptureSession

    return CaptureSession(channel, 1000, 1001, "a", "eth1", "tap1001_1", "w1", 1, "icmp", 50, 60, "text",
                          1 << 20, b"early\n")


def _read_all(stream, timeout: float = 5) -> tuple:
    out, err, deadline = b"", b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        while stream.recv_ready():
            out += stream.recv(1000)
        while stream.recv_stderr_ready():
            err += stream.recv_stderr(1000)
        if stream.eof_received and not stream.recv_ready():
            break
        time.sleep(0.01)
    return out, err


def test_a_capture_stops_on_eof_from_the_menu_and_its_last_bytes_arrive(served, monkeypatch):
    _service, api, _ex, path = served
    channel = CaptureChannel()
    monkeypatch.setattr(api, "open_capture", lambda user, *a, **kw: (True, _capture_session(channel))
                        if user == "ana" else (False, "wrong user"))
    client = RemoteAPI(str(path))
    assert client.authenticate("ana", "ana-secret")[0]
    ok, session = client.open_capture("-", 1000, "link 1", "icmp", None, None, "text")
    assert ok and session.early == b"early\n" and session.tap == "tap1001_1"
    channel.guest_prints(b"12:00 IP 10.0.0.1 > 10.0.0.2: ICMP echo request\n")
    session.channel.shutdown_write()
    out, err = _read_all(session.channel)
    assert channel.shut and out == b"12:00 IP 10.0.0.1 > 10.0.0.2: ICMP echo request\nlast line\n"
    assert err == b"3 packets captured\n" and session.channel.eof_received
    session.channel.close()


def test_a_capture_that_ends_before_its_reply_is_read_loses_nothing(served, monkeypatch):
    _service, api, _ex, path = served
    channel = CaptureChannel()
    channel.guest_prints(b"one\ntwo\n")
    channel.err = b"2 packets captured\n"
    channel.w.close()                              # it has ended before the service even replies
    monkeypatch.setattr(api, "open_capture", lambda user, *a, **kw: (True, _capture_session(channel)))
    client = RemoteAPI(str(path))
    assert client.authenticate("ana", "ana-secret")[0]
    ok, session = client.open_capture("-", 1000, "link 1")
    out, err = _read_all(session.channel)
    assert (out, err, session.channel.eof_received) == (b"one\ntwo\n", b"2 packets captured\n", True)
    # the same in order: the stream's messages first, the reply that opens it after
    conn = client.conn
    conn._stream_message({"stream": 7, "data": "YQ==", "end": "closed"})
    conn._stream_message({"stream": 1, "data": "Yg=="})       # an old stream's late bytes: dropped
    stream = conn._stream(7)
    assert stream.recv(10) == b"a" and stream.eof_received and conn._early == {}


def test_the_tools_verbs_check_their_arguments(served):
    _service, _api, _ex, path = served
    raw = Raw(path)
    assert raw.login("ana", "ana-secret")["result"][0]
    for method, args in (("open_capture", [1000, ["link", 1]]), ("set_impairment", [1000, 1, {"ms": 5}]),
                         ("clear_impairment", [1000]), ("open_capture", [1000, "link 1", "icmp", True])):
        reply = raw.ask({"id": 2, "op": "call", "method": method, "args": args})
        assert reply["ok"] is False and method in reply["error"], reply
    raw.close()


# --- one service for the class ------------------------------------------------------------------

def test_two_students_deploys_run_at_once_on_the_shared_service(served):
    """Ana's and Ben's deploys are both in their VM phase at the same moment (not one after the other)."""
    _service, api, ex, path = served
    clients = {}
    for user in ("ana", "ben"):
        clients[user] = RemoteAPI(str(path))
        assert clients[user].authenticate(user, f"{user}-secret")[0]
    sids = {user: two_vm_slice(c) for user, c in clients.items()}
    lock, starts, overlapped = threading.Lock(), [], []
    together = threading.Event()

    def start_waits_for_the_other_slice(cmd):
        with lock:
            starts.append(cmd)
            if len(starts) >= 3:    # a slice has 2 VMs: a third start is the other slice's
                together.set()
        overlapped.append(together.wait(5))
    ex.hooks["start_vm"] = start_waits_for_the_other_slice
    results = {}
    threads = [threading.Thread(target=lambda u=u: results.setdefault(u, clients[u].deploy_slice("-", sids[u])))
               for u in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(ok for ok, _m in results.values()), results
    assert len(starts) == 4 and all(overlapped), overlapped
    assert {api.get_slice(u, sids[u])[1]["status"] for u in clients} == {"running"}


def test_a_hand_edit_while_the_service_runs_is_seen_at_the_next_call(served, tmp_path):
    """An instructor raising Ana's quota in database.yaml (an editor's save: a new file renamed over it)
    while her menu is connected: her next call sees it, and her next change keeps it."""
    import yaml

    _service, _api, _ex, path = served
    client = RemoteAPI(str(path))
    assert client.authenticate("ana", "ana-secret")[0]
    db_path = tmp_path / "database.yaml"
    data = yaml.safe_load(db_path.read_text())
    data["users"]["ana"]["quota_vms"] = 9
    edited = tmp_path / "database.yaml.edit"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(edited, db_path)
    ok, quota = client.get_quota("-")
    assert ok and quota["quota_vms"] == 9, quota
    two_vm_slice(client)
    after = yaml.safe_load(db_path.read_text())["users"]["ana"]
    assert after["quota_vms"] == 9 and after["used_vms"] == 2, after
