"""The executor against a real OpenSSH sshd that the tests start (root, 127.0.0.1, a free port).

The daemon keeps OpenSSH's defaults where the cluster's hosts do (MaxSessions
10 in particular); its commands run as root with HOME set to an empty
temporary directory (tests/realsshd.py).  Skipped, with the reason, when not
root or without /usr/sbin/sshd.
"""
from __future__ import annotations

import threading
import time

import pytest
from hangguard import hang_guard, hang_limit
from realsshd import RealSSHD, unavailable_reason
from sshserver import pattern
from uhelpers import lab_config

from hosts.hostcmd import HostCommand
from hosts.runner import Runner
from remote_executor import RemoteExecutor

pytestmark = hang_limit(300)
_hang_guard = hang_guard(300)

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    daemon = RealSSHD(tmp_path_factory.mktemp("sshd"))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def ex(sshd):
    executor = RemoteExecutor(lab_config(ssh=sshd.ssh_settings()))
    yield executor
    executor.close()


def command(script: str, timeout: float = None, sudo: bool = False) -> HostCommand:
    return HostCommand(HOST, script, sudo=sudo, timeout=timeout)


def test_home_is_the_neutral_temporary_one(sshd, ex):
    res = ex.check(HOST)
    assert res.ok, res.message()
    assert res.stdout == sshd.home
    # root's own dotfiles (pyenv init) were not read
    assert ex.run(command('printf %s "${PYENV_ROOT:-none}"')).stdout == "none"


def test_thousands_of_real_commands_in_parallel_lose_nothing(sshd, ex):
    # 16 threads (the runner) on one connection to an sshd with the default MaxSessions (10);
    # every command answers differently on both streams, with its own exit status.
    n = 2400
    cmds = [command(f'printf "%s/{i}" "$HOME"; printf e{i} >&2; exit {i % 4}') for i in range(n)]
    results = Runner(ex, max_parallel=16).run(cmds, stop_on_failure=False).results
    wrong = [(i, r.exit_status, r.stdout, r.stderr, r.error) for i, r in enumerate(results)
             if (r.exit_status, r.stdout, r.stderr, r.error) != (i % 4, f"{sshd.home}/{i}", f"e{i}", "")]
    assert wrong == []
    assert ex.stats.connections == 1 and ex.stats.commands == n


def test_eight_mib_on_stdout_and_four_on_stderr_at_once(ex):
    out_size, err_size = 8 << 20, 4 << 20
    script = (f"seq -f 'err %09.0f' 0 {err_size // 14} | head -c {err_size} >&2 & "
              f"seq -f 'out %09.0f' 0 {out_size // 14} | head -c {out_size}; wait")
    res = ex.run(command(script, timeout=120))
    assert res.ok, res.message()
    assert res.stdout.encode() == pattern(out_size, b"out")
    assert res.stderr.encode() == pattern(err_size, b"err")


def test_a_command_past_its_timeout_gives_a_timeout_and_the_connection_stays(ex):
    res = ex.run(command("sleep 30", timeout=1))
    assert res.message() == f"timed out after 1 s on {HOST}"
    res = ex.run(command("printf after"))
    assert res.stdout == "after"
    assert ex.stats.connections == 1


def test_a_root_script_is_stopped_by_the_hosts_own_timeout(sshd):
    # render(): root scripts run under `timeout` on the host, 3 s before the manager gives up
    ex = RemoteExecutor(lab_config(ssh=sshd.ssh_settings(sudo=True)))
    assert ex.run(command("id -u", sudo=True)).stdout == "0\n"
    res = ex.run(command("sleep 30", timeout=5, sudo=True))
    assert res.exit_status == 124 and res.error == ""     # timeout(1)'s status, not the manager's timeout
    ex.close()


def test_a_killed_connection_is_an_error_and_the_next_command_reconnects(sshd, ex):
    assert ex.check(HOST).ok
    results = []
    runner = threading.Thread(target=lambda: results.append(ex.run(command("printf started; sleep 47"))))
    runner.start()
    for _ in range(400):          # until the command runs on the host
        if "sleep 47" in sshd.command_lines():
            break
        time.sleep(0.05)
    assert sshd.kill_connections() > 0
    runner.join(60)
    assert results[0].ok is False
    assert results[0].message() == f"SSH connection to {HOST} was lost during the command"
    res = ex.check(HOST)
    assert res.ok, res.message()
    assert ex.stats.connections == 2


def test_unknown_and_changed_host_keys_are_refused_by_a_real_server(sshd, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    ex = RemoteExecutor(lab_config(ssh=sshd.ssh_settings(known_hosts=str(empty))))
    assert ex.check(HOST).message() == (f"host {HOST} is not in {empty}: refusing an unknown host key "
                                         "(set ssh.accept_new_host_keys to trust it)")
    other = tmp_path / "other_known_hosts"
    other.write_text(f"[{HOST}]:{sshd.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIAxV+PzFS1pua7e26LP21aLwtL0KHkvj4vjZwaKzxNXm\n")
    ex = RemoteExecutor(lab_config(ssh=sshd.ssh_settings(known_hosts=str(other))))
    assert ex.check(HOST).message() == (f"host key of {HOST} does not match {other} "
                                        "(possible man-in-the-middle): refusing to connect")



def test_a_secret_on_stdin_reaches_the_script_and_no_log(sshd, ex, caplog):
    secret = "s3cretPW"
    with caplog.at_level("INFO", logger="cloudrepo.remote"):
        res = ex.run(HostCommand(HOST, 'IFS= read -r pw; printf "%s" "$pw" | wc -c; printf "%s" "$pw" | md5sum',
                                 sudo=False, stdin=secret))
    assert res.ok, res.message()
    import hashlib
    assert res.stdout.split()[0] == "8" and hashlib.md5(secret.encode()).hexdigest() in res.stdout
    assert secret not in caplog.text and "read -r pw" in caplog.text


def test_an_interactive_channel_runs_without_the_timeout_wrapper(sshd, ex):
    cmd = HostCommand(HOST, "IFS= read -r line; echo got:$line", sudo=False)
    chan = ex.open_interactive(cmd)
    try:
        chan.sendall(b"hello\n")
        deadline = time.monotonic() + 10
        out = b""
        while b"got:hello" not in out and time.monotonic() < deadline:
            if chan.recv_ready():
                out += chan.recv(100)
            time.sleep(0.01)
        assert b"got:hello" in out
    finally:
        chan.close()
    assert "timeout" not in ex.render_interactive(HostCommand(HOST, "x", sudo=True))


def test_commands_waiting_for_a_host_together_run_as_one_session_and_keep_their_own_results(sshd):
    # The network node of a class deploying at once: 32 threads, 8 sessions; whatever waits for a
    # session when one frees up goes in one script (hosts.batch).  Every command still gets exactly
    # its own output on both streams (binary and quotes included) and its own exit status.
    ex = RemoteExecutor(lab_config(ssh=sshd.ssh_settings()), batch_hosts={HOST})
    try:
        n = 600
        cmds = [command(f"""printf '%s' "it's {i}"; printf '\\001\\377' ; printf 'e{i}\\n' >&2; sleep 0.0{i % 5}; """
                        f"""exit {i % 7}""", sudo=(i % 3 == 0)) for i in range(n)]
        results = Runner(ex, max_parallel=32).run(cmds, stop_on_failure=False).results
        wrong = [(i, r.exit_status, r.stdout, r.stderr, r.error) for i, r in enumerate(results)
                 if (r.exit_status, r.stdout, r.stderr) != (i % 7, f"it's {i}\x01\ufffd", f"e{i}\n")]
        assert wrong == []
        assert ex.batches() > 0 and ex.stats.connections == 1
        # alone (no contention), a command runs as it always did: no batch script around it
        before = ex.batches()
        assert ex.run(command("printf alone")).stdout == "alone" and ex.batches() == before
    finally:
        ex.close()


def test_a_member_of_a_batch_is_stopped_at_its_own_time_limit(sshd):
    ex = RemoteExecutor(lab_config(ssh=sshd.ssh_settings()), batch_hosts={HOST})
    try:
        cmds = [command("sleep 30", timeout=6, sudo=True)] + [command(f"printf {i}", sudo=True) for i in range(20)]
        t0 = time.monotonic()
        results = Runner(ex, max_parallel=32).run(cmds, stop_on_failure=False).results
        assert time.monotonic() - t0 < 25
        assert results[0].exit_status == 124 or not results[0].ok
        assert [r.stdout for r in results[1:]] == [str(i) for i in range(20)]
    finally:
        ex.close()
