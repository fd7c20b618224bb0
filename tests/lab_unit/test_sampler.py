"""The down sampler: what it derives from samples, its loop and its command line (no lab)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pvelab.fleet.sampler import Interval, Sample, Sampler, Samples, sampling

PROJECT = Path(__file__).resolve().parents[2]


def run_of(*rounds: dict[str, str], step: float = 0.5) -> Samples:
    return Samples(Sample(100.0 + i * step, 0.001, states) for i, states in enumerate(rounds))


UP3 = {"pbs": "up", "pihole": "up", "pihole-backup": "up"}


def test_max_down_counts_vms_down_in_one_sample() -> None:
    samples = run_of(
        UP3,
        {**UP3, "pbs": "no-ssh"},
        {**UP3, "pbs": "stopped", "pihole": "no-banner"},
        {**UP3, "pihole": "stopped"},
    )
    assert samples.max_down() == 2
    assert Samples().max_down() == 0


def test_down_intervals_run_from_first_down_to_first_up_sample() -> None:
    samples = run_of(
        UP3,
        {**UP3, "pbs": "no-ssh"},
        {**UP3, "pbs": "stopped"},
        UP3,
        {**UP3, "pbs": "stopped", "pihole": "stopped"},
    )
    intervals = samples.down_intervals()
    assert intervals == {
        "pbs": [Interval(100.5, 101.5), Interval(102.0, 102.0, open=True)],
        "pihole": [Interval(102.0, 102.0, open=True)],
        "pihole-backup": [],
    }
    assert intervals["pbs"][0].seconds == 1.0


def test_down_together_only_when_every_named_vm_is_down() -> None:
    samples = run_of(
        {**UP3, "pihole": "stopped"},
        {**UP3, "pihole-backup": "no-ssh"},
        {**UP3, "pihole": "no-banner", "pihole-backup": "stopped"},
    )
    assert [s.t for s in samples.down_together(["pihole", "pihole-backup"])] == [101.0]
    assert samples.ever_down_together(["pihole", "pihole-backup"])
    assert not run_of(
        {**UP3, "pihole": "stopped"}, {**UP3, "pihole-backup": "stopped"}
    ).ever_down_together(["pihole", "pihole-backup"])


def test_summary_names_each_vm_and_its_windows() -> None:
    samples = run_of(UP3, {**UP3, "pbs": "stopped"}, UP3)
    lines = samples.summary()
    assert lines[0] == "3 samples over 1.0 s; slowest round 1 ms; max down at once 1"
    assert "  pbs: down 0.5-1.0 s (0.5 s)" in lines
    assert "  pihole: down never" in lines
    assert Samples().summary() == ["no samples"]


def test_samples_round_trip_through_json_lines(tmp_path: Path) -> None:
    samples = run_of(UP3, {**UP3, "ca": "stopped"})
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(s.to_json() + "\n" for s in samples.samples))
    assert Samples.load(path).samples == samples.samples


def test_sampling_calls_the_probe_every_interval_and_writes_each_round() -> None:
    states = iter([{"pbs": "up"}, {"pbs": "stopped"}] + [{"pbs": "up"}] * 1000)
    out = io.StringIO()
    with sampling(probe=lambda: next(states), interval=0.02, out=out) as samples:
        time.sleep(0.3)
    n = len(samples)
    assert 5 <= n <= 20
    assert [s.states["pbs"] for s in samples.samples[:3]] == ["up", "stopped", "up"]
    assert len(out.getvalue().splitlines()) == n
    gaps = [b.t - a.t for a, b in zip(samples.samples, samples.samples[1:], strict=False)]
    assert min(gaps) > 0.01
    time.sleep(0.1)
    assert len(samples) == n  # the thread stopped with the block


def test_a_slow_round_does_not_cause_a_burst_of_catch_up_rounds() -> None:
    def slow() -> dict[str, str]:
        time.sleep(0.05)
        return {"pbs": "up"}

    sampler = Sampler(slow, interval=0.02)
    sampler.start()
    time.sleep(0.4)
    sampler.stop()
    times = [s.t for s in sampler.samples.samples]
    assert all(b - a >= 0.05 for a, b in zip(times, times[1:], strict=False))
    assert all(s.round_s >= 0.05 for s in sampler.samples.samples)


def test_sampling_needs_a_lab_or_a_probe() -> None:
    with pytest.raises(ValueError, match="needs a lab or a probe"), sampling():
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_samples_until_sigterm_and_prints_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "samples.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT / "lib"),
        "PVELAB_PORT_BASE": str(_free_port() - 101),  # pbs's SSH port: nobody listens there
    }
    argv = [sys.executable, "-m", "pvelab", "--lab", str(tmp_path / "lab"), "sample"]
    argv += ["--interval", "0.05", "--out", str(out), "--vms", "pbs"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while (
        not out.exists() or len(out.read_text().splitlines()) < 3
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    samples = Samples.load(out)
    assert len(samples) >= 3
    assert {s.states["pbs"] for s in samples.samples} == {"stopped"}
    assert "max down at once 1" in stdout
    assert "  pbs: down 0.0-" in stdout
