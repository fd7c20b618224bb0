"""SSH transport over paramiko, with host keys verified against known_hosts.

This is the one module that imports paramiko.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import paramiko

from pvepatch.errors import CommandTimeout, HostKeyError, TransportError
from pvepatch.inventory import SSHSpec
from pvepatch.transport.command import CommandResult, quote

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts").expanduser()


def _key_host(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse hosts that are not in known_hosts (paramiko's own check refuses changed keys)."""

    def __init__(self, files: Sequence[Path]):
        self.files = files

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        where = ", ".join(str(f) for f in self.files) or "no known_hosts file"
        raise HostKeyError(
            hostname,
            f"host key unknown ({key.get_name()} {key.fingerprint}); not in {where}. "
            "Add it to known_hosts (or run once with --accept-new-host-keys)",
        )


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Record unknown host keys in `save_to`, like OpenSSH's StrictHostKeyChecking=accept-new."""

    def __init__(self, save_to: Path):
        self.save_to = save_to

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
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

    def connect(self) -> None:
        """Open the connection, verifying the host key; raise TransportError/HostKeyError."""
        client = paramiko.SSHClient()
        existing = [f for f in self.files if f.is_file()]
        for f in existing:
            try:
                client.get_host_keys().load(str(f))
            except (OSError, paramiko.SSHException) as exc:
                raise TransportError(self.host, f"cannot read known_hosts {f}: {exc}") from exc
        if self.accept_new:
            save_to = (list(self.files[1:]) or [DEFAULT_KNOWN_HOSTS])[-1]
            client.set_missing_host_key_policy(_AcceptNew(save_to))
        else:
            client.set_missing_host_key_policy(_RejectUnknown(existing))
        try:
            client.connect(
                self.spec.address,
                port=self.spec.port,
                username=self.spec.user,
                key_filename=str(self.spec.key_file) if self.spec.key_file else None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                look_for_keys=self.spec.key_file is None,
                allow_agent=self.spec.key_file is None,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                self.host,
                f"HOST KEY CHANGED for {_key_host(self.spec.address, self.spec.port)}: "
                f"expected {exc.expected_key.get_name()} {exc.expected_key.fingerprint}, "
                f"got {exc.key.fingerprint}. Refusing to connect (possible impersonation).",
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TransportError(
                self.host, f"SSH authentication failed as {self.spec}: {exc}"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise TransportError(self.host, f"SSH connection to {self.spec} failed: {exc}") from exc
        self._client = client
        key = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        self.host_key = f"{key.get_name()} {key.fingerprint}"

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

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
