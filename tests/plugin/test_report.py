"""The HTML report as the audit record: header, fleet matrix, per-VM facts, transcripts, index."""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import fakes
import pytest
import reportkit
from pvepatch.audit import ledger
from pvepatch.audit.redact import MASK, REDACTOR_KEY, Redactor, redact_text
from pvepatch.plugin.reporting import default_report_paths

pytest_plugins = ["pytester"]


@pytest.fixture
def suite(pytester):
    return reportkit.make_suite(pytester)


def section(page: str, vm: str) -> str:
    """The per-VM section of `vm` in the report."""
    m = re.search(
        rf'<section class="pvepatch pvepatch-vm" id="vm-{vm}">(.*?)</section>', page, re.S
    )
    assert m, f"no section for {vm}"
    return m.group(1)


def matrix_row(page: str, vm: str) -> str:
    m = re.search(rf'<tr><td><a href="#vm-{vm}">{vm}</a></td>(.*?)</tr>', page, re.S)
    assert m, f"no matrix row for {vm}"
    return m.group(1)


def test_patch_report_holds_header_matrix_and_vm_facts(suite):
    fleet = reportkit.fleet_of(3)
    fleet.vms["pihole"].ignores_shutdown = True
    boots_before = {n: vm.boot_id for n, vm in fleet.vms.items()}
    result, html = reportkit.run(suite, fleet, "-m", "patch", "--limit", "pbs,pihole")
    page = html.read_text()
    inventory_sha = hashlib.sha256((suite.path / "inventory.yaml").read_bytes()).hexdigest()
    for field in ("run id", "operator", "pvepatch version", "inventory sha256", "--limit",
                  "restart method", "hard-stop fallback", "skiplock", "started", "ended"):  # fmt: skip
        assert f"<b>{field}</b>" in page, field
    assert inventory_sha in page and "pbs,pihole" in page
    assert re.search(r"<b>mutating commands sent</b></td><td>(\d+)</td>", page).group(1) == str(
        len(reportkit.mutating(fleet))
    )
    assert re.search(r"<b>mode</b></td><td>patch</td>", page)
    # the matrix: every stage of pbs passed, pihole failed at restart with its one-line reason
    pbs_row = matrix_row(page, "pbs")
    assert pbs_row.count('class="passed"') == 6  # five stages + the verdict
    pihole_row = matrix_row(page, "pihole")
    assert 'class="failed">failed (' in pihole_row and 'class="skipped">skipped' in pihole_row
    assert "restart: test_vm_shut_down: shutdown: clean shutdown failed" in pihole_row
    assert "pihole-backup" not in re.search(
        r'id="pvepatch-matrix">(.*?)</table>', page, re.S
    ).group(1)
    # per VM: packages, reboot request, kernel, boot_id, QEMU pid, restart timeline, commands
    pbs = section(page, "pbs")
    assert "<td>openssl</td><td>3.0.1-1</td><td>3.0.2-1</td><td>upgraded</td>" in pbs
    assert "yes, asked by: openssl" in pbs
    assert (
        f"<td>boot_id</td><td>{boots_before['pbs']}</td><td>{fleet.vms['pbs'].boot_id}</td>" in pbs
    )
    assert "<td>QEMU pid</td><td>1000</td><td>1001</td>" in pbs
    assert "<td>running kernel</td><td>6.1.0-1-amd64</td><td>6.1.0-1-amd64</td>" in pbs
    for event in (
        "shutdown sent",
        "VM stopped",
        "VM started",
        "SSH answered",
        "guest agent answered",
    ):
        assert re.search(rf"<td>{event}[^<]*</td><td>\d{{4}}-\d\d-\d\dT", pbs), event
    assert re.search(r"downtime \(shutdown sent to agent answering\)</td><td>[\d.]+ s", pbs)
    assert re.search(r"<td>pve</td><td>qm shutdown 101 --timeout 180</td><td>0</td>", pbs)
    assert re.search(r"<td>pbs</td><td>cat /proc/sys/kernel/random/boot_id</td><td>0</td>", pbs)
    # transcripts: files beside the report, linked from it
    links = re.findall(r'href="(pvepatch-run\.files/pbs-[^"]+\.txt)"', pbs)
    assert any("dist-upgrade" in link for link in links)
    for link in links:
        assert (html.parent / link).read_text().startswith("host: pbs\ncommand: ")
    assert "not restarting" not in section(page, "pihole")
    assert "clean shutdown failed" in section(page, "pihole")
    # and the JUnit XML went beside it by default
    assert html.with_suffix(".xml").exists()


def test_report_and_ledger_show_the_same_facts(suite):
    fleet = reportkit.fleet_of(3)
    result, html = reportkit.run(suite, fleet, "-m", "patch", "--limit", "pbs")
    records = ledger.read(html.with_suffix(".jsonl"))
    facts = [r for r in records if r["type"] == "stage" and r["vm"] == "pbs"][-1]["facts"]
    pbs = section(html.read_text(), "pbs")
    assert facts["boot_id_after"] == fleet.vms["pbs"].boot_id
    for key in ("boot_id_before", "boot_id_after", "kernel_before", "qemu_pid_after"):
        assert f"<td>{facts[key]}</td>" in pbs
    assert facts["packages"] == [
        {"name": "openssl", "old": "3.0.1-1", "new": "3.0.2-1", "kind": "upgraded"}
    ]
    junit = ET.parse(html.with_suffix(".xml")).getroot()
    props = [
        (p.get("name"), p.get("value"))
        for case in junit.iter("testcase")
        for p in case.iter("property")
    ]
    assert ("verdict", "passed") in props
    assert ("boot_id_after", facts["boot_id_after"]) in props
    assert ("package", "openssl 3.0.1-1 -> 3.0.2-1") in props
    assert any(name == "proof" and "qm shutdown: MAC" in value for name, value in props)
    assert "<td>qm shutdown</td><td>proven: MAC bc:24:11:00:00:01 and agent host name" in pbs


def test_verify_report_says_zero_mutating_commands(suite):
    fleet = reportkit.fleet_of(3)
    result, html = reportkit.run(suite, fleet, "-m", "verify")
    page = html.read_text()
    assert re.search(r"<b>mutating commands sent</b></td><td>0</td>", page)
    assert re.search(r"<b>mode</b></td><td>verify</td>", page)
    assert 'class="not-run">not run' in matrix_row(page, "pbs")  # patch stages not run
    assert "packages: not patched in this run" in section(page, "pbs")


def test_twenty_vm_report_stays_small(suite, pytester):
    (suite.path / "inventory.yaml").write_text(reportkit.inventory(20))
    fleet = reportkit.fleet_of(20)
    result, html = reportkit.run(suite, fleet, "-m", "patch")
    assert result.parseoutcomes()["passed"] >= 20 * 25
    size = html.stat().st_size
    print(f"20-VM patch report: {size} bytes ({size / 1024:.0f} KiB); "
          f"ledger {html.with_suffix('.jsonl').stat().st_size} bytes")  # fmt: skip
    assert size < 2_000_000
    assert len(re.findall(r'<section class="pvepatch pvepatch-vm"', html.read_text())) == 20


def test_index_lists_runs_newest_first_with_verdicts(suite):
    fleet = reportkit.fleet_of(3)
    reportkit.run(suite, fleet, "-m", "verify", name="20260101-000000-verify")
    (suite.path / "reports" / "pvepatch-20260103-000000-patch.jsonl").write_text(
        json.dumps({"type": "run_start", "time": "2999-01-03T00:00:00+00:00", "mode": "patch"})
        + "\n"
    )  # a run killed without its run_end
    fleet.vms["pbs"].ignores_shutdown = True
    reportkit.run(suite, fleet, "-m", "patch", "--limit", "pbs", name="20260102-000000-patch")
    index = (suite.path / "reports" / "index.html").read_text()
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(<td>.*?)</tr>", index)]
    assert [(row[1], row[3]) for row in rows] == [
        ("patch", "incomplete (no run end: killed?)"),
        ("patch", "failed"),
        ("verify", "passed"),
    ]
    assert 'href="pvepatch-20260102-000000-patch.html"' in index


def test_environment_table_does_not_repeat_the_header(suite):
    fleet = reportkit.fleet_of(3)
    result, html = reportkit.run(suite, fleet, "-m", "verify")
    page = html.read_text()
    inventory_sha = hashlib.sha256((suite.path / "inventory.yaml").read_bytes()).hexdigest()
    assert page.count(inventory_sha) == 1  # in the header, not again in the Environment table
    assert "pvepatch run id" not in page and "pvepatch operator" not in page
    assert "<b>run id</b>" in page and "Python" in page  # both tables still there


def run_bare(suite: pytest.Pytester, fleet: fakes.FakeFleet, *args: str) -> pytest.RunResult:
    """The stages with no report option at all, as an operator types them."""
    return suite.runpytest(
        "--inventory", "inventory.yaml", *reportkit.FAST, *reportkit.PLUGINS, *args,
        plugins=[fakes.FleetPlugin(fleet)],
    )  # fmt: skip


def test_collect_only_writes_no_ledger_transcripts_or_index_row(suite):
    fleet = reportkit.fleet_of(3)
    reports = suite.path / "reports"
    result = run_bare(suite, fleet, "-m", "patch", "--collect-only")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*test_vm_shut_down[[]pbs[]]*"])
    written = sorted(p.name for p in reports.rglob("*")) if reports.exists() else []
    assert not [n for n in written if n.endswith((".jsonl", ".files", ".txt")) or n == "index.html"]
    assert fleet.commands == []


def test_collect_only_writes_no_report_at_all(suite):
    fleet = reportkit.fleet_of(3)
    run_bare(suite, fleet, "-m", "patch", "--collect-only")
    reports = suite.path / "reports"
    assert not reports.exists() or list(reports.iterdir()) == []


@pytest.mark.parametrize(
    "args, set_html, set_xml",
    [([], True, True), (["--junitxml=mine.xml"], True, False), (["--html=mine.html"], False, True),
     (["--html=mine.html", "--junitxml=mine.xml"], False, False), (["--collect-only"], False, False)],
)  # fmt: skip
def test_report_paths_are_defaulted_only_when_the_user_left_them_unset(
    pytester, args, set_html, set_xml
):
    config = pytester.parseconfig(*args)
    given_html, given_xml = config.option.htmlpath, config.option.xmlpath
    chosen = default_report_paths(config, "patch")
    assert ("htmlpath" in chosen, "xmlpath" in chosen) == (set_html, set_xml)
    reports = str(pytester.path / "reports" / "pvepatch-")
    if set_html:
        assert config.option.htmlpath.startswith(reports) and config.option.htmlpath.endswith(
            "-patch.html"
        )
        assert config.option.self_contained_html is True
    else:
        assert config.option.htmlpath == given_html
        assert not config.option.self_contained_html  # the user's choice stands
    if set_xml:  # beside the HTML report, the user's or the default one
        assert config.option.xmlpath == str(Path(config.option.htmlpath).with_suffix(".xml"))
    else:
        assert config.option.xmlpath == given_xml


def test_redact_text_uses_the_runs_redactor(pytester):
    config = pytester.parseconfig()
    assert redact_text(config, "password=hunter2 s3cret-value") == f"password={MASK} s3cret-value"
    config.stash[REDACTOR_KEY] = Redactor(["s3cret-value"])
    assert redact_text(config, "password=hunter2 s3cret-value") == f"password={MASK} {MASK}"


def test_a_rolled_back_vm_in_the_report_ledger_and_junit(suite):
    fleet = reportkit.fleet_of(3)
    fleet.vms["pbs"].bad_update = True
    result, html = reportkit.run(suite, fleet, "-m", "patch", "--snapshot", "--rollback-on-failure")
    page = html.read_text()
    row = matrix_row(page, "pbs")
    assert '<td class="rolled-back"><b>rolled back</b></td>' in row, row
    pbs = section(page, "pbs")
    name = next(c for _, c in fleet.commands if c.startswith("qm snapshot 101")).split()[3]
    for text in (
        f"{name} (taken,",
        f"<td>ROLLED BACK</td><td>to {name} because patch: test_guest_agent_still_answers",
        "<td>checks after the rollback</td><td>passed</td>",
        "<td>package before the update</td><td>openssl 3.0.1-1</td>",
    ):
        assert text in pbs, text
    records = ledger.read(html.with_suffix(".jsonl"))
    facts = [r for r in records if r["type"] == "stage" and r["vm"] == "pbs"][-1]["facts"]
    assert facts["record_verdict"] == "rolled back"
    assert facts["rollback"]["healthy"] and facts["rollback"]["snapshot"] == name
    assert facts["rollback"]["events"][0]["label"] == "qm rollback sent"
    junit = ET.parse(html.with_suffix(".xml")).getroot()
    props = [(p.get("name"), p.get("value")) for p in junit.iter("property")]
    assert ("verdict", "rolled back") in props
