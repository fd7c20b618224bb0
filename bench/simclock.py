"""A virtual clock for the simulated fleet: time runs $PVEPATCH_SIM_SCALE times faster.

Loaded with `pytest -p simclock` (so before the pvepatch plugin is imported, in the controller
and in every xdist worker, which get the same command line): time.time, time.monotonic and
time.sleep are replaced at import, so that everything pvepatch binds at its own import (dataclass
default factories, wait_for's defaults) is virtual too. Every process counts from the same origin
($PVEPATCH_SIM_T0, $PVEPATCH_SIM_M0), so their stamps agree. The plugin's waits (a slot poll every
1 s, an SSH probe every 0.25 s) then keep their proportions to the fake VMs' delays; what does not
scale is CPU time (pytest's, the slot script's), which is `scale` times longer in virtual time.
"""

from __future__ import annotations

import os
import time

SCALE = float(os.environ.get("PVEPATCH_SIM_SCALE", "1"))


def install(scale: float, t0: float, m0: float) -> None:
    real_time, real_mono, real_sleep = time.time, time.monotonic, time.sleep
    if getattr(real_sleep, "simulated", False):
        return

    def vtime() -> float:
        return t0 + (real_time() - t0) * scale

    def vmono() -> float:
        return m0 + (real_mono() - m0) * scale

    def vsleep(seconds: float) -> None:
        real_sleep(max(0.0, seconds) / scale)

    vsleep.simulated = True  # type: ignore[attr-defined]
    time.time, time.monotonic, time.sleep = vtime, vmono, vsleep  # type: ignore[misc]


install(
    SCALE,
    float(os.environ.get("PVEPATCH_SIM_T0", "0")),
    float(os.environ.get("PVEPATCH_SIM_M0", "0")),
)
