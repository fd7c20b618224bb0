"""The pytest plugin: options, markers, per-VM parametrization, rolling order, gating, read-only guard."""

from __future__ import annotations

import datetime as dt
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.expression import Expression

from pvepatch.cycle.actions import Fleet, Options, VMCycle
from pvepatch.cycle.record import VMRecord
from pvepatch.errors import InventoryError
from pvepatch.inventory import DEFAULT_GROUP, Inventory, Target, load_inventory
from pvepatch.transport.command import ReadOnlyGuard
from pvepatch.transport.connections import Connections, TransportFactory, ssh_factory

# The stages, in order; the mutating ones run only when selected with `-m patch`.
STAGES: dict[str, tuple[int, bool]] = {
    "preflight": (1, False),
    "guest_agent": (2, True),
    "patch": (3, True),
    "restart": (4, True),
    "verify": (5, False),
}
MARKERS = {
    "patch": "part of the patch cycle (pytest -m patch)",
    "verify": "part of the read-only health check (pytest -m verify)",
    "stage(name)": "the pvepatch stage a test belongs to: " + ", ".join(STAGES),
    "pihole": "runs only for Pi-hole VMs (group 'pihole' or pihole: true)",
    "lab": "end-to-end test against the pvelab lab (real VMs; slow)",
}
STAGES_DIR = "tests_patch"


@dataclass
class Run:
    """The state of one pvepatch run, kept on config.stash."""

    inventory: Inventory
    options: Options
    guard: ReadOnlyGuard
    connections: Connections
    fleet: Fleet = field(default_factory=Fleet)
    records: dict[str, VMRecord] = field(default_factory=dict)
    cycles: dict[str, VMCycle] = field(default_factory=dict)
    last_item: dict[str, str] = field(default_factory=dict)  # VM name -> its last test's nodeid
    deselected_mutating: int = 0
    started: float = field(default_factory=lambda: dt.datetime.now().timestamp())

    @property
    def mode(self) -> str:
        return "patch" if self.guard.allow_mutating else "verify"

    def record(self, target: Target) -> VMRecord:
        return self.records.setdefault(target.name, VMRecord(target))

    def cycle(self, target: Target) -> VMCycle:
        if target.name not in self.cycles:
            self.cycles[target.name] = VMCycle(
                self.record(target), self.connections, self.options, self.fleet
            )
        return self.cycles[target.name]


RUN_KEY = pytest.StashKey[Run]()
FACTORY_KEY = pytest.StashKey[TransportFactory]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pvepatch", "pvepatch: patch and verify Proxmox VMs")
    group.addoption(
        "--inventory",
        default=os.environ.get("PVEPATCH_INVENTORY"),
        metavar="PATH",
        help="Ansible YAML inventory (default: $PVEPATCH_INVENTORY, else inventory.yaml in the "
        "rootdir); outside the project directory write --inventory=PATH",
    )
    group.addoption(
        "--group",
        default=DEFAULT_GROUP,
        help="inventory group of the target VMs (default: %(default)s)",
    )
    group.addoption(
        "--limit",
        default=None,
        metavar="PATTERN",
        help="only these hosts or groups, comma-separated, '!name' excludes (as Ansible's --limit)",
    )
    group.addoption(
        "--known-hosts",
        action="append",
        default=[],
        metavar="FILE",
        help="extra known_hosts file (also read: ~/.ssh/known_hosts and UserKnownHostsFile in the inventory)",
    )
    group.addoption(
        "--accept-new-host-keys",
        action="store_true",
        help="record unknown SSH host keys (like OpenSSH accept-new); a changed key is never accepted",
    )
    group.addoption(
        "--restart-method",
        choices=["shutdown", "stop"],
        default="shutdown",
        help="shutdown: clean 'qm shutdown' then 'qm start' (default); stop: the old playbook's "
        "hard 'qm stop' then 'qm start' (power-off: see README)",
    )
    group.addoption(
        "--hard-stop-fallback",
        action="store_true",
        help="when the clean shutdown times out, power the VM off with 'qm stop' (default: fail and leave it running)",
    )
    group.addoption(
        "--skiplock",
        action="store_true",
        help="restart VMs even when Proxmox holds a lock on them (backup, snapshot, migrate): dangerous",
    )
    group.addoption(
        "--shutdown-timeout",
        type=int,
        default=180,
        help="seconds for the clean shutdown (default: %(default)s)",
    )
    group.addoption(
        "--boot-timeout",
        type=float,
        default=600.0,
        help="seconds for SSH, the virtio port and the agent to come back after the start (default: %(default)s)",
    )
    group.addoption(
        "--restart-pause",
        type=float,
        default=5.0,
        help="seconds between stopped and start (default: %(default)s)",
    )
    group.addoption(
        "--ssh-timeout",
        type=float,
        default=15.0,
        help="SSH connect timeout in seconds (default: %(default)s)",
    )
    group.addoption(
        "--apt-lock-timeout",
        type=int,
        default=600,
        help="seconds to wait for another apt/dpkg to release its lock (default: %(default)s)",
    )
    group.addoption(
        "--min-free-mb",
        type=int,
        default=500,
        help="free MB required on / before patching (default: %(default)s)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if not _is_pvepatch_run(config):
        return
    path = config.getoption("inventory") or str(config.rootpath / "inventory.yaml")
    _check_options(config)
    try:
        inventory = load_inventory(path, config.getoption("group"), config.getoption("limit"))
    except InventoryError as exc:
        raise pytest.UsageError(f"pvepatch: {exc}\nNothing was touched.") from exc
    options = Options(
        restart_method=config.getoption("restart_method"),
        skiplock=config.getoption("skiplock"),
        hard_stop_fallback=config.getoption("hard_stop_fallback"),
        shutdown_timeout=config.getoption("shutdown_timeout"),
        boot_timeout=config.getoption("boot_timeout"),
        restart_pause=config.getoption("restart_pause"),
        lock_timeout=config.getoption("apt_lock_timeout"),
        min_free_root_mb=config.getoption("min_free_mb"),
    )
    guard = ReadOnlyGuard(allow_mutating=False)
    factory = config.stash.get(FACTORY_KEY, None) or ssh_factory(
        [Path(p) for p in config.getoption("known_hosts")],
        config.getoption("accept_new_host_keys"),
        config.getoption("ssh_timeout"),
    )
    config.stash[RUN_KEY] = Run(inventory, options, guard, Connections(factory, guard))
    _default_report_path(config)


def _is_pvepatch_run(config: pytest.Config) -> bool:
    """Active when an inventory is named or the stage directory is collected."""
    if config.getoption("inventory", None):
        return True
    stages = (config.rootpath / STAGES_DIR).resolve()
    for arg in config.args:
        p = Path(str(arg).split("::")[0])
        p = (config.invocation_params.dir / p).resolve()
        if p == stages or stages in p.parents:
            return True
    return False


def _check_options(config: pytest.Config) -> None:
    for name in ("shutdown_timeout", "boot_timeout", "ssh_timeout", "apt_lock_timeout"):
        if config.getoption(name) <= 0:
            raise pytest.UsageError(f"pvepatch: --{name.replace('_', '-')} must be positive")
    if config.getoption("restart_pause") < 0:
        raise pytest.UsageError("pvepatch: --restart-pause must not be negative")
    if config.getoption("hard_stop_fallback") and config.getoption("restart_method") == "stop":
        raise pytest.UsageError(
            "pvepatch: --hard-stop-fallback only applies to --restart-method shutdown"
        )


def _default_report_path(config: pytest.Config) -> None:
    if not hasattr(config.option, "htmlpath"):
        return
    if not config.option.htmlpath:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        mode = "patch" if patch_selected(config.getoption("markexpr") or "") else "verify"
        config.option.htmlpath = str(config.rootpath / "reports" / f"pvepatch-{stamp}-{mode}.html")
    config.option.self_contained_html = True
    if getattr(config.option, "xmlpath", None) is None:  # JUnit XML for CI, beside the report
        config.option.xmlpath = str(Path(config.option.htmlpath).with_suffix(".xml"))


# --- collection ---------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" not in metafunc.fixturenames:
        return
    run = metafunc.config.stash.get(RUN_KEY, None)
    if run is None:
        raise pytest.UsageError("pvepatch: stage tests need an inventory (--inventory PATH)")
    targets = list(run.inventory.targets)
    if metafunc.definition.get_closest_marker("pihole"):
        targets = [t for t in targets if t.pihole is not None]
    metafunc.parametrize("target", targets, ids=[t.name for t in targets])


def stage_of(item: pytest.Item) -> tuple[str, int, bool] | None:
    marker = item.get_closest_marker("stage")
    if marker is None:
        return None
    name = marker.args[0]
    if name not in STAGES:
        raise pytest.UsageError(
            f"{item.nodeid}: unknown stage {name!r} (known: {', '.join(STAGES)})"
        )
    order, mutating = STAGES[name]
    if mutating and item.get_closest_marker("verify"):
        raise pytest.UsageError(f"{item.nodeid}: mutating stage {name!r} must not be marked verify")
    return name, order, mutating


def _target_of(item: pytest.Item) -> Target | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("target") if callspec else None


def patch_selected(markexpr: str) -> bool:
    """True when the -m expression positively selects `patch` (e.g. `-m patch`)."""
    if not markexpr:
        return False
    expr = Expression.compile(markexpr)

    def only(*marks: str) -> Any:
        def matcher(name: str, **kwargs: Any) -> bool:
            return name in marks

        return matcher

    return expr.evaluate(only("patch")) and not expr.evaluate(only())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    allow = patch_selected(config.getoption("markexpr") or "")
    keep, dropped = [], []
    for item in items:
        stage = stage_of(item)
        if "target" in getattr(item, "fixturenames", ()) and not isinstance(
            _target_of(item), Target
        ):
            continue  # a per-VM test with no VM to run on (e.g. Pi-hole checks, no Pi-hole)
        if stage and stage[2] and not allow:
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        run.deselected_mutating = len(dropped)
    run.guard.allow_mutating = allow and any((stage_of(i) or ("", 0, False))[2] for i in keep)
    vm_order = {t.name: i for i, t in enumerate(run.inventory.targets)}
    position = {id(item): i for i, item in enumerate(keep)}

    def key(item: pytest.Item) -> tuple[int, int, int]:
        target, stage = _target_of(item), stage_of(item)
        return (
            vm_order.get(target.name, -1) if target else -1,
            stage[1] if stage else 0,
            position[id(item)],
        )

    items[:] = sorted(keep, key=key)
    for item in items:
        target = _target_of(item)
        if target is not None:
            run.last_item[target.name] = item.nodeid


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return []
    return [
        f"pvepatch: inventory {run.inventory.path}, {len(run.inventory.targets)} target VM(s): "
        + ", ".join(str(t) for t in run.inventory.targets),
    ]


def pytest_collection_finish(session: pytest.Session) -> None:
    run = session.config.stash.get(RUN_KEY, None)
    if run is None:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    mode = (
        "PATCH (mutating stages selected)"
        if run.guard.allow_mutating
        else "VERIFY (read-only: mutating commands are refused)"
    )
    reporter.write_line(f"pvepatch: mode {mode}")
    if run.deselected_mutating:
        reporter.write_line(
            f"pvepatch: {run.deselected_mutating} mutating stage test(s) deselected; "
            "nothing will be changed (select them with -m patch)"
        )


# --- running: per-VM gating ---------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    run = item.config.stash.get(RUN_KEY, None)
    target, stage = _target_of(item), stage_of(item)
    if run is None or target is None or stage is None:
        return
    record = run.record(target)
    if record.failed and record.failed_stage is not None and stage[1] > record.failed_stage:
        pytest.skip(f"earlier stage failed: {record.failed}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    run = item.config.stash.get(RUN_KEY, None)
    target, stage = _target_of(item), stage_of(item)
    if run is not None and target is not None and call.when == "teardown":
        if run.last_item.get(target.name) == item.nodeid:
            run.record(target).completed = True
    if run is None or target is None or stage is None or not report.failed:
        return report
    record = run.record(target)
    if record.failed is None:
        reason = _one_line(call.excinfo.value) if call.excinfo else "failed"
        record.failed = f"{stage[0]}: {getattr(item, 'originalname', item.name)}: {reason}"
        record.failed_stage = stage[1]
    return report


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:300]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pvepatch_run(request: pytest.FixtureRequest) -> Run:
    """The run's state: inventory, options, connections, the read-only guard, per-VM records."""
    run = request.config.stash.get(RUN_KEY, None)
    if run is None:
        pytest.fail("pvepatch is not active: name an inventory with --inventory")
    return run


@pytest.fixture
def record(pvepatch_run: Run, target: Target) -> VMRecord:
    """What this run recorded about the VM under test."""
    return pvepatch_run.record(target)


@pytest.fixture
def cycle(pvepatch_run: Run, target: Target) -> VMCycle:
    """The VM's actions (agent, apt, restart) and its connections."""
    return pvepatch_run.cycle(target)


@pytest.fixture
def options(pvepatch_run: Run) -> Options:
    """The run's safety and timing options."""
    return pvepatch_run.options


@pytest.fixture
def patch_run(pvepatch_run: Run) -> bool:
    """True when this run patches (mutating stages selected), False for a verify run."""
    return pvepatch_run.guard.allow_mutating


# --- the end of the run -------------------------------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.stash.get(RUN_KEY, None) is None:
        return

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"pvepatch: received signal {signum}")

    signal.signal(signal.SIGTERM, terminate)


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(RUN_KEY, None)
    if run is not None:
        run.connections.close_all()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    tr = terminalreporter
    tr.section("pvepatch")
    tr.write_line(f"mode: {run.mode}; mutating commands sent: {run.guard.mutating_sent}")
    for target in run.inventory.targets:
        record = run.records.get(target.name)
        if record is None:
            verdict = "not run"
        elif record.failed:
            verdict = f"FAILED ({record.failed})"
        elif not record.completed:
            verdict = "INTERRUPTED (its stages did not all run)"
        else:
            verdict = "ok"
        tr.write_line(f"  {target}: {verdict}")
    for name, why in run.fleet.down.items():
        tr.write_line(
            f"!!! VM {name} IS NOT RUNNING: {why}. Start it: qm start {run.inventory.target(name).vmid}",
            red=True,
            bold=True,
        )
