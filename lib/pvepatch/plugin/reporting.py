"""The audit record as a pytest plugin: the ledger as the run goes, pytest-html hooks, the index,
and every test report redacted before a reporter reads it.

Inert unless pvepatch is active (`config.stash[RUN_KEY]` set by pvepatch.plugin); writes no file
under `--collect-only`.
"""

from __future__ import annotations

import datetime as dt
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

AUDIT_KEY = pytest.StashKey[AuditLog]()


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
    config.pluginmanager.register(RedactPlugin(redactor, run.records), "pvepatch-redact")
    _redact_metadata(config, redactor)
    if config.option.collectonly:
        return  # nothing runs, so nothing is recorded: no ledger, no transcripts, no index row
    html_path = getattr(config.option, "htmlpath", None)
    ledger_path = _ledger_path(config, html_path)
    audit = AuditLog(config, run, ledger_path, html_path and Path(html_path), redactor)
    config.stash[AUDIT_KEY] = audit
    config.pluginmanager.register(AuditPlugin(audit), "pvepatch-audit")


def default_report_paths(config: pytest.Config, mode_hint: str) -> dict[str, str]:
    """Default pytest-html's `--html` (self-contained) and JUnit's `--junitxml` to
    `reports/pvepatch-<stamp>-<mode_hint>.html/.xml` in the directory pytest runs in, each only
    when the user left it unset,
    and neither under `--collect-only`. Returns what it set, by option name."""
    if config.option.collectonly:
        return {}
    stem = (
        config.invocation_params.dir
        / "reports"
        / f"pvepatch-{dt.datetime.now():%Y%m%d-%H%M%S}-{mode_hint}"
    )
    chosen = {}
    if hasattr(config.option, "htmlpath") and not config.option.htmlpath:
        config.option.htmlpath = chosen["htmlpath"] = str(stem.with_suffix(".html"))
        config.option.self_contained_html = True
    if hasattr(config.option, "xmlpath") and not config.option.xmlpath:
        beside = Path(config.option.htmlpath) if getattr(config.option, "htmlpath", None) else stem
        config.option.xmlpath = chosen["xmlpath"] = str(beside.with_suffix(".xml"))
    return chosen


def _ledger_path(config: pytest.Config, html_path: str | None) -> Path:
    if config.getoption("ledger"):
        return Path(config.getoption("ledger")).resolve()
    if html_path:
        return Path(html_path).resolve().with_suffix(".jsonl")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = written_mode(config)
    return config.invocation_params.dir / "reports" / f"pvepatch-{stamp}-{mode}.jsonl"


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
        self._learn_from_commands()
        redact_report(report, self.redactor)
        return report

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Any:
        report = yield
        redact_report(report, self.redactor)
        return report

    def _learn_from_commands(self) -> None:
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

    def __init__(self, audit: AuditLog):
        self.audit = audit

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.audit.run_start(len(session.items))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        key = _key(item)
        if key is not None:
            self.audit.test_starts(item.nodeid, key)
        result = yield
        if key is not None and (nextitem is None or _key(nextitem) != key):
            self.audit.stage_ends(key)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        report = yield
        key = _key(item)
        if key is not None and report.when == "call":
            links = self.audit.new_transcripts(key[0])
            if links:
                from pytest_html import extras

                report.extras = getattr(report, "extras", []) + [
                    extras.url(path, name=label) for label, path in links.items()
                ]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.audit.test_phase(report, _message(report))

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
