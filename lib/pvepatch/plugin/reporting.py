"""The audit record as a pytest plugin: the ledger as the run goes, pytest-html hooks, the index,
and every test report redacted before a reporter reads it.

Inert unless pvepatch is active (`config.stash[RUN_KEY]` set by pvepatch.plugin); writes no file
under `--collect-only`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pvepatch.audit import html as html_report
from pvepatch.audit.auditlog import AuditLog
from pvepatch.audit.redact import REDACTOR_KEY, Redactor, redact_report
from pvepatch.cycle.record import VMRecord
from pvepatch.plugin.core import RUN_KEY, target_of
from pvepatch.plugin.mode import stage_of, written_mode
from pvepatch.plugin.workers import PAYLOAD

AUDIT_KEY = pytest.StashKey[AuditLog]()
STEM_KEY = pytest.StashKey[Path]()  # the run's default file names, reserved: <stem>.jsonl etc.


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pvepatch")
    group.addoption(
        "--ledger",
        default=None,
        metavar="PATH",
        help="JSON-lines ledger of the run, written as it goes (default: beside the HTML report, "
        "same name, .jsonl)",
    )


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    redactor = Redactor.for_run(os.environ, run.inventory.path)
    config.stash[REDACTOR_KEY] = redactor
    redact = RedactPlugin(redactor, run.records)
    config.pluginmanager.register(redact, "pvepatch-redact")
    _redact_metadata(config, redactor)
    if config.option.collectonly or hasattr(config, "workerinput"):
        # Nothing runs, so nothing is recorded; or an xdist worker, whose reports carry its
        # records to the controller, which alone writes the ledger, transcripts and index.
        return
    html_path = getattr(config.option, "htmlpath", None)
    ledger_path = _ledger_path(config, html_path)
    audit = AuditLog(config, run, ledger_path, html_path and Path(html_path), redactor)
    config.stash[AUDIT_KEY] = audit
    config.pluginmanager.register(AuditPlugin(audit, redact), "pvepatch-audit")


def default_report_paths(config: pytest.Config, mode_hint: str) -> dict[str, str]:
    """Default pytest-html's `--html` (self-contained) and JUnit's `--junitxml` to
    `reports/pvepatch-<stamp>-<mode_hint>.html/.xml` in the directory pytest runs in, each only
    when the user left it unset, and neither under `--collect-only` nor in an xdist worker.
    The name is reserved (see _reserve_stem): two runs started in the same second get two.
    Returns what it set, by option name."""
    if config.option.collectonly or hasattr(config, "workerinput"):
        return {}
    chosen = {}
    named = getattr(config.option, "htmlpath", None)  # the user's report: the rest goes beside it
    if not named:
        stem = _reserve_stem(config.invocation_params.dir / "reports", mode_hint)
        config.stash[STEM_KEY] = stem
        if hasattr(config.option, "htmlpath"):
            config.option.htmlpath = chosen["htmlpath"] = str(stem.with_suffix(".html"))
            config.option.self_contained_html = True
    if hasattr(config.option, "xmlpath") and not config.option.xmlpath:
        beside = Path(named) if named else config.stash[STEM_KEY]
        config.option.xmlpath = chosen["xmlpath"] = str(beside.with_suffix(".xml"))
    return chosen


def _stamp() -> str:
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}"


def _reserve_stem(directory: Path, mode: str) -> Path:
    """`directory/pvepatch-<stamp>-<mode>`, or `pvepatch-<stamp>_<n>-<mode>` when another run
    has it: the ledger `<stem>.jsonl` is created exclusively (O_EXCL), so of two runs started in
    the same second each gets its own name, and no name of an existing report or JUnit file."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _stamp()
    for n in itertools.count(1):
        stem = directory / f"pvepatch-{stamp}{'' if n == 1 else f'_{n}'}-{mode}"
        if any(stem.with_suffix(s).exists() for s in (".html", ".xml")):
            continue
        try:
            os.close(
                os.open(stem.with_suffix(".jsonl"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            )
        except FileExistsError:
            continue
        return stem
    raise AssertionError("unreachable")


def _ledger_path(config: pytest.Config, html_path: str | None) -> Path:
    if config.getoption("ledger"):
        return Path(config.getoption("ledger")).resolve()
    stem = config.stash.get(STEM_KEY, None)
    if stem is not None:
        return stem.with_suffix(".jsonl")  # reserved by default_report_paths
    if html_path:
        return Path(html_path).resolve().with_suffix(".jsonl")
    stem = _reserve_stem(config.invocation_params.dir / "reports", written_mode(config))
    return stem.with_suffix(".jsonl")


def _redact_metadata(config: pytest.Config, redactor: Redactor) -> None:
    """pytest-metadata's Environment table, redacted; the run's facts are in the header only."""
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    metadata = config.stash.get(metadata_key, None)
    if metadata is None:
        return
    for key in list(metadata):
        metadata[key] = redactor.obj(metadata[key])


class RedactPlugin:
    """Redacts each report where pytest makes it, so the terminal, JUnit XML, pytest-html and
    the ledger all read the same redacted text."""

    def __init__(self, redactor: Redactor, records: Mapping[str, VMRecord]):
        self.redactor, self.records = redactor, records  # the run's per-VM records, as they grow
        self.learned: dict[tuple[str, str], int] = {}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        report = yield
        self.learn_from_commands()
        redact_report(report, self.redactor)
        return report

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Any:
        report = yield
        redact_report(report, self.redactor)
        return report

    def learn_from_commands(self) -> None:
        """Key blocks in any full command output recorded so far: a failure message shows only
        a tail of that output, which may hold key lines without the block's BEGIN line."""
        for vm, record in self.records.items():
            for kind, results in (("qm", record.qm_commands), ("guest", record.guest_commands)):
                start = self.learned.get((vm, kind), 0)
                for result in results[start:]:
                    self.redactor.learn(result.stdout)
                    self.redactor.learn(result.stderr)
                self.learned[(vm, kind)] = len(results)


class AuditPlugin:
    """The per-run hooks, registered by pytest_configure when pvepatch is active."""

    def __init__(self, audit: AuditLog, redact: RedactPlugin):
        self.audit, self.redact = audit, redact

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.audit.run_start(len(session.items))  # not on an xdist controller: it collects nothing

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.audit.collected = len(ids)  # every worker collects the same tests

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        """In the process that runs the tests: a stage starts before its first test's setup
        (an interruption inside that setup still finds the stage open)."""
        key = _key(item)
        if key is not None:
            self.audit.test_starts(item.nodeid, key)
        return (yield)

    @pytest.hookimpl(tryfirst=True)  # before pytest-html and JUnit: the extras, the row's keys
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Every per-VM report, from this process or an xdist worker (whose VM record the
        pvepatch plugin has taken from it by now): the ledger, stage results, transcripts."""
        payload = getattr(report, PAYLOAD, None)
        if not isinstance(payload, dict) or not payload["stage"]:
            return
        self.redact.learn_from_commands()
        links = self.audit.test_phase(report, payload, _message(report))
        if links:
            from pytest_html import extras

            links_extras = [extras.url(path, name=label) for label, path in links.items()]
            report.extras = getattr(report, "extras", []) + links_extras  # type: ignore[attr-defined]

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.audit.run_end(int(exitstatus))

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        report.title = f"pvepatch {written_mode(self.audit.config)} run {self.audit.run_id}"

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(
        self, prefix: list[str], summary: Any, postfix: Any, session: Any
    ) -> None:
        prefix.extend(html_report.summary_prefix(self.audit.data()))

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.insert(1, '<th class="sortable" data-column-type="vm">VM</th>')
        cells.insert(2, '<th class="sortable" data-column-type="stage">stage</th>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: Any, cells: list[str]) -> None:
        vm, stage = self.audit.keys.get(report.nodeid, ("", ""))
        cells.insert(1, f'<td class="col-vm">{html_report.esc(vm)}</td>')
        cells.insert(2, f'<td class="col-stage">{html_report.esc(stage)}</td>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_html(self, report: Any, data: list[str]) -> None:
        data[:] = [self.audit.redactor(text) for text in data]

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.audit.finish_files()


def _key(item: pytest.Item) -> tuple[str, str] | None:
    target, stage = target_of(item), stage_of(item)
    if target is None or stage is None:
        return None
    return target.name, stage.name


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple):  # a skip: (file, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
