"""One SSH connection per host per run, shared by every stage, guarded and recorded."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from pvepatch.errors import PvepatchError, TransportError
from pvepatch.inventory import SSHSpec, Target
from pvepatch.transport import batch
from pvepatch.transport.batch import Prefetch
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
    with its result, or marked as never answered when the connection failed under it.

    With a `prefetch`, a read-only command answered by a recent batch (`fetch`) is answered
    from it once, not sent again; the batch's commands were recorded when it was sent. A change
    (a mutating command) drops every answer kept."""

    def __init__(
        self, inner: GuardedTransport, sink: list[CommandResult], prefetch: Prefetch | None = None
    ):
        self.inner = inner
        self.sink = sink
        self.prefetch = prefetch
        self.host = inner.host
        self.host_key = inner.host_key

    def run_batch(self, parts: Sequence[str], timeout: float) -> list[CommandResult]:
        """Send the read-only command lines `parts` in one round trip (pvepatch.transport.batch);
        one recorded result per part."""
        token = batch.new_token()
        sent, started = time.time(), time.monotonic()
        try:
            whole = self.inner.run(batch.script(parts, token), timeout=timeout, mutating=False)
        except TransportError as exc:
            took = time.monotonic() - started
            lost = CommandResult.no_answer(self.host, "", exc, took, False, sent)
            self.sink.extend(replace(lost, command=part, batch=token) for part in parts)
            raise
        results = batch.split(whole, parts, token)
        self.sink.extend(results)
        return results

    def fetch(self, parts: Sequence[str], timeout: float = 60.0) -> None:
        """Ask `parts` now in one round trip, for the next `run` of each to use. A failed batch
        is only recorded: each command is then sent on its own, and fails where it is asked."""
        if self.prefetch is None:
            raise ValueError("fetch needs a RecordingTransport made with a Prefetch")
        held = {part: self.prefetch.held(self.host, part) for part in parts}
        wanted = []
        for part in parts:  # what is held already (an outer block asked it) is not asked again
            if held[part]:
                held[part] -= 1
            else:
                wanted.append(part)
        parts = wanted
        if not parts:
            return
        try:
            self.prefetch.keep(self.run_batch(parts, timeout))
        except PvepatchError:
            pass

    def run(
        self, command: str, *args: object, timeout: float = 60.0, mutating: bool
    ) -> CommandResult:
        if self.prefetch is not None and mutating:
            self.prefetch.clear()  # what was asked before a change is not asked after it
        elif self.prefetch is not None:
            kept = self.prefetch.take(self.host, quote(command, *args))
            if kept is not None:
                return kept
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
