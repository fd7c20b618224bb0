"""pvepatch as a pytest plugin (pytest11 entry point `pvepatch.plugin`): options, markers, fixtures,
and one PvepatchPlugin per run (pvepatch.plugin.core) when an inventory or the stages are used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pvepatch.cycle.actions import VMCycle
from pvepatch.cycle.options import Fleet, Options
from pvepatch.cycle.record import VMRecord
from pvepatch.cycle.runstate import RunState
from pvepatch.errors import InventoryError
from pvepatch.inventory import Target, load_inventory
from pvepatch.plugin.core import PLUGIN_NAME, RUN_KEY, PvepatchPlugin
from pvepatch.plugin.mode import STAGES, names_patch, stage_of, written_mode
from pvepatch.plugin.options import add_options, check_options, options_from, snapshot_warnings
from pvepatch.plugin.reporting import default_report_paths
from pvepatch.plugin.workers import distribute_by_vm
from pvepatch.transport.banner import ssh_banner
from pvepatch.transport.command import ReadOnlyGuard
from pvepatch.transport.connections import Connections, TransportFactory, ssh_factory
from pvepatch.transport.known_hosts import check_host_key_policy

pytest_plugins = ["pvepatch.plugin.reporting"]

MARKERS = {
    "patch": "part of the patch cycle (pytest -m patch)",
    "verify": "part of the read-only health check (pytest -m verify)",
    "stage(name)": "the pvepatch stage a test belongs to: " + ", ".join(STAGES),
    "pihole": "runs only for Pi-hole VMs (group 'pihole' or pihole: true)",
    "update_check": "a health check whose failure after the update is the update's fault "
    "(such a VM is rolled back with --rollback-on-failure)",
    "xdist_group(name)": "pytest-xdist --dist loadgroup: the tests of one VM run on one worker",
}
STAGES_DIR = "tests_patch"
# The stage files, shipped with the package (a link to the project's tests_patch/), so that
# `pytest -m verify --inventory inv.yaml` runs them from any directory.
PACKAGED_STAGES = Path(__file__).resolve().parents[1] / "stages"
FACTORY_KEY = pytest.StashKey[TransportFactory]()
RUN_DIR_KEY = "pvepatch_run_dir"  # tests hand in a fake fleet here

__all__ = ["FACTORY_KEY", "RUN_KEY", "PvepatchPlugin", "names_patch", "stage_of"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)  # before pytest-html reads --html
def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if not _is_pvepatch_run(config):
        return
    check_options(config)
    distribute_by_vm(config)
    path = config.getoption("inventory") or str(config.rootpath / "inventory.yaml")
    try:
        inventory = load_inventory(path, config.getoption("group"), config.getoption("limit"))
        check_host_key_policy(
            inventory,
            config.getoption("accept_new_host_keys"),
            [Path(p) for p in config.getoption("known_hosts")],
        )
    except InventoryError as exc:
        raise pytest.UsageError(f"pvepatch: {exc}\nNothing was touched.") from exc
    guard = ReadOnlyGuard(allow_mutating=False)
    banner = None if FACTORY_KEY in config.stash else ssh_banner  # never probe a fake's address
    factory = config.stash.get(FACTORY_KEY, None) or ssh_factory(
        [Path(p) for p in config.getoption("known_hosts")],
        config.getoption("accept_new_host_keys"),
        config.getoption("ssh_timeout"),
    )
    _collect_the_stages(config)
    options = options_from(config)
    inventory.warnings.extend(snapshot_warnings(inventory.targets, options))
    plugin = PvepatchPlugin(
        config,
        inventory,
        options,
        guard,
        Connections(factory, guard, banner),
        fleet=Fleet(runstate=_runstate(config, options)),
    )
    config.stash[RUN_KEY] = plugin
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_RunDirToWorkers(plugin), "pvepatch-run-dir")
    default_report_paths(config, written_mode(config))


def _runstate(config: pytest.Config, options: Options) -> RunState:
    """The run's shared state: made by the controller (or a serial run), found by workers."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get(RUN_DIR_KEY):
        return RunState(Path(workerinput[RUN_DIR_KEY]), max_fail=options.max_fail)
    return RunState.create(max_fail=options.max_fail)


class _RunDirToWorkers:
    """Hands the run directory to each pytest-xdist worker (registered only with xdist)."""

    def __init__(self, plugin: PvepatchPlugin):
        self.plugin = plugin

    def pytest_configure_node(self, node: Any) -> None:
        runstate = self.plugin.fleet.runstate
        if runstate is not None:
            node.workerinput[RUN_DIR_KEY] = str(runstate.directory)


def _collect_the_stages(config: pytest.Config) -> None:
    """With no test path given (none on the command line, none from `testpaths`), collect the
    stages: the project's tests_patch/ when there is one, else the packaged ones."""
    if config.args_source != pytest.Config.ArgsSource.INVOCATION_DIR:
        return
    local = config.invocation_params.dir / STAGES_DIR
    config.args = [str(local if local.is_dir() else PACKAGED_STAGES)]


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


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pvepatch_run(request: pytest.FixtureRequest) -> PvepatchPlugin:
    """The run: inventory, options, connections, the read-only guard, per-VM records."""
    run = request.config.stash.get(RUN_KEY, None)
    if run is None:
        pytest.fail("pvepatch is not active: name an inventory with --inventory")
    return run


@pytest.fixture
def record(pvepatch_run: PvepatchPlugin, target: Target) -> VMRecord:
    """What this run recorded about the VM under test (written by the actions only)."""
    return pvepatch_run.record(target)


@pytest.fixture
def cycle(pvepatch_run: PvepatchPlugin, target: Target) -> VMCycle:
    """The VM's actions (binding, agent, apt, restart) and its connections."""
    return pvepatch_run.cycle(target)


@pytest.fixture
def options(pvepatch_run: PvepatchPlugin) -> Options:
    """The run's safety and timing options."""
    return pvepatch_run.options
