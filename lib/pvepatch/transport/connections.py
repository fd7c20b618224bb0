"""One SSH connection per host per run, shared by every stage, guarded and recorded."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pvepatch.errors import TransportError
from pvepatch.inventory import SSHSpec, Target
from pvepatch.transport.command import (
    CommandResult,
    Connection,
    GuardedTransport,
    Held,
    ReadOnlyGuard,
    quote,
)

TransportFactory = Callable[[str, SSHSpec], Connection]
BannerProbe = Callable[[str, int, float], "str | None"]  # (address, port, timeout) -> banner
BANNER_TIMEOUT = 1.0


class RecordingTransport:
    """A view of a Transport that appends every command sent to `sink` (the VM's audit record),
    with its result, or marked as never answered when the connection failed under it."""

    def __init__(self, inner: GuardedTransport, sink: list[CommandResult]):
        self.inner = inner
        self.sink = sink
        self.host = inner.host
        self.host_key = inner.host_key

    def run(
        self, command: str, *args: object, timeout: float = 60.0, mutating: bool
    ) -> CommandResult:
        sent, started = time.time(), time.monotonic()
        try:
            result = self.inner.run(command, *args, timeout=timeout, mutating=mutating)
        except TransportError as exc:
            text, took = quote(command, *args), time.monotonic() - started
            self.sink.append(CommandResult.no_answer(self.host, text, exc, took, mutating, sent))
            raise
        self.sink.append(result)
        return result

    def close(self) -> None:
        self.inner.close()


def ssh_factory(
    known_hosts: Sequence[Path], accept_new: bool, connect_timeout: float
) -> TransportFactory:
    """Build paramiko transports (imported here so unit tests with fakes never need it)."""
    from pvepatch.transport.ssh import SSHTransport

    def make(name: str, spec: SSHSpec) -> Connection:
        transport = SSHTransport(name, spec, known_hosts, accept_new, connect_timeout)
        transport.connect()
        return transport

    return make


class Connections:
    """Opens connections on first use and keeps them for the run.

    A host that failed to connect keeps failing fast with the same error until `forget()`,
    so ten checks against a dead host don't each wait for a connect timeout.
    """

    def __init__(
        self, factory: TransportFactory, guard: ReadOnlyGuard, banner: BannerProbe | None = None
    ):
        self.factory = factory
        self.guard = guard
        self._banner = banner  # None: no probe (fakes), every host counts as answering
        self._open: dict[str, GuardedTransport] = {}
        self._failed: dict[str, TransportError] = {}

    def get(self, name: str, spec: SSHSpec) -> GuardedTransport:
        if name in self._failed:
            raise self._failed[name]
        if name not in self._open:
            try:
                self._open[name] = GuardedTransport(self.factory(name, spec), self.guard)
            except TransportError as exc:
                self._failed[name] = exc
                raise
        return self._open[name]

    def guest(self, target: Target) -> GuardedTransport:
        return self.get(target.name, target.ssh)

    def proxmox(self, target: Target) -> GuardedTransport:
        return self.get(target.proxmox.name, target.proxmox.ssh)

    def probe(self, name: str, spec: SSHSpec) -> GuardedTransport:
        """A fresh connection attempt (used while waiting for a host to come back)."""
        self.forget(name)
        return self.get(name, spec)

    def banner(self, name: str, spec: SSHSpec, timeout: float = BANNER_TIMEOUT) -> bool:
        """Whether the host's sshd answers with its identification line now: a TCP connect and
        one line read, no authentication, no host key (use `probe()` for the verified
        connection once this says yes). Always True when the run has no banner probe."""
        if self._banner is None:
            return True
        return self._banner(spec.address, spec.port, timeout) is not None

    def forget(self, name: str) -> None:
        transport = self._open.pop(name, None)
        self._failed.pop(name, None)
        if transport is not None:
            try:
                transport.close()
            except Exception:  # noqa: BLE001 - closing a dead connection must not hide the cause
                pass

    def hold(self, name: str, spec: SSHSpec, command: str, *args: object) -> Held:
        """Start `command` on its own new connection to the host and keep it running (a down
        slot): closing the held command closes that connection, nothing else does."""
        text = quote(command, *args)
        self.guard.admit(name, text, True)
        connection = self.factory(name, spec)
        hold = getattr(connection, "hold", None)
        if hold is None:
            connection.close()
            raise TransportError(name, "this connection cannot hold a command open")
        held: Held = hold(text)
        return held

    def close_all(self) -> None:
        for name in list(self._open):
            self.forget(name)
