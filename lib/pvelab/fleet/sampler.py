"""The down sampler: which lab VMs are down, sampled every interval, for tests and benchmarks.

A VM is up in a sample when its QEMU runs and its sshd answers (`liveness.py` says how that
is seen cheaply); otherwise it is down, with the reason (`stopped`, `no-ssh`, `no-banner`,
`bad-banner`). `python -m pvelab sample --interval 0.5 --out FILE` writes one JSON line per
round until SIGTERM/SIGINT; `Samples.load(FILE)` reads it back.

    with sampling(lab, interval=0.5) as samples:
        ...                          # the run under test
    assert samples.max_down() <= 1
    assert not samples.ever_down_together(["pihole", "pihole-backup"])
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pvelab.fleet.liveness import UP, LabProbe, VMs

if TYPE_CHECKING:
    from pvelab.fleet.lab import Lab

Probe = Callable[[], dict[str, str]]  # one round: VM name -> UP or the reason it is down


@dataclass(frozen=True)
class Sample:
    """One round: wall-clock time, how long the round took, each VM's state."""

    t: float
    round_s: float
    states: Mapping[str, str]

    @property
    def down(self) -> frozenset[str]:
        return frozenset(name for name, state in self.states.items() if state != UP)

    def to_json(self) -> str:
        return json.dumps({"t": self.t, "round_s": self.round_s, "vms": dict(self.states)})

    @classmethod
    def from_json(cls, line: str) -> Sample:
        data = json.loads(line)
        return cls(float(data["t"]), float(data["round_s"]), dict(data["vms"]))


@dataclass(frozen=True)
class Interval:
    """A VM down from the first sample that saw it down to the first that saw it up again.

    `end` is the last sample's time and `open` is True when it was still down then.
    """

    start: float
    end: float
    open: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Samples:
    """The samples of one sampling run (thread-safe to append to and read while it runs)."""

    def __init__(self, samples: Iterable[Sample] = ()) -> None:
        self._lock = threading.Lock()
        self._samples = list(samples)

    def append(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    @classmethod
    def load(cls, path: Path) -> Samples:
        """Samples written by `python -m pvelab sample --out FILE` (JSON lines)."""
        lines = path.read_text().splitlines()
        return cls(Sample.from_json(line) for line in lines if line.strip())

    def max_down(self) -> int:
        """The largest number of VMs down in one sample (0 without samples)."""
        return max((len(s.down) for s in self.samples), default=0)

    def max_round_s(self) -> float:
        return max((s.round_s for s in self.samples), default=0.0)

    def down_intervals(self) -> dict[str, list[Interval]]:
        """Per VM (every VM sampled, in order of first appearance), the intervals it was down."""
        intervals: dict[str, list[Interval]] = {}
        since: dict[str, float] = {}
        samples = self.samples
        for sample in samples:
            for name, state in sample.states.items():
                intervals.setdefault(name, [])
                if state != UP:
                    since.setdefault(name, sample.t)
                elif name in since:
                    intervals[name].append(Interval(since.pop(name), sample.t))
        for name, start in since.items():
            intervals[name].append(Interval(start, samples[-1].t, open=True))
        return intervals

    def down_together(self, names: Iterable[str]) -> list[Sample]:
        """The samples in which every one of `names` was down."""
        wanted = frozenset(names)
        return [s for s in self.samples if wanted <= s.down]

    def ever_down_together(self, names: Iterable[str]) -> bool:
        return bool(self.down_together(names))

    def summary(self) -> list[str]:
        """Human-readable lines: samples, slowest round, max down, each VM's down intervals."""
        samples = self.samples
        if not samples:
            return ["no samples"]
        t0 = samples[0].t
        lines = [
            f"{len(samples)} samples over {samples[-1].t - t0:.1f} s;"
            f" slowest round {self.max_round_s() * 1000:.0f} ms; max down at once {self.max_down()}"
        ]
        for name, spans in self.down_intervals().items():
            text = ", ".join(
                f"{s.start - t0:.1f}-{s.end - t0:.1f} s ({s.seconds:.1f} s{', open' if s.open else ''})"
                for s in spans
            )
            lines.append(f"  {name}: down {text or 'never'}")
        return lines


# -- the sampling loop ------------------------------------------------------------------------


class Sampler:
    """Calls `probe` every `interval` s (on a fixed schedule; late rounds are not made up)."""

    def __init__(
        self,
        probe: Probe,
        interval: float = 0.5,
        out: IO[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.probe = probe
        self.interval = interval
        self.out = out
        self.clock = clock
        self.samples = Samples()
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> Sample:
        began = time.monotonic()
        t = self.clock()
        states = self.probe()
        sample = Sample(t, round(time.monotonic() - began, 4), states)
        self.samples.append(sample)
        if self.out is not None:
            self.out.write(sample.to_json() + "\n")
            self.out.flush()
        return sample

    def run(self) -> None:
        """Sample until `stopping` is set (the caller's thread)."""
        next_at = time.monotonic()
        while not self.stopping.is_set():
            self.sample_once()
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # a slow round: keep the schedule, skip what was missed
                next_at = now + self.interval - (now - next_at) % self.interval
            self.stopping.wait(next_at - now)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="pvelab-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join()


@contextmanager
def sampling(
    lab: Lab | None = None,
    interval: float = 0.5,
    *,
    vms: VMs = None,
    probe: Probe | None = None,
    out: IO[str] | None = None,
) -> Iterator[Samples]:
    """Sample the lab's VMs in a thread for the duration of the block; yields the samples.

    `probe` replaces the lab probe (unit tests); one of `lab` and `probe` is required.
    """
    lab_probe = None
    if probe is None:
        if lab is None:
            raise ValueError("sampling() needs a lab or a probe")
        probe = lab_probe = LabProbe.of(lab, vms, interval)
    sampler = Sampler(probe, interval, out)
    sampler.start()
    try:
        yield sampler.samples
    finally:
        sampler.stop()
        if lab_probe is not None:
            lab_probe.close()
