"""SSH host-key verification with a real SSH server on 127.0.0.1 (paramiko's server side)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import paramiko
import pytest
from pvepatch.errors import CommandTimeout, HostKeyError
from pvepatch.inventory import SSHSpec
from pvepatch.transport.ssh import SSHTransport


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey):
        self.client_key = client_key
        self.event = threading.Event()
        self.command = b""

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL if key == self.client_key else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        self.command = command
        self.event.set()
        return True


class SSHD:
    """A one-connection-at-a-time SSH server that runs `echo`, `false` and `sleep`."""

    def __init__(self, host_key: paramiko.PKey, client_key: paramiko.PKey):
        self.host_key, self.client_key = host_key, client_key
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.acceptor = threading.Thread(target=self._serve, daemon=True)
        self.acceptor.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        t = paramiko.Transport(conn)
        t.add_server_key(self.host_key)
        server = _Server(self.client_key)
        try:
            t.start_server(server=server)
            while True:
                chan = t.accept(10)
                if chan is None:
                    return
                server.event.wait(5)
                server.event.clear()
                cmd = server.command.decode()
                if cmd.startswith("sleep"):
                    threading.Event().wait(float(cmd.split()[1]))
                if cmd.startswith("echo "):
                    chan.sendall(cmd[5:].encode() + b"\n")
                if cmd.startswith("big "):
                    for _ in range(int(cmd.split()[1]) // 1000):
                        chan.sendall(b"x" * 999 + b"\n")
                        chan.sendall_stderr(b"e")
                chan.sendall_stderr(b"")
                chan.send_exit_status(1 if cmd == "false" else 0)
                chan.close()
        except Exception:  # noqa: BLE001 - a test server; the client side asserts
            pass

    def close(self):
        # Stop the accept loop before the descriptor is freed: a bare close() leaves _serve()
        # able to call accept() on the fd *number* after the next test's server reused it, and
        # then this server (with its own host key) answers the next test's connection.
        # shutdown() wakes a blocked accept(); the fd is released only once the loop has ended.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.acceptor.join(5)
        assert not self.acceptor.is_alive(), "test SSH server did not stop accepting"
        self.sock.close()


@pytest.fixture
def keys(tmp_path):
    host = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "host"))
    client_path = _keygen(tmp_path / "client")
    return host, paramiko.Ed25519Key.from_private_key_file(client_path), Path(client_path)


def _keygen(path: Path) -> str:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)


@pytest.fixture
def sshd(keys):
    server = SSHD(keys[0], keys[1])
    yield server
    server.close()


def transport(sshd, keys, known_hosts: Path, accept_new=False) -> SSHTransport:
    spec = SSHSpec("127.0.0.1", sshd.port, "root", keys[2], known_hosts_files=(known_hosts,))
    return SSHTransport("vm", spec, accept_new=accept_new, connect_timeout=5)


@pytest.fixture(autouse=True)
def no_user_known_hosts(monkeypatch, tmp_path):
    monkeypatch.setattr("pvepatch.transport.ssh.DEFAULT_KNOWN_HOSTS", tmp_path / "user_known_hosts")


def test_known_key_connects_and_runs(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {keys[0].get_base64()}\n")
    t = transport(sshd, keys, kh)
    result = t.run("echo 'hello world'", timeout=30, mutating=False)
    assert t.host_key == f"ssh-ed25519 {keys[0].fingerprint}"  # what the proofs record
    assert (result.rc, result.stdout, result.command) == (
        0,
        "'hello world'\n",
        "echo 'hello world'",
    )
    assert t.run("false", timeout=30, mutating=False).rc == 1
    t.close()


def test_unknown_key_is_refused(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with pytest.raises(HostKeyError, match="host key unknown"):
        transport(sshd, keys, kh).connect()


def test_changed_key_is_refused_even_with_accept_new(sshd, keys, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "other"))
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other.get_base64()}\n")
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        transport(sshd, keys, kh, accept_new=True).connect()


def test_accept_new_records_the_key(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    t = transport(sshd, keys, kh, accept_new=True)
    assert t.run("echo ok", timeout=30, mutating=False).stdout == "ok\n"
    assert kh.read_text() == f"[127.0.0.1]:{sshd.port} ssh-ed25519 {keys[0].get_base64()}\n"
    t.close()
    transport(sshd, keys, kh).connect()  # now known: strict mode accepts it


def test_command_timeout(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {keys[0].get_base64()}\n")
    with pytest.raises(CommandTimeout, match="command timed out after 1 s: sleep 5"):
        transport(sshd, keys, kh).run("sleep 5", timeout=1, mutating=False)


def test_large_output_arrives_whole(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {keys[0].get_base64()}\n")
    result = transport(sshd, keys, kh).run("big 3000000", timeout=30, mutating=False)
    assert len(result.stdout) == 3_000_000 and len(result.stderr) == 3000


def _line(sshd, key: paramiko.PKey, names: str | None = None, marker: str = "") -> str:
    names = names or f"[127.0.0.1]:{sshd.port}"
    return f"{marker + ' ' if marker else ''}{names} {key.get_name()} {key.get_base64()}\n"


def test_hashed_known_hosts_entry_connects(sshd, keys, tmp_path):
    import subprocess

    kh = tmp_path / "known_hosts"
    kh.write_text(_line(sshd, keys[0]))
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert kh.read_text().startswith("|1|")
    t = transport(sshd, keys, kh)
    assert t.run("echo hashed", timeout=30, mutating=False).stdout == "hashed\n"
    t.close()


def test_wildcard_port_pattern_connects_and_negation_excludes(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(_line(sshd, keys[0], "[127.0.0.1]:*"))
    transport(sshd, keys, kh).connect()
    kh.write_text(_line(sshd, keys[0], f"[127.0.0.1]:*,![127.0.0.1]:{sshd.port}"))
    with pytest.raises(HostKeyError, match="host key unknown"):
        transport(sshd, keys, kh).connect()


def test_revoked_key_is_refused_naming_host_and_file(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(_line(sshd, keys[0]) + "# rotated\n" + _line(sshd, keys[0], "*", "@revoked"))
    with pytest.raises(HostKeyError) as excinfo:
        transport(sshd, keys, kh).connect()
    assert str(excinfo.value) == (
        f"vm: host key of [127.0.0.1]:{sshd.port} (ssh-ed25519 {keys[0].fingerprint}) is REVOKED "
        f"(@revoked in {kh} line 3); refusing to connect"
    )


def test_revoked_key_is_never_recorded_by_accept_new(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    revoked = _line(sshd, keys[0], "other.example", "@revoked")
    kh.write_text(revoked)
    with pytest.raises(HostKeyError, match="is REVOKED"):
        transport(sshd, keys, kh, accept_new=True).connect()
    assert kh.read_text() == revoked


def test_cert_authority_line_is_skipped_and_named(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    ca = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "ca"))
    kh.write_text(_line(sshd, ca, "*", "@cert-authority"))
    with pytest.raises(HostKeyError) as excinfo:
        transport(sshd, keys, kh).connect()
    assert "host key unknown" in str(excinfo.value)
    assert (
        f"{kh} line 1 trusts a @cert-authority for this host, but host certificates are not "
        "supported: add the host's own key" in str(excinfo.value)
    )
    kh.write_text(_line(sshd, ca, "*", "@cert-authority") + _line(sshd, keys[0]))
    transport(sshd, keys, kh).connect()


@pytest.mark.parametrize("server_key_first", [True, False])
def test_second_key_of_the_same_type_is_accepted(sshd, keys, tmp_path, server_key_first):
    old = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "old"))
    kh = tmp_path / "known_hosts"
    lines = [_line(sshd, keys[0]), _line(sshd, old)]
    kh.write_text("".join(lines if server_key_first else lines[::-1]))
    t = transport(sshd, keys, kh)
    assert t.run("echo two", timeout=30, mutating=False).stdout == "two\n"
    t.close()


def test_malformed_lines_are_skipped(sshd, keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(
        "garbage\n@unknown-marker x y z\nhost ssh-ed25519 !!notbase64\n"
        "host no-such-type AAAA\n" + _line(sshd, keys[0])
    )
    transport(sshd, keys, kh).connect()


def test_every_connection_sends_keepalives(sshd, keys, tmp_path, monkeypatch):
    intervals: list[int] = []
    real = paramiko.Transport.set_keepalive
    monkeypatch.setattr(
        paramiko.Transport,
        "set_keepalive",
        lambda self, interval: (intervals.append(interval), real(self, interval))[1],
    )
    kh = tmp_path / "known_hosts"
    kh.write_text(_line(sshd, keys[0]))
    t = transport(sshd, keys, kh)
    t.connect()
    assert intervals and 0 < intervals[0] <= 10
    t.close()


def test_connect_to_a_closed_port_fails_at_once(keys, tmp_path):
    import time

    from pvepatch.errors import TransportError

    port = _closed_port()
    spec = SSHSpec("127.0.0.1", port, "root", keys[2], known_hosts_files=(tmp_path / "kh",))
    started = time.monotonic()
    with pytest.raises(TransportError, match="failed"):
        SSHTransport("vm", spec, connect_timeout=15).connect()
    assert time.monotonic() - started < 2


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
