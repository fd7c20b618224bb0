"""The lab's pve-ha-crm + pve-ha-lrm: one detached process (`python -m pvelab.pve.ha.daemon --lab
DIR --round S`) with a CRM thread and one LRM thread per node, each a loop of rounds of S seconds
(10 in PVE: `my $max_time = 10;` in CRM.pm and LRM.pm), the LRMs half a round after the CRM."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pvelab import procs
from pvelab.paths import PROJECT_ROOT, LabPaths
from pvelab.pve.ha import nodes
from pvelab.pve.ha.journal import Journal, log_path

ROUND_ENV = "PVELAB_HA_ROUND"
DEFAULT_ROUND = 10.0
MODULE = "pvelab.pve.ha.daemon"


def round_seconds() -> float:
    """The HA round length: $PVELAB_HA_ROUND, default 10 s as in PVE."""
    return float(os.environ.get(ROUND_ENV) or DEFAULT_ROUND)


def pidfile(paths: LabPaths) -> Path:
    return paths.pve_dir / "pve-ha.pid"


def running_pid(paths: LabPaths) -> int | None:
    """The daemon's pid if its pidfile names a live HA daemon of this lab."""
    try:
        pid = int(pidfile(paths).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    argv = procs.cmdline(pid)
    return pid if MODULE in argv and str(paths.root) in argv and procs.alive(pid) else None


def start(paths: LabPaths, base: int, round_s: float | None = None) -> int:
    """Start (or keep) the daemon, detached like the lab's other daemons; returns its pid."""
    pid = running_pid(paths)
    if pid is not None:
        return pid
    round_s = round_seconds() if round_s is None else round_s
    lib = str(PROJECT_ROOT / "lib")
    env = {**os.environ, "PVELAB_PORT_BASE": str(base)}
    env["PYTHONPATH"] = lib + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(nodes.ENV_NODE, None)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    pidfile(paths).parent.mkdir(parents=True, exist_ok=True)
    pidfile(paths).unlink(missing_ok=True)
    argv = [sys.executable, "-m", MODULE, "--lab", str(paths.root), "--round", str(round_s)]
    with open(paths.log_dir / "ha-daemon.log", "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        if running_pid(paths) == proc.pid:
            return proc.pid
        time.sleep(0.05)
    raise OSError(f"HA daemon did not start (see {paths.log_dir / 'ha-daemon.log'})")


def stop(paths: LabPaths) -> bool:
    """Stop the daemon (services are left as they are, like a restart of PVE's daemons)."""
    pid = running_pid(paths)
    if pid is None:
        return False
    gone = procs.terminate(pid, grace=5)
    pidfile(paths).unlink(missing_ok=True)
    return gone


def _loop(
    stopping: threading.Event, delay: float, body: Callable[[], float], log: Callable[[str], None]
) -> None:
    """Run `body` (which returns the seconds its round lasts) until `stopping` is set."""
    if stopping.wait(delay):
        return
    while not stopping.is_set():
        began = time.monotonic()
        try:
            length = body()
        except Exception as exc:  # noqa: BLE001 - PVE's daemons eval each round and log it
            log(f"got unexpected error - {exc}")
            length = 1.0
        stopping.wait(max(0.0, began + length - time.monotonic()))


def serve(paths: LabPaths, round_s: float, stopping: threading.Event) -> list[threading.Thread]:
    """Start the CRM and the LRM threads; they run until `stopping` is set."""
    from pvelab.pve.ha.agent import PowerAgent  # the qm power code: only the daemon needs it
    from pvelab.pve.ha.lrm import LRM
    from pvelab.pve.ha.manager import CRM

    journal = Journal(log_path(paths))
    here = nodes.local_node()
    threads = []

    def crm_body() -> float:
        if "crm" not in crm_box:
            crm_box["crm"] = CRM(paths, here, crm_log)
        crm = crm_box["crm"]
        return round_s if crm.work() else round_s / 2

    crm_box: dict[str, CRM] = {}
    crm_log = journal.logger(here, "pve-ha-crm")
    threads.append(
        threading.Thread(target=_loop, args=(stopping, 0.0, crm_body, crm_log), name="crm")
    )
    for node in nodes.cluster_nodes(paths):
        log = journal.logger(node, "pve-ha-lrm")
        lrm = LRM(paths, node, PowerAgent(paths, node), log, round_s)

        def lrm_body(lrm: LRM = lrm) -> float:
            if nodes.quorate(paths):
                lrm.work()
            return round_s if lrm.state == "active" else round_s / 2

        threads.append(threading.Thread(target=_loop, args=(stopping, round_s / 2, lrm_body, log),
                                        name=f"lrm-{node}"))  # fmt: skip
    for thread in threads:
        thread.start()
    return threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--lab", required=True)
    parser.add_argument("--round", type=float, default=None, help="round length in seconds")
    args = parser.parse_args(argv)
    paths = LabPaths(Path(args.lab).resolve())
    round_s = round_seconds() if args.round is None else args.round
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    pidfile(paths).parent.mkdir(parents=True, exist_ok=True)
    pidfile(paths).write_text(f"{os.getpid()}\n")
    threads = serve(paths, round_s, stopping)
    while not stopping.wait(1):
        pass
    Journal(log_path(paths)).write(
        nodes.local_node(), "pve-ha-crm", "server received shutdown request"
    )  # noqa: E501
    for thread in threads:
        thread.join(timeout=round_s + 5)
    os._exit(0)  # workers in flight (a shutdown waiting on its timeout) are abandoned


if __name__ == "__main__":
    sys.exit(main())
