"""Several read-only commands in one round trip, each answer still its own CommandResult.

Each SSH command costs a round trip and a shell on the far side (0.07-0.2 s in the lab; a `qm`
on a real Proxmox host adds its own start-up on top). A proof or a stage's observation asks 4-6
questions at once; `script` joins them into one POSIX shell command line that ends every part
with a marker carrying its exit status, on stdout and on stderr, and `split` cuts the answer back
into one CommandResult per part. The marker holds a random token made for that batch, so no
output of a part (a guest's host name, a package description) can forge the end of a part.

`Prefetch` keeps such answers for a few seconds: a RecordingTransport given one answers a
matching read-only command from it once, instead of sending it again.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Sequence

from pvepatch.transport.command import CommandResult

MARK = "@@pvepatch-end-"
# A prefetched answer older than this is not used: the command is sent again.
FRESH_FOR = 10.0


def new_token() -> str:
    return secrets.token_hex(8)


def script(parts: Sequence[str], token: str) -> str:
    """One shell command line running `parts` in order, each in its own subshell (an `exit` ends
    that part only), each followed by its end markers."""
    mark = MARK + token
    return "\n".join(
        f"( {part}\n); printf '\\n{mark} %s\\n' \"$?\"; printf '\\n{mark}\\n' >&2" for part in parts
    )


def split(batch: CommandResult, parts: Sequence[str], token: str) -> list[CommandResult]:
    """The answer of `script(parts, token)` cut into one CommandResult per part, in order.

    A part whose end marker never came (the batch timed out or was cut) is an unanswered
    command. Each part carries the whole batch's time: they shared one round trip.
    """
    mark = re.escape(MARK + token)
    out = re.split(rf"\n{mark} (\d+)\n", batch.stdout)  # [out0, rc0, out1, rc1, ..., rest]
    err = re.split(rf"\n{mark}\n", batch.stderr)
    results = []
    for i, part in enumerate(parts):
        answered = 2 * i + 1 < len(out)
        results.append(
            CommandResult(
                host=batch.host,
                command=part,
                rc=int(out[2 * i + 1]) if answered else -1,
                stdout=out[2 * i] if answered else "",
                stderr=(err[i] if i < len(err) else "") if answered else _cut(batch),
                duration=batch.duration,
                started=batch.started,
                answered=answered,
                batch=token,
            )
        )
    return results


def _cut(batch: CommandResult) -> str:
    return f"no answer: the batch ended before this part (exit status {batch.rc})"


class Prefetch:
    """Answers fetched in batches, by host and command line, each used at most once and only
    while fresh (a line asked twice in a batch has two answers). Any change sent through a
    transport that uses it drops them all."""

    def __init__(self, fresh_for: float = FRESH_FOR):
        self.fresh_for = fresh_for
        self._answers: dict[tuple[str, str], list[tuple[float, CommandResult]]] = {}
        self._lock = threading.Lock()

    def keep(self, results: Sequence[CommandResult]) -> None:
        now = time.monotonic()
        with self._lock:
            for result in results:
                if result.answered:
                    self._answers.setdefault((result.host, result.command), []).append(
                        (now, result)
                    )

    def held(self, host: str, command: str) -> int:
        """How many fresh answers to `command` on `host` are kept."""
        now = time.monotonic()
        with self._lock:
            kept = self._answers.get((host, command), [])
            return sum(1 for at, _ in kept if now - at <= self.fresh_for)

    def take(self, host: str, command: str) -> CommandResult | None:
        """A kept answer to `command` on `host` (then forgotten), or None when there is no
        fresh one."""
        with self._lock:
            kept = self._answers.get((host, command))
            while kept:
                at, result = kept.pop(0)
                if time.monotonic() - at <= self.fresh_for:
                    return result
        return None

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()
