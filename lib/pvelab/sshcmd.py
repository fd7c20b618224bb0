"""OpenSSH client calls into the lab (PVE host and guests) with the operator key and pinned keys.

Error tree::

    LabError                 anything the lab's orchestration could not do
     +-- CommandError        a command ran and failed (carries .result)
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pvelab.paths import LabPaths


class LabError(Exception):
    """The lab could not be brought into the requested state."""


class CommandError(LabError):
    """A command exited non-zero; `.result` holds the evidence."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(str(result))
        self.result = result


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    rc: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def __str__(self) -> str:
        tail_out = "\n".join(self.stdout.splitlines()[-5:])
        tail_err = "\n".join(self.stderr.splitlines()[-5:])
        return (
            f"{self.host}: `{self.command}` exited {self.rc} after {self.duration:.1f} s\n"
            f"stdout (tail):\n{tail_out}\nstderr (tail):\n{tail_err}"
        )


def quote(cmd: str | Sequence[str]) -> str:
    """A remote shell command: a string is taken as shell text, a list is quoted word by word."""
    return cmd if isinstance(cmd, str) else shlex.join(str(a) for a in cmd)


def ssh_argv(paths: LabPaths, port: int, connect_timeout: int = 10) -> list[str]:
    """`ssh` to root@127.0.0.1:<port> with the lab's key and pinned known_hosts, never prompting."""
    return [
        "ssh", "-F", "/dev/null", "-T",
        "-i", str(paths.operator_key),
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={paths.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "LogLevel=ERROR",
        "-p", str(port),
        "root@127.0.0.1",
    ]  # fmt: skip


def ssh_run(
    paths: LabPaths,
    port: int,
    cmd: str | Sequence[str],
    *,
    host: str,
    timeout: float = 120,
    check: bool = False,
    stdin: str | None = None,
) -> CommandResult:
    """Run `cmd` on root@127.0.0.1:<port>; rc 255 is ssh's own failure; check=True raises."""
    command = quote(cmd)
    argv = [*ssh_argv(paths, port), "--", command]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -1, _text(exc.stdout), _text(exc.stderr) + f"\n(timeout after {timeout} s)"
    result = CommandResult(host, command, rc, out, err, time.monotonic() - start)
    if check and not result.ok:
        raise CommandError(result)
    return result


def local_run(argv: Sequence[str], *, timeout: float = 120, check: bool = True) -> CommandResult:
    """Run a host command (ssh-keygen, qemu-img); check=True raises CommandError."""
    start = time.monotonic()
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -1, _text(exc.stdout), _text(exc.stderr) + f"\n(timeout after {timeout} s)"
    result = CommandResult("localhost", shlex.join(argv), rc, out, err, time.monotonic() - start)
    if check and not result.ok:
        raise CommandError(result)
    return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def host_key_line(port: int, pubkey_file: Path) -> str:
    """known_hosts line pinning one key: `[127.0.0.1]:<port> ssh-ed25519 AAAA...`."""
    keytype, blob = pubkey_file.read_text().split()[:2]
    return f"[127.0.0.1]:{port} {keytype} {blob}"
