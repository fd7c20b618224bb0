"""QMP and guest-agent clients speaking to QEMU's unix sockets the way PVE's QMPClient does.

Errors::

    MonitorError                 any failed monitor/agent command (message as PVE prints it)
    ├── MonitorConnectError      socket missing or refusing (`unable to connect to VM ...`)
    ├── MonitorTimeout           no (complete) answer in time (`... failed - got timeout`)
    └── MonitorCommandError      QEMU/qemu-ga answered `{"error": {...}}`; has .error_class/.desc

One short connection per command: each chardev serves a single client at a time, so a client
that stays connected would lock `qm` (and every other client) out.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

QGA_SYNC_SENTINEL = b"\xff"
# PVE's per-command QGA timeouts (QS9 QMPClient.pm); everything else: 5 s.
QGA_TIMEOUTS = {
    "guest-shutdown": 600.0,
    "guest-fstrim": 600.0,
    "guest-fsfreeze-freeze": 3600.0,
    "guest-fsfreeze-thaw": 180.0,
}
# Commands for which EOF before a reply means success (`$qga_allow_close_cmds`).
QGA_CLOSE_OK = ("guest-shutdown", "guest-suspend-ram", "guest-suspend-disk",
                "guest-suspend-hybrid")  # fmt: skip


class MonitorError(Exception):
    """A QMP or QGA command failed; `str()` is PVE's message for it."""

    def __init__(self, message: str, *, vmid: int, command: str) -> None:
        super().__init__(message)
        self.vmid = vmid
        self.command = command


class MonitorConnectError(MonitorError):
    """The socket is absent or nobody listens on it."""


class MonitorTimeout(MonitorError):
    """No complete reply before the deadline."""


class MonitorCommandError(MonitorError):
    """The peer answered with an error object."""

    def __init__(self, message: str, *, vmid: int, command: str, error: dict[str, Any]) -> None:
        super().__init__(message, vmid=vmid, command=command)
        self.error = error
        self.error_class = str(error.get("class", ""))
        self.desc = str(error.get("desc", ""))


class _LineReader:
    """Reads from a socket against one absolute deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)  # socket.timeout is a TimeoutError
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def skip_past(self, marker: bytes) -> bool:
        """Discard input up to and including `marker`; False on EOF."""
        while marker not in self.buf:
            self.buf = b""
            if not self._fill():
                return False
        self.buf = self.buf.split(marker, 1)[1]
        return True

    def line(self) -> bytes | None:
        """The next newline-terminated line (without \\r\\n); None on EOF."""
        while b"\n" not in self.buf:
            if not self._fill():
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")


class _Client:
    kind = ""

    def __init__(self, path: Path | str, vmid: int) -> None:
        self.path = str(path)
        self.vmid = vmid

    def _fail(self, cls: type[MonitorError], command: str, reason: str) -> MonitorError:
        return cls(
            f"VM {self.vmid} {self.kind} command '{command}' failed - {reason}",
            vmid=self.vmid,
            command=command,
        )

    def _connect(self, command: str, deadline: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise MonitorConnectError(
                f"unable to connect to VM {self.vmid} {self.kind} socket - {reason}",
                vmid=self.vmid,
                command=command,
            ) from exc
        return sock

    def _result(self, command: str, reply: dict[str, Any]) -> Any:
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise MonitorCommandError(
                f"VM {self.vmid} {self.kind} command '{command}' failed - "
                f"{error.get('desc', reply['error'])}",
                vmid=self.vmid,
                command=command,
                error=error,
            )
        return reply.get("return")


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line.decode("utf-8", "replace"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _send(sock: socket.socket, obj: dict[str, Any], prefix: bytes = b"") -> None:
    sock.sendall(prefix + json.dumps(obj).encode() + b"\n")


class QMPClient(_Client):
    """QEMU monitor (QMP): greeting, `qmp_capabilities`, one command, close."""

    kind = "qmp"
    _seq = 0

    def command(
        self, execute: str, arguments: dict[str, Any] | None = None, timeout: float = 5.0
    ) -> Any:
        """Run one QMP command and return its `return` value; raises MonitorError."""
        deadline = time.monotonic() + timeout
        sock = self._connect(execute, deadline)
        try:
            reader = _LineReader(sock, deadline)
            greeting = self._read_reply(reader, execute, None)
            if "QMP" not in greeting:
                raise self._fail(MonitorError, execute, "no QMP greeting")
            self._exchange(sock, reader, "qmp_capabilities", None)
            return self._exchange(sock, reader, execute, arguments)
        except TimeoutError as exc:
            raise self._fail(MonitorTimeout, execute, "got timeout") from exc
        except OSError as exc:
            raise self._fail(MonitorError, execute, str(exc)) from exc
        finally:
            sock.close()

    def _exchange(
        self,
        sock: socket.socket,
        reader: _LineReader,
        execute: str,
        arguments: dict[str, Any] | None,
    ) -> Any:
        QMPClient._seq += 1
        ident = f"{os.getpid()}:{QMPClient._seq}"
        request: dict[str, Any] = {"execute": execute, "id": ident}
        if arguments:
            request["arguments"] = arguments
        _send(sock, request)
        return self._result(execute, self._read_reply(reader, execute, ident))

    def _read_reply(self, reader: _LineReader, execute: str, ident: str | None) -> dict[str, Any]:
        while True:
            line = reader.line()
            if line is None:
                if execute == "quit" and ident is not None:
                    return {"return": {}}  # QEMU may close before answering `quit`
                raise self._fail(MonitorError, execute, "got EOF")
            reply = _decode(line)
            if reply is None or "event" in reply:
                continue
            if ident is None or reply.get("id") == ident:
                return reply


class QGAClient(_Client):
    """QEMU guest agent: 0xFF + `guest-sync-delimited` with a fresh id, then one command."""

    kind = "qga"

    def command(
        self, execute: str, arguments: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one agent command and return its `return` value; raises MonitorError.

        The default timeout is PVE's for that command (5 s; `guest-shutdown` 10 min).
        `guest-shutdown` never replies on success: EOF (QEMU exiting) returns None.
        """
        if timeout is None:
            timeout = QGA_TIMEOUTS.get(execute, 5.0)
        deadline = time.monotonic() + timeout
        sock = self._connect(execute, deadline)
        try:
            reader = _LineReader(sock, deadline)
            self._sync(sock, reader, execute)
            request: dict[str, Any] = {"execute": execute}
            if arguments:
                request["arguments"] = arguments
            _send(sock, request)
            while True:
                line = reader.line()
                if line is None:
                    if execute in QGA_CLOSE_OK:
                        return None
                    raise self._fail(MonitorError, execute, "got EOF")
                reply = _decode(line)
                if reply is not None and ("return" in reply or "error" in reply):
                    return self._result(execute, reply)
        except TimeoutError as exc:
            raise self._fail(MonitorTimeout, execute, "got timeout") from exc
        except OSError as exc:
            if execute in QGA_CLOSE_OK:
                return None  # QEMU went away while the guest powered off
            raise self._fail(MonitorError, execute, str(exc)) from exc
        finally:
            sock.close()

    def _sync(self, sock: socket.socket, reader: _LineReader, execute: str) -> None:
        # A fresh id per connection: replies to an earlier client's commands may still be
        # queued in the agent, and only the matching id proves the stream is ours.
        ident = random.randint(1, 2**31 - 1)
        _send(
            sock,
            {"execute": "guest-sync-delimited", "arguments": {"id": ident}},
            prefix=QGA_SYNC_SENTINEL,
        )
        while True:
            if not reader.skip_past(QGA_SYNC_SENTINEL):
                raise self._fail(MonitorError, execute, "got EOF")
            line = reader.line()
            if line is None:
                raise self._fail(MonitorError, execute, "got EOF")
            reply = _decode(line)
            if reply is not None and reply.get("return") == ident:
                return
