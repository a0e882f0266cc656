"""The executor's real SSH path (``_client``, ``_exec``) against an in-process SSH server.

The server (tests/sshserver.py) scripts what a real sshd does only now and
then: the exit status before the last output, megabytes on both streams, a
command that never ends, a connection cut mid-command, a refused key, an
unknown or changed host key.
"""
from __future__ import annotations

import os
import threading
import time

import paramiko
import pytest
from hangguard import hang_guard, hang_limit
from sshserver import SSHServer, answer, drop_connection, flood, hang, pattern, send_reply
from uhelpers import lab_config

from hosts.hostcmd import HostCommand
from hosts.runner import Runner
from remote_executor import MAX_SESSIONS_PER_HOST, RemoteExecutor

pytestmark = hang_limit(120)
_hang_guard = hang_guard(120)

HOST = "127.0.0.1"


@pytest.fixture
def server(tmp_path):
    with SSHServer(tmp_path) as s:
        yield s



def run_all(ex, cmds: list) -> list:
    """Every command in 16 threads through the product's runner; results in order."""
    return Runner(ex, max_parallel=16).run(cmds, stop_on_failure=False).results

def executor_for(server: SSHServer, **ssh) -> RemoteExecutor:
    return RemoteExecutor(lab_config(ssh=server.ssh_settings(**ssh)))


@pytest.fixture
def ex(server):
    executor = executor_for(server)
    yield executor
    executor.close()


def command(script: str, timeout: float = None) -> HostCommand:
    return HostCommand(HOST, script, sudo=False, timeout=timeout)


def token_of(script: str) -> str:
    """The WORD of ``printf %s WORD``."""
    return script.split(" ", 2)[2]


# --- reading a command's answer -----------------------------------------------------

def test_check_reads_the_home_directory_over_ssh(server, ex):
    res = ex.check(HOST)
    assert res.ok, res.message()
    assert res.stdout == server.home
    assert ex.home(HOST) == server.home
    assert server.commands == ['printf %s "$HOME"']


def test_a_real_shell_command_gives_its_status_and_both_streams(ex):
    res = ex.run(command("printf out; printf 'err\\n' >&2; exit 3"))
    assert (res.exit_status, res.stdout, res.stderr) == (3, "out", "err\n")
    assert res.ok is False and res.message() == "exit status 3: err"


@pytest.mark.parametrize("status", [0, 1, 255])
def test_output_sent_after_the_exit_status_is_not_lost(server, ex, status):
    # The lost-output race of issue "exit 0, empty stdout": the status comes first, the output 0.1 s later.
    server.handler = answer(lambda cmd: (status, "/home/ubuntu", "a warning\n"),
                            status_first=lambda cmd: True, pause=0.1)
    res = ex.run(command('printf %s "$HOME"'))
    assert (res.exit_status, res.stdout, res.stderr) == (status, "/home/ubuntu", "a warning\n")


def test_home_is_right_even_when_the_status_comes_first(server, ex):
    server.handler = answer(lambda cmd: (0, "/home/ubuntu", ""), status_first=lambda cmd: True, pause=0.1)
    res = ex.check(HOST)
    assert res.ok, res.message()
    assert ex.home(HOST) == "/home/ubuntu"


def test_thousands_of_parallel_commands_on_one_connection_lose_nothing(server, ex):
    # A deploy's pattern: many short commands from several threads on one connection.  Every
    # other answer sends its exit status first; every answer differs, so crossed channels show too.
    def reply(cmd):
        word = token_of(cmd)
        return int(word) % 4, f"/home/u{word}", f"e{word}"

    assert ex.check(HOST).ok
    server.handler = answer(reply, status_first=lambda cmd: int(token_of(cmd)) % 2 == 1, pause=0.0)
    cmds = [command(f"printf %s {i}") for i in range(3000)]
    fds_before = len(os.listdir("/proc/self/fd"))
    results = run_all(ex, cmds)  # 16 threads, at most MAX_SESSIONS_PER_HOST at once
    assert len(os.listdir("/proc/self/fd")) < fds_before + 20     # no descriptor kept per command
    wrong = [(i, r.exit_status, r.stdout, r.stderr, r.error) for i, r in enumerate(results)
             if (r.exit_status, r.stdout, r.stderr, r.error) != (i % 4, f"/home/u{i}", f"e{i}", "")]
    assert wrong == []
    assert server.connections == 1 and ex.stats.connections == 1
    assert ex.stats.commands == 3001
    assert 1 < server.peak_sessions <= MAX_SESSIONS_PER_HOST


@pytest.mark.parametrize("out_mib,err_mib", [(8, 4), (4, 8)])
def test_megabytes_on_both_streams_at_once_never_deadlock(server, ex, out_mib, err_mib):
    # The server blocks on the channel window as a command blocks on a full pipe: a client that
    # drained only one stream would never see the end (and this test would time out).
    server.handler = flood(out_mib << 20, err_mib << 20)
    res = ex.run(command("flood", timeout=60))
    assert res.ok, res.message()
    assert res.stdout.encode() == pattern(out_mib << 20, b"out")
    assert res.stderr.encode() == pattern(err_mib << 20, b"err")


def test_a_session_closed_without_exit_status_keeps_its_output_and_the_connection(server, ex):
    # what a command killed by a signal looks like (sshd sends exit-signal, which paramiko ignores)
    def killed(chan, cmd):
        chan.sendall(b"half")
        chan.shutdown_write()
        chan.close()

    server.handler = killed
    res = ex.run(command("killed"))
    assert (res.exit_status, res.stdout, res.ok) == (-1, "half", False)
    server.handler = answer(lambda cmd: (0, "next", ""))
    assert ex.run(command("next")).stdout == "next"
    assert server.connections == 1


# --- timeouts and broken connections ---------------------------------------------------

def test_a_command_that_never_answers_times_out_and_the_connection_stays(server, ex):
    server.handler = hang(server)
    res = ex.run(command("sleep forever", timeout=1))
    assert res.ok is False and res.exit_status == -1
    assert res.message() == f"timed out after 1 s on {HOST}"
    server.handler = answer(lambda cmd: (0, "alive", ""))
    assert ex.run(command("echo")).stdout == "alive"
    assert server.connections == 1


def test_exit_status_that_never_comes_times_out(server, ex):
    def eof_without_status(chan, cmd):
        chan.sendall(b"out")
        chan.shutdown_write()
        while not chan.closed and not server.stopped.wait(0.05):
            pass

    server.handler = eof_without_status
    res = ex.run(command("x", timeout=1))
    assert res.message() == f"timed out after 1 s on {HOST}"


def test_a_connection_cut_mid_command_is_an_error_and_the_next_command_reconnects(server, ex):
    assert ex.check(HOST).ok
    server.handler = drop_connection(b"partial")
    res = ex.run(command("work"))
    assert res.ok is False and res.exit_status == -1
    assert res.message() == f"SSH connection to {HOST} was lost during the command"
    server.handler = answer(lambda cmd: (0, "again", ""))
    res = ex.run(command("again"))
    assert res.ok and res.stdout == "again"
    assert server.connections == 2 and ex.stats.connections == 2


def test_a_connection_cut_between_commands_reconnects(server, ex):
    assert ex.check(HOST).ok
    server.drop_connections()   # whether or not the client noticed yet, the next command reconnects
    res = ex.check(HOST)
    assert res.ok, res.message()
    assert server.connections == 2


class HeldCommands:
    """A handler whose commands wait until released; counts those running."""

    def __init__(self):
        self.release = threading.Event()
        self.running = 0
        self._lock = threading.Lock()

    def __call__(self, chan, cmd):
        with self._lock:
            self.running += 1
        self.release.wait(30)
        send_reply(chan, 0, token_of(cmd).encode())

    def wait_running(self, n: int) -> None:
        deadline = time.monotonic() + 30
        while self.running < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.running == n


def run_in_background(ex, cmds) -> tuple:
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(run_all(ex, cmds)))
    runner.start()
    return runner, results


def test_parallel_commands_cut_together_all_fail_cleanly_then_work(server, ex):
    held = server.handler = HeldCommands()
    runner, results = run_in_background(ex, [command(f"printf %s {i}") for i in range(6)])
    held.wait_running(6)
    server.drop_connections()
    runner.join(60)
    held.release.set()
    assert [r.message() for r in results] == [f"SSH connection to {HOST} was lost during the command"] * 6
    server.handler = answer(lambda cmd: (0, "ok", ""))
    assert ex.run(command("x")).ok
    assert server.connections == 2


# --- sessions per connection ---------------------------------------------------------

def test_no_more_than_max_sessions_at_once_on_one_connection(server, ex):
    held = server.handler = HeldCommands()
    runner, results = run_in_background(ex, [command(f"printf %s {i}") for i in range(40)])   # 16 threads
    held.wait_running(MAX_SESSIONS_PER_HOST)
    time.sleep(0.3)      # room for a session too many to open
    peak_while_held = server.peak_sessions
    held.release.set()
    runner.join(60)
    assert peak_while_held == MAX_SESSIONS_PER_HOST
    assert [r.stdout for r in results] == [str(i) for i in range(40)]


def test_sessions_refused_by_the_host_are_retried_on_the_same_connection(server, ex):
    def slow(chan, cmd):
        time.sleep(0.05)
        send_reply(chan, 0, token_of(cmd).encode())

    server.handler = slow
    server.max_sessions = 3
    results = run_all(ex, [command(f"printf %s {i}") for i in range(12)])
    assert [r.message() for r in results if not r.ok] == []
    assert [r.stdout for r in results] == [str(i) for i in range(12)]
    assert server.refused_sessions > 0
    assert server.connections == 1


def test_a_host_refusing_every_session_gives_a_clear_result(server):
    server.max_sessions = 0
    ex = executor_for(server, connect_timeout=1)
    res = ex.run(command("x"))
    assert res.message() == f"{HOST} refused a new SSH session: Connect failed"
    assert server.connections == 1 and ex.stats.connections == 1   # the connection was not the problem
    ex.close()


# --- host keys and authentication -------------------------------------------------------

def test_a_refused_key_is_a_clear_result(server, ex):
    server.authorized_key = paramiko.ECDSAKey.generate()
    res = ex.run(command("x"))
    assert res.ok is False
    assert res.message() == f"SSH to tester@{HOST} failed: the host refused the key {server.key_file}"
    assert server.commands == []


def test_an_unreadable_key_file_is_a_clear_result(server, tmp_path):
    bad = tmp_path / "not_a_key"
    bad.write_text("hello\n")
    ex = executor_for(server, key_file=str(bad))
    res = ex.run(command("x"))
    assert res.ok is False and res.message().startswith(f"cannot use the SSH key {bad}: ")


def test_an_unknown_host_key_is_refused(server, ex):
    server.write_known_hosts()   # empty
    res = ex.run(command("x"))
    assert res.message() == (f"host {HOST} is not in {server.known_hosts}: refusing an unknown host key "
                             "(set ssh.accept_new_host_keys to trust it)")
    assert server.commands == []
    with open(server.known_hosts) as f:
        assert f.read() == ""


def test_an_unknown_host_key_is_recorded_when_accepting_new_keys(server):
    server.write_known_hosts()
    ex = executor_for(server, accept_new_host_keys=True)
    assert ex.check(HOST).ok
    ex.close()
    with open(server.known_hosts) as f:
        assert f.read() == f"[{HOST}]:{server.port} ecdsa-sha2-nistp256 {server.host_key.get_base64()}\n"
    strict = executor_for(server)      # the recorded key is now known
    assert strict.check(HOST).ok
    strict.close()


@pytest.mark.parametrize("accept_new", [False, True])
def test_a_changed_host_key_is_always_refused(server, accept_new):
    server.write_known_hosts(paramiko.ECDSAKey.generate())
    ex = executor_for(server, accept_new_host_keys=accept_new)
    res = ex.run(command("x"))
    assert res.message() == (f"host key of {HOST} does not match {server.known_hosts} "
                             "(possible man-in-the-middle): refusing to connect")
    assert server.commands == []
