"""Waiting with a deadline, and saying what is waited for while it waits."""

from __future__ import annotations

import time

import pytest
from pvepatch.cycle import wait
from pvepatch.errors import TransportError, WaitTimeout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_progress_names_what_and_how_long_against_the_limit():
    clock, heard = Clock(), []
    answers = iter([None] * 12 + ["boot-2"])
    got = wait.wait_for(
        "SSH to pihole with a new boot_id",
        lambda: next(answers),
        timeout=600,
        interval=2,
        clock=clock,
        sleep=clock.sleep,
        progress=heard.append,
        since=clock.now - 5,
    )
    assert got == "boot-2"
    assert heard == [
        "waiting for SSH to pihole with a new boot_id 15 s/600 s",
        "waiting for SSH to pihole with a new boot_id 25 s/600 s",
    ]


def test_timeout_says_what_and_the_last_error():
    clock = Clock()

    def probe() -> None:
        raise TransportError("pihole", "Connection refused")

    with pytest.raises(
        WaitTimeout, match=r"gave up waiting 30 s for x \(last seen: pihole: Connection refused\)"
    ):
        wait.wait_for("x", probe, timeout=30, clock=clock, sleep=clock.sleep)


def test_ticking_reports_while_a_call_blocks():
    heard: list[str] = []
    with wait.ticking(heard.append, "shutting down", 180, every=0.05):
        deadline = time.monotonic() + 5  # a loaded machine may be slow to schedule the ticker
        while len(heard) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert heard[:2] == ["shutting down 0 s/180 s", "shutting down 0 s/180 s"]
    count = len(heard)
    time.sleep(0.1)
    assert len(heard) == count  # silent once the call returned
