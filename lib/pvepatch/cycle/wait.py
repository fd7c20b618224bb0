"""Waiting with a deadline, saying what is waited for while it waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pvepatch.errors import PvepatchError, WaitTimeout

T = TypeVar("T")
Progress = Callable[[str], None]
# How often a long wait says how long it has waited.
PROGRESS_EVERY = 10.0


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: Progress | None = None,
    limit: float | None = None,
    since: float | None = None,
) -> T:
    """Call `probe` until it returns a truthy value; raise WaitTimeout after `timeout` seconds.

    A PvepatchError raised by `probe` counts as "not yet" (the host may be rebooting); the last
    one is reported if the deadline passes. `progress` hears `waiting for WHAT 31 s/600 s` every
    PROGRESS_EVERY seconds: the time since `since` (default: now) and `limit` (default `timeout`),
    so several waits under one deadline count on from each other.
    """
    start = clock()
    deadline = start + timeout
    origin = start if since is None else since
    next_report = start + PROGRESS_EVERY
    last = ""
    while True:
        try:
            value = probe()
            if value:
                return value
            last = repr(value)
        except PvepatchError as exc:
            last = str(exc).splitlines()[0]
        now = clock()
        if now >= deadline:
            raise WaitTimeout(what, timeout, last)
        if progress is not None and now >= next_report:
            progress(f"waiting for {what} {now - origin:.0f} s/{limit or timeout:.0f} s")
            next_report = now + PROGRESS_EVERY
        sleep(min(interval, max(0.0, deadline - clock())))


@contextmanager
def ticking(
    progress: Progress, what: str, limit: float, every: float | None = None
) -> Iterator[None]:
    """While the body blocks (a `qm shutdown` that waits on the host), say every `every`
    seconds how long it has been: `pihole: shutting down 12 s/180 s`."""
    done = threading.Event()
    start = time.monotonic()
    every = every or PROGRESS_EVERY

    def tick() -> None:
        while not done.wait(every):
            progress(f"{what} {time.monotonic() - start:.0f} s/{limit:.0f} s")

    thread = threading.Thread(target=tick, name=f"progress {what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1.0)
