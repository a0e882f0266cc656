"""remote_executor.py, quoting and config (SPEC §4.12, §4.13, §5)."""
from __future__ import annotations

import logging
import os
import re
import shlex
import socket
import stat
import subprocess
import time

import paramiko
import pytest
from uhelpers import lab_config, make_api, ok

import remote_executor
from hosts.hostcmd import CommandResult, HostCommand, chain, home_path, join, q, shell_path
from qcow_manager import overlay_delete
from remote_executor import LOG_ACTOR, RemoteExecutor, configure_logging
from store.config import ClusterConfig

NASTY = ["plain", "with space", "it's", 'dq"x', "$(touch /tmp/pwned)", "`id`", "a;b", "a&&b",
         "x|y", "back\\slash", "new\nline", "*", "~", "-n", "", "tab\tx", "é"]


# --- quoting ----------------------------------------------------------------------

@pytest.mark.parametrize("arg", NASTY)
def test_q_round_trips_through_a_real_shell(arg):
    out = subprocess.run(["sh", "-c", "printf %s " + q(arg)], capture_output=True, text=True, check=True)
    assert out.stdout == arg


def test_join_and_chain():
    assert join(["echo", "a b", "c"]) == "echo 'a b' c"
    assert shlex.split(join(["x", "it's", "$y"])) == ["x", "it's", "$y"]
    assert chain("a", "", "b") == "a && b"


def test_home_path():
    assert home_path("~/vm_images/x", "/home/u/") == "/home/u/vm_images/x"
    assert home_path("~", "/home/u") == "/home/u"
    assert home_path("/abs/~/x", "/home/u") == "/abs/~/x"


def test_render_with_sudo():
    ex = RemoteExecutor(lab_config())
    text = ex.render(HostCommand("h", "echo 'hi' && id"))
    assert text == "sudo -n timeout -k 2 57 sh -c 'echo '\"'\"'hi'\"'\"' && id'"
    assert shlex.split(text) == ["sudo", "-n", "timeout", "-k", "2", "57", "sh", "-c", "echo 'hi' && id"]
    assert ex.render(HostCommand("h", "id", sudo=False)) == "id"


def test_render_without_sudo_when_config_says_so():
    cfg = lab_config()
    cfg["ssh"] = dict(cfg["ssh"], sudo=False)
    ex = RemoteExecutor(cfg)
    assert ex.render(HostCommand("h", "echo 'hi' && id")) == "timeout -k 2 57 sh -c 'echo '\"'\"'hi'\"'\"' && id'"
    assert ex.render(HostCommand("h", "id", sudo=False, timeout=5)) == "id"


def test_sudo_wrapped_script_runs_literally(tmp_path):
    # the rendered text, run by a real shell with "sudo" replaced by a stub, gives the script back
    ex = RemoteExecutor(lab_config())
    script = "printf '%s|' \"$0\" 'it'\"'\"'s' '$(x)'"
    text = ex.render(HostCommand("h", script))
    words = shlex.split(text)
    out = subprocess.run(words[2:], capture_output=True, text=True, check=True)
    assert out.stdout == "sh|it's|$(x)|"


@pytest.mark.parametrize("name", ["vm images", "a'b", "$(touch x)", "semi;colon", "ü"])
def test_shell_path_keeps_home_and_quotes_the_rest(tmp_path, name):
    home = tmp_path / "home"
    (home / "vm_images").mkdir(parents=True)
    path = f"~/vm_images/{name}_img.qcow2"
    out = subprocess.run(["sh", "-c", "printf %s " + shell_path(path)], capture_output=True, text=True,
                         check=True, env={"HOME": str(home), "PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert out.stdout == f"{home}/vm_images/{name}_img.qcow2"
    assert not (tmp_path / "x").exists()


def test_overlay_delete_of_odd_path_removes_only_that_file(tmp_path):
    home = tmp_path / "home"
    images = home / "vm_images"
    images.mkdir(parents=True)
    target = images / "odd name's_img.qcow2"
    neighbour = images / "odd_img.qcow2"
    target.write_text("x")
    neighbour.write_text("y")
    (images / "odd name's_img.qcow2.owner").write_text("cloud-repositorio vm 1001\n")
    (images / "odd_img.qcow2.owner").write_text("cloud-repositorio vm 1001\n")
    cmd = overlay_delete("h", "~/vm_images/odd name's_img.qcow2", 1001)
    assert cmd.sudo is False
    subprocess.run(["sh", "-c", cmd.script], check=True,
                   env={"HOME": str(home), "PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert not target.exists()
    assert neighbour.exists()


# --- names with shell metacharacters never reach a host ------------------------

@pytest.mark.parametrize("bad", ["x; rm -rf /", "$(reboot)", "`id`", "a b", "a'b", "a|b", "a&b",
                                 "../etc", "a>b", "-rf", "x" * 40])
def test_bad_slice_name_refused_without_any_command(tmp_path, bad):
    api, db, ex = make_api(tmp_path)
    res = api.create_slice("admin", bad)
    assert res[0] is False
    assert res[1].startswith("Invalid slice name: ")
    assert ex.calls == [] and ex.puts == []
    assert db.all_slices() == {}


@pytest.mark.parametrize("bad", ["x; rm -rf /", "$(reboot)", "`id`", "a b", "a'b", "vm\nx", "-rf", "x" * 33])
def test_bad_vm_name_refused_without_any_command(tmp_path, bad):
    api, db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s1"))["slice_id"]
    res = api.add_vm_to_slice("admin", sid, bad, "cirros", 1)
    assert res[0] is False
    assert res[1].startswith("Invalid VM name: ")
    assert ex.calls == [] and ex.puts == []
    assert db.get_slice(sid)["vms"] == []
    assert db.get_user("admin")["used_vms"] == 0


def test_bad_flavor_and_interface_count_send_nothing(tmp_path):
    api, _db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s1"))["slice_id"]
    assert api.add_vm_to_slice("admin", sid, "vm1", "cirros; id", 1) == (False, "Invalid flavor")
    res = api.add_vm_to_slice("admin", sid, "vm1", "cirros", "1; id")
    assert res == (False, "Number of data interfaces must be a number")
    res = api.add_vm_to_slice("admin", sid, "vm1", "cirros", 99)
    assert res == (False, "Number of data interfaces must be between 0 and 8")
    assert ex.calls == []


# --- CommandResult --------------------------------------------------------------

def test_command_result_messages():
    assert CommandResult("h", "s", 0).ok is True
    assert CommandResult("h", "s", 0).message() == "ok"
    assert CommandResult("h", "s", 1).message() == "exit status 1"
    r = CommandResult("h", "s", 2, stdout="out", stderr="first\nCould not open disk\n")
    assert r.ok is False
    assert r.message() == "exit status 2: Could not open disk"
    assert CommandResult("h", "s", 3, stdout="only stdout\n").message() == "exit status 3: only stdout"
    e = CommandResult("h", "s", -1, error="cannot connect to h:22: refused")
    assert e.ok is False and e.message() == "cannot connect to h:22: refused"
    assert CommandResult("h", "s", 0, error="x").ok is False


# --- config defaults --------------------------------------------------------------

def test_config_defaults_are_the_original_cluster():
    c = ClusterConfig.from_dict(None)
    assert c.workers == ["10.0.10.1", "10.0.10.2", "10.0.10.3"]
    assert c.network_node == "10.0.10.3"
    assert c.ssh.user == "ubuntu"
    assert c.ssh.key_file == os.path.expanduser("~/.ssh/id_rsa")
    assert c.ssh.known_hosts == os.path.expanduser("~/.ssh/known_hosts")
    assert c.ssh.accept_new_host_keys is False
    assert c.ssh.sudo is True
    assert c.bridge == "br-int"
    assert c.worker_image_dir == "~/vm_images"
    assert c.flavor_images == {}
    assert c.qemu_accel == "kvm"
    assert c.internet == {"vlan": 400, "cidr": "10.60.7.0/24", "gateway": "10.60.7.1", "uplink": "ens3"}
    assert c.internet_vlan == 400
    assert c.copy_timeout == 60
    assert c.hosts == ["10.0.10.1", "10.0.10.2", "10.0.10.3"]


def test_config_file_partial_override(tmp_path):
    p = tmp_path / "cluster.yaml"
    p.write_text("workers: [a, b]\nnetwork_node: n\nssh: {user: bob}\nqemu_accel: kvm:tcg\nlab: {x: 1}\n")
    c = ClusterConfig.load(str(p))
    assert c.workers == ["a", "b"] and c.network_node == "n"
    assert c.ssh.user == "bob" and c.ssh.sudo is True and c.ssh.accept_new_host_keys is False
    assert c.qemu_accel == "kvm:tcg"
    assert c.raw["lab"] == {"x": 1}
    assert c.hosts == ["a", "b", "n"]


@pytest.mark.parametrize("text", ["qemu_accel: xen\n", "workers: []\n", "- a\n- b\n", "ssh: {port: abc}\n"])
def test_config_errors(tmp_path, text):
    from store.config import ConfigError
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError):
        ClusterConfig.load(str(p))


# --- SSH: host keys, connect failures ------------------------------------------------

class _RecordingClient:
    instances: list = []
    connect_error = None
    offered_key = None  # a host key known_hosts lacks: connect() asks the policy about it, as paramiko does

    def __init__(self):
        self.policies = []
        self.loaded = []
        self.saved = []
        _RecordingClient.instances.append(self)

    def load_host_keys(self, path):
        self.loaded.append(path)

    def set_missing_host_key_policy(self, policy):
        self.policies.append(policy)

    def connect(self, host, **kw):
        self.connect_kw = kw
        if _RecordingClient.offered_key is not None:
            self.policies[-1].missing_host_key(self, host, _RecordingClient.offered_key)
        if _RecordingClient.connect_error is not None:
            raise _RecordingClient.connect_error

    def save_host_keys(self, path):
        self.saved.append(path)

    def get_transport(self):
        class T:
            def set_keepalive(self, n):
                pass

            def is_active(self):
                return True
        return T()

    def close(self):
        pass


class _FakeSock:
    def setsockopt(self, *a):
        pass

    def close(self):
        pass


@pytest.fixture
def recording_paramiko(monkeypatch):
    _RecordingClient.instances = []
    _RecordingClient.connect_error = None
    _RecordingClient.offered_key = None
    monkeypatch.setattr(paramiko, "SSHClient", _RecordingClient)
    monkeypatch.setattr(remote_executor.socket, "create_connection", lambda *a, **k: _FakeSock())
    return _RecordingClient


def _ed25519_public_key():
    return paramiko.Ed25519Key(data=bytes.fromhex(
        "0000000b7373682d65643235353139000000200c55f8fcc54b5a6e6bb7b6e8b3f6d5a2f0b4bd0a1e4b3e2f8d9c1a2b3c4d5e6f"))


def _ssh_config(tmp_path, accept):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    paramiko.ECDSAKey.generate().write_private_key_file(str(tmp_path / "id"))
    cfg = lab_config()
    cfg["ssh"] = {"key_file": str(tmp_path / "id"), "known_hosts": str(kh), "accept_new_host_keys": accept}
    return cfg


def test_reject_policy_when_not_accepting_new_host_keys(tmp_path, recording_paramiko):
    ex = RemoteExecutor(_ssh_config(tmp_path, False))
    ex._client("10.9.0.11")
    client = recording_paramiko.instances[-1]
    assert client.loaded == [str(tmp_path / "known_hosts")]
    assert len(client.policies) == 1 and isinstance(client.policies[0], paramiko.RejectPolicy)
    assert client.saved == []
    kw = client.connect_kw
    assert kw["allow_agent"] is False and kw["look_for_keys"] is False
    assert kw["pkey"].get_base64() == paramiko.PKey.from_path(str(tmp_path / "id")).get_base64()
    assert kw["timeout"] == 10 and kw["username"] == "ubuntu"


def test_new_host_keys_appended_only_when_configured(tmp_path, recording_paramiko):
    ex = RemoteExecutor(_ssh_config(tmp_path, True))
    (tmp_path / "known_hosts").write_text("@cert-authority *.lab ssh-ed25519 AAAAC3Nz\n")
    ex._client("10.9.0.11")
    client = recording_paramiko.instances[-1]
    policy = client.policies[0]
    assert isinstance(policy, paramiko.MissingHostKeyPolicy)
    assert not isinstance(policy, (paramiko.RejectPolicy, paramiko.AutoAddPolicy))
    assert client.saved == []  # never rewrites the whole file
    key = _ed25519_public_key()

    class Keys(dict):
        def add(self, host, kind, k):
            self[host] = (kind, k)

    class Client:
        keys = Keys()

        def get_host_keys(self):
            return self.keys

    policy.missing_host_key(Client(), "10.9.0.11", key)
    lines = (tmp_path / "known_hosts").read_text().splitlines()
    assert lines[0] == "@cert-authority *.lab ssh-ed25519 AAAAC3Nz"      # kept as it was
    assert lines[1] == f"10.9.0.11 ssh-ed25519 {key.get_base64()}"


def test_connection_reused_per_host(tmp_path, recording_paramiko):
    ex = RemoteExecutor(_ssh_config(tmp_path, False))
    a = ex._client("10.9.0.11")
    b = ex._client("10.9.0.11")
    assert a is b
    ex._client("10.9.0.12")
    assert len(recording_paramiko.instances) == 2


def test_unknown_host_key_refused_gives_clear_result(tmp_path, recording_paramiko):
    recording_paramiko.offered_key = _ed25519_public_key()
    ex = RemoteExecutor(_ssh_config(tmp_path, False))
    res = ex.run(HostCommand("10.9.0.11", "id"))
    assert res.ok is False
    assert res.message() == (f"host 10.9.0.11 is not in {tmp_path / 'known_hosts'}: refusing an unknown "
                             "host key (set ssh.accept_new_host_keys to trust it)")
    assert (tmp_path / "known_hosts").read_text() == ""       # nothing recorded


def test_reject_policy_raises_its_own_error_whatever_paramikos_wording(tmp_path):
    from remote_executor import UnknownHostKeyError, _reject_unknown_host_key
    policy = _reject_unknown_host_key(paramiko, "10.9.0.11", "/kh")
    assert isinstance(policy, paramiko.RejectPolicy)
    with pytest.raises(UnknownHostKeyError) as e:
        policy.missing_host_key(None, "[10.9.0.11]:2222", _ed25519_public_key())
    assert str(e.value) == ("host 10.9.0.11 is not in /kh: refusing an unknown host key "
                            "(set ssh.accept_new_host_keys to trust it)")


def test_missing_known_hosts_refused(tmp_path):
    cfg = lab_config()
    cfg["ssh"] = {"key_file": str(tmp_path / "id"), "known_hosts": str(tmp_path / "nope")}
    res = RemoteExecutor(cfg).run(HostCommand("10.9.0.11", "id"))
    assert res.ok is False
    assert "known_hosts file" in res.message() and "not found" in res.message()


def test_connect_failure_is_a_result_not_an_exception(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    cfg = lab_config()
    cfg["ssh"] = {"key_file": str(tmp_path / "id"), "known_hosts": str(kh), "port": port,
                  "connect_timeout": 2}
    ex = RemoteExecutor(cfg)
    res = ex.run(HostCommand("127.0.0.1", "id"))
    assert res.ok is False
    assert res.exit_status == -1
    assert res.message().startswith(f"cannot connect to 127.0.0.1:{port}: ")
    put = ex.put_file("127.0.0.1", __file__, "~/x")
    assert put.ok is False and "copy to 127.0.0.1 failed" in put.message()
    assert ex.stats.failures == 2


def test_down_host_in_fake_gives_failed_result():
    from fakes import FakeExecutor
    ex = FakeExecutor()
    ex.down_hosts.add("10.9.0.12")
    res = ex.run(HostCommand("10.9.0.12", "id"))
    assert res.ok is False and "No route to host" in res.message()


def test_dry_run_records_plan_and_sends_nothing():
    ex = RemoteExecutor(lab_config(), dry_run=True)
    res = ex.run(HostCommand("10.9.0.11", "id", step="s"))
    assert res.ok
    assert [c.script for c in ex.plan] == ["id"]
    assert ex.home("10.9.0.11") == "~"


class _BrokenChannel:
    def settimeout(self, t):
        pass

    def exec_command(self, text):
        raise paramiko.SSHException("Channel closed.")

    def get_transport(self):
        return None

    def close(self):
        pass


def test_channel_failure_during_command_is_a_result(tmp_path, monkeypatch):
    ex = RemoteExecutor(lab_config())
    monkeypatch.setattr(ex, "_open_channel", lambda host: _BrokenChannel())
    res = ex.run(HostCommand("10.9.0.11", "id"))
    assert res.ok is False
    assert "Channel closed" in res.message()


# --- logging --------------------------------------------------------------------------

@pytest.fixture
def root_logging():
    root, chatty = logging.getLogger(), logging.getLogger("paramiko")
    saved = root.handlers[:], root.level, chatty.level
    yield root
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    chatty.setLevel(saved[2])


def test_configure_logging_writes_to_the_file_only(tmp_path, root_logging):
    root_logging.addHandler(logging.StreamHandler())       # an earlier configuration, e.g. the screen
    path = tmp_path / "logs" / "cloud.log"
    configure_logging(str(path))
    configure_logging(str(path))                           # again: still one handler
    assert [type(h) for h in root_logging.handlers] == [logging.FileHandler]
    assert root_logging.handlers[0].baseFilename == str(path)
    assert root_logging.level == logging.INFO
    assert logging.getLogger("paramiko").level == logging.WARNING
    logging.getLogger("cloudrepo.remote").info("host=%s connected", "h1")
    logging.getLogger("paramiko.transport").info("kex chatter")
    logging.getLogger("paramiko.transport").warning("Oops")
    root_logging.handlers[0].flush()
    lines = path.read_text(encoding="utf-8").splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert len(lines) == 2, lines
    assert re.fullmatch(stamp + r" INFO cloudrepo\.remote \[MainThread\] \[-\] host=h1 connected", lines[0])
    assert re.fullmatch(stamp + r" WARNING paramiko\.transport \[MainThread\] \[-\] Oops", lines[1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600   # hosts, steps and users: only its owner reads it
    token = LOG_ACTOR.set("session=s1 user=ana uid=1001 pid=7")
    try:
        logging.getLogger("cloudrepo.service").info("ana calls deploy_slice")
    finally:
        LOG_ACTOR.reset(token)
    root_logging.handlers[0].flush()
    assert "[session=s1 user=ana uid=1001 pid=7] ana calls deploy_slice" in path.read_text().splitlines()[-1]



def test_a_command_line_too_long_for_a_host_is_refused_before_sending():
    # sshd gives the whole command line to the login shell as one argument; Linux refuses one over
    # 128 KiB and the connection is reset with no word of why (1,654 orphans once made one).
    from fakes import FakeExecutor
    ex = FakeExecutor()
    host = ex.config.network_node
    res = ex.run(HostCommand(host, "true\n" * 30_000, step="remove 1654 orphan(s)"))
    assert not res.ok
    assert "remove 1654 orphan(s)" in res.message() and "nothing was sent" in res.message()
    assert ex.calls == []
    assert ex.run(HostCommand(host, "true\n" * 1_000, step="short")).ok


def test_a_batch_script_gives_each_member_its_own_results():
    from hosts.batch import batch_script, split_results

    texts = ["printf 'a\\nb'; exit 3", "printf '%s' \"it's\" >&2", "head -c 3 /dev/zero", "true"]
    proc = subprocess.run(["sh", "-c", batch_script(texts)], capture_output=True, timeout=30)
    assert proc.returncode == 0
    assert split_results(proc.stdout, 4) == [(3, b"a\nb", b""), (0, b"", b"it's"), (0, b"\0\0\0", b""), (0, b"", b"")]
    with pytest.raises(ValueError):
        split_results(proc.stdout[:-2] if proc.stdout.endswith(b"") else b"", 5)
    with pytest.raises(ValueError):
        split_results(b"@@CRB 0 0 10 0\nshort", 1)


def test_a_command_taken_into_another_threads_batch_waits_for_it_without_spinning():
    # A deploy whose script went into another thread's batch used to loop on a free session slot
    # (acquire, nothing left to take, release) until that batch ended: in a class burst it was most
    # of the service's CPU.  Two commands queue while no slot is free; then slots free up: one thread
    # takes both into one batch, the other's command is in it and must just wait, a slot free or not.
    import threading

    from hosts.batch import HostBatcher

    class CountingSlot(threading.BoundedSemaphore):
        def __init__(self, n):
            super().__init__(n)
            self.acquired = 0

        def acquire(self, *a, **kw):
            got = super().acquire(*a, **kw)
            self.acquired += got
            return got

    def until(cond):
        deadline = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < deadline
            time.sleep(0.005)

    release, running = threading.Event(), []
    slot = CountingSlot(2)

    def run_raw(text, _timeout):
        running.append(text)
        release.wait(10)
        return 0, b"@@CRB 0 0 1 0\nb@@CRB 1 0 1 0\nc", b""

    batcher = HostBatcher(slot, run_raw)
    out = {}
    slot.acquire()
    slot.acquire()                               # no slot free: both commands queue
    threads = [threading.Thread(target=lambda n=n: out.setdefault(n, batcher.run(f"printf {n}", 5))) for n in "bc"]
    for t in threads:
        t.start()
    until(lambda: len(batcher.queue) == 2)
    slot.release()
    slot.release()
    until(lambda: len(running) == 1)
    assert "@@CRB" in running[0]                 # one batch of both
    before = slot.acquired
    time.sleep(0.3)                              # a slot is free; the other command is in the batch
    spins = slot.acquired - before
    release.set()
    for t in threads:
        t.join(10)
    assert out == {"b": (0, b"b", b""), "c": (0, b"c", b"")}
    assert spins == 0, f"{spins} slot acquisitions while its command was in another batch"
