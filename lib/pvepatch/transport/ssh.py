"""SSH transport over paramiko, with host keys verified against known_hosts.

This is the one module that imports paramiko.
"""

from __future__ import annotations

import base64
import binascii
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import paramiko

from pvepatch.errors import CommandTimeout, HostKeyError, TransportError
from pvepatch.inventory import SSHSpec
from pvepatch.transport import known_hosts
from pvepatch.transport.command import CommandResult, quote

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts").expanduser()
# An SSH-level keepalive every few seconds: a peer that rebooted answers it with a reset, so a
# dead connection is noticed within seconds, not at the next command's timeout.
KEEPALIVE_INTERVAL = 5
# The TCP connect itself: a host whose network is up answers (or refuses) a SYN in milliseconds;
# waiting the whole connect timeout for one that does not only delays the next attempt.
TCP_CONNECT_TIMEOUT = 5.0


def _key_of(entry: known_hosts.KnownHost) -> paramiko.PKey | None:
    """The key of a known_hosts line, or None when paramiko cannot read it (skipped, as ssh does)."""
    try:
        return paramiko.PKey.from_type_string(entry.key_type, base64.b64decode(entry.key))
    except (paramiko.SSHException, ValueError, TypeError, binascii.Error):
        return None


def _refuse_revoked(host: str, keys: known_hosts.HostKeys, key: paramiko.PKey) -> None:
    revoked = keys.revocation(key.get_name(), key.get_base64())
    if revoked is not None:
        raise HostKeyError(
            host,
            f"host key of {keys.name} ({key.get_name()} {key.fingerprint}) is REVOKED "
            f"(@revoked in {revoked.where}); refusing to connect",
        )


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse hosts that are not in known_hosts (paramiko's own check refuses changed keys)."""

    def __init__(self, host: str, keys: known_hosts.HostKeys, files: Sequence[Path]):
        self.host, self.keys, self.files = host, keys, files

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        _refuse_revoked(self.host, self.keys, key)
        where = ", ".join(str(f) for f in self.files) or "no known_hosts file"
        raise HostKeyError(
            self.host,
            f"host key unknown ({key.get_name()} {key.fingerprint}); not in {where}"
            f"{self.keys.cert_note()}. "
            "Add it to known_hosts (or run once with --accept-new-host-keys)",
        )


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Record unknown host keys in `save_to`, like OpenSSH's StrictHostKeyChecking=accept-new."""

    def __init__(self, host: str, keys: known_hosts.HostKeys, save_to: Path):
        self.host, self.keys, self.save_to = host, keys, save_to

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        _refuse_revoked(self.host, self.keys, key)
        self.save_to.parent.mkdir(parents=True, exist_ok=True)
        with self.save_to.open("a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class SSHTransport:
    """One SSH connection to one host; every command gets a timeout."""

    def __init__(
        self,
        name: str,
        spec: SSHSpec,
        known_hosts: Sequence[Path] = (),
        accept_new: bool = False,
        connect_timeout: float = 15.0,
    ):
        self.host = name
        self.spec = spec
        self.files = [f for f in (DEFAULT_KNOWN_HOSTS, *spec.known_hosts_files, *known_hosts)]
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None
        self.host_key: str | None = None  # set once connect() has verified it

    def _host_keys(self) -> tuple[known_hosts.HostKeys, list[Path]]:
        existing = [f for f in self.files if f.is_file()]
        entries: list[known_hosts.KnownHost] = []
        for f in existing:
            try:
                entries += known_hosts.read(f)
            except OSError as exc:
                raise TransportError(self.host, f"cannot read known_hosts {f}: {exc}") from exc
        name = known_hosts.lookup_name(self.spec.address, self.spec.port)
        return known_hosts.host_keys(entries, name), existing

    def connect(self) -> None:
        """Open the connection, verifying the host key; raise TransportError/HostKeyError."""
        keys, existing = self._host_keys()
        trusted = [k for e in keys.known if (k := _key_of(e)) is not None]
        for attempt in range(2):
            try:
                self._client = self._connect(keys, existing, trusted)
                return
            except paramiko.BadHostKeyException as exc:
                _refuse_revoked(self.host, keys, exc.key)
                same = [k for k in trusted if k == exc.key]
                if not same or attempt:
                    raise HostKeyError(
                        self.host,
                        f"HOST KEY CHANGED for {keys.name}: expected "
                        f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint}, got "
                        f"{exc.key.fingerprint}. Refusing to connect (possible impersonation).",
                    ) from exc
                # known_hosts lists two keys of this type for the host and paramiko keeps one
                # per type: the one presented is listed, so trust exactly that one
                trusted = same

    def _connect(
        self, keys: known_hosts.HostKeys, existing: list[Path], trusted: list[paramiko.PKey]
    ) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        for key in trusted:
            client.get_host_keys().add(keys.name, key.get_name(), key)
        if self.accept_new:
            save_to = known_hosts.accept_new_file(DEFAULT_KNOWN_HOSTS, self.files[1:])
            client.set_missing_host_key_policy(_AcceptNew(self.host, keys, save_to))
        else:
            client.set_missing_host_key_policy(_RejectUnknown(self.host, keys, existing))
        try:
            sock = socket.create_connection(
                (self.spec.address, self.spec.port),
                timeout=min(self.connect_timeout, TCP_CONNECT_TIMEOUT),
            )
        except OSError as exc:
            raise TransportError(self.host, f"SSH connection to {self.spec} failed: {exc}") from exc
        try:
            client.connect(
                self.spec.address,
                port=self.spec.port,
                sock=sock,
                username=self.spec.user,
                key_filename=str(self.spec.key_file) if self.spec.key_file else None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                look_for_keys=self.spec.key_file is None,
                allow_agent=self.spec.key_file is None,
            )
        except (HostKeyError, paramiko.BadHostKeyException):
            client.close()
            raise
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TransportError(
                self.host, f"SSH authentication failed as {self.spec}: {exc}"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise TransportError(self.host, f"SSH connection to {self.spec} failed: {exc}") from exc
        finally:
            if client.get_transport() is None:
                sock.close()
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_INTERVAL)
        key = transport.get_remote_server_key()
        self.host_key = f"{key.get_name()} {key.fingerprint}"
        return client

    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def run(self, command: str, *, timeout: float, mutating: bool) -> CommandResult:
        """Run the finished command line `command`; wait at most `timeout` seconds."""
        text = command
        if self.spec.become and self.spec.user != "root":
            text = quote("sudo -n -- sh -c %s", text)
        if not self.connected:
            self.connect()
        assert self._client is not None
        started = time.monotonic()
        try:
            channel = self._client.get_transport().open_session(timeout=self.connect_timeout)  # type: ignore[union-attr]
            channel.settimeout(1.0)
            channel.exec_command(text)
            out, err = self._drain(channel, text, started + timeout, timeout)
            rc = channel.recv_exit_status()
            channel.close()
        except CommandTimeout:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise TransportError(
                self.host, f"SSH connection lost while running {text!r}: {exc}"
            ) from exc
        return CommandResult(self.host, text, rc, out, err, time.monotonic() - started, mutating)

    def _drain(
        self, channel: paramiko.Channel, text: str, deadline: float, timeout: float
    ) -> tuple[str, str]:
        """Read stdout and stderr until the remote side sent EOF and its exit status."""
        out, err = bytearray(), bytearray()
        while True:
            progressed = False
            if channel.recv_ready():
                out += channel.recv(65536)
                progressed = True
            if channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
                progressed = True
            if progressed:
                continue
            if channel.eof_received and channel.exit_status_ready():
                return out.decode(errors="replace"), err.decode(errors="replace")
            if channel.closed and not channel.exit_status_ready():
                raise TransportError(self.host, f"channel closed without an exit status: {text!r}")
            if time.monotonic() > deadline:
                channel.close()
                raise CommandTimeout(self.host, text, timeout)
            time.sleep(0.01)

    def hold(self, text: str) -> SSHHeld:
        """Start the finished command line `text` and keep it running until closed."""
        return SSHHeld(self, text)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class SSHHeld:
    """A command kept running on its own SSH connection (a down slot's `flock`): it ends when
    closed, and when this process dies (the server sees the connection go and ends it)."""

    def __init__(self, transport: SSHTransport, text: str):
        self.transport = transport
        if transport.spec.become and transport.spec.user != "root":
            text = quote("sudo -n -- sh -c %s", text)
        if not transport.connected:
            transport.connect()
        assert transport._client is not None
        try:
            ssh = transport._client.get_transport()
            assert ssh is not None
            ssh.set_keepalive(5)
            self.channel = ssh.open_session(timeout=transport.connect_timeout)
            self.channel.exec_command(text)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise TransportError(transport.host, f"cannot hold {text[:60]!r}: {exc}") from exc
        self._buffer = b""

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        self.channel.settimeout(0.5)
        while b"\n" not in self._buffer:
            if time.monotonic() > deadline:
                return None
            try:
                chunk = self.channel.recv(4096)
            except TimeoutError:
                continue
            except (paramiko.SSHException, OSError, EOFError):
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def alive(self) -> bool:
        ssh = self.channel.get_transport()
        return (
            not self.channel.closed
            and not self.channel.exit_status_ready()
            and ssh is not None
            and ssh.is_active()
        )

    def close(self) -> None:
        try:
            self.channel.shutdown_write()  # EOF on the command's stdin: it ends, locks released
            self.channel.close()
        except (paramiko.SSHException, OSError, EOFError):
            pass
        self.transport.close()
