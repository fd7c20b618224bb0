"""Waiting with a deadline, saying what was waited for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from pvepatch.errors import PvepatchError, WaitTimeout

T = TypeVar("T")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `probe` until it returns a truthy value; raise WaitTimeout after `timeout` seconds.

    A PvepatchError raised by `probe` counts as "not yet" (the host may be rebooting); the last
    one is reported if the deadline passes.
    """
    deadline = clock() + timeout
    last = ""
    while True:
        try:
            value = probe()
            if value:
                return value
            last = repr(value)
        except PvepatchError as exc:
            last = str(exc).splitlines()[0]
        if clock() >= deadline:
            raise WaitTimeout(what, timeout, last)
        sleep(min(interval, max(0.0, deadline - clock())))
