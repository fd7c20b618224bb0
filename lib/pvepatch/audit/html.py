"""Render the run's recorded facts as HTML fragments for pytest-html, and the reports index."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pvepatch.audit import ledger
from pvepatch.audit.summary import STAGE_NAMES

STYLE = """<style>
.pvepatch{color:#000}
.pvepatch table{border-collapse:collapse;margin:4px 0 12px}
.pvepatch th,.pvepatch td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
.pvepatch .passed{background:#dfd}.pvepatch .failed{background:#fcc}
.pvepatch .skipped{background:#ffd}.pvepatch .not-run{background:#eee}
.pvepatch .interrupted{background:#fb8}
.pvepatch pre{margin:0;white-space:pre-wrap;font-size:11px;max-width:900px}
.pvepatch section{border-top:2px solid #888;margin-top:10px}
.pvepatch svg.pvepatch-down rect.bar{fill:#c33}.pvepatch svg.pvepatch-down rect.axis{fill:#eee}
</style>"""


def esc(value: Any) -> str:
    return html.escape("—" if value is None or value == "" else str(value))


def _table(rows: Iterable[Sequence[Any]], head: Sequence[str] | None = None, cls: str = "") -> str:
    parts = [f'<table class="{cls}">' if cls else "<table>"]
    if head:
        parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(_cell(c) for c in row) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def _cell(value: Any) -> str:
    if isinstance(value, Raw):
        return f"<td{value.attrs}>{value.html}</td>"
    return f"<td>{esc(value)}</td>"


class Raw:
    """Already-escaped cell content."""

    def __init__(self, html_text: str, attrs: str = ""):
        self.html, self.attrs = html_text, attrs


def header_html(header: dict[str, Any]) -> str:
    rows = [(Raw(f"<b>{esc(k)}</b>"), v) for k, v in header.items()]
    return f'<div class="pvepatch" id="pvepatch-header"><h2>pvepatch run</h2>{_table(rows)}</div>'


TIMELINE_WIDTH = 240


def _windows(vms: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    return {
        vm["vm"]: (vm["restart"]["down"]["from_ts"], vm["restart"]["down"]["to_ts"])
        for vm in vms
        if vm.get("restart") and vm["restart"].get("down")
    }


def timeline_svg(window: tuple[float, float], t0: float, span: float, label: str) -> str:
    """One VM's down window as a bar on the run's common time axis (inline SVG, no script)."""
    x = (window[0] - t0) / span * TIMELINE_WIDTH
    width = max(2.0, (window[1] - window[0]) / span * TIMELINE_WIDTH)
    return (
        f'<svg class="pvepatch-down" width="{TIMELINE_WIDTH}" height="12" role="img">'
        f"<title>{esc(label)}</title>"
        f'<rect class="axis" x="0" y="4" width="{TIMELINE_WIDTH}" height="4"/>'
        f'<rect class="bar" x="{x:.1f}" y="1" width="{width:.1f}" height="10"/></svg>'
    )


def matrix_html(vms: list[dict[str, Any]]) -> str:
    """The fleet matrix: one row per VM, one column per stage, the verdict and its reason, and
    when the VM was down (from its shutdown request, or down slot, to healthy), all VMs on one
    time axis."""
    windows = _windows(vms)
    t0 = min((w[0] for w in windows.values()), default=0.0)
    span = max((w[1] for w in windows.values()), default=0.0) - t0 or 1.0
    rows = []
    for vm in vms:
        cells: list[Any] = [Raw(f'<a href="#vm-{esc(vm["vm"])}">{esc(vm["vm"])}</a>'), vm["vmid"]]
        for stage in STAGE_NAMES:
            cell = vm["stages"].get(stage)
            status = cell["status"] if cell else "not run"
            text = f"{status} ({cell['duration_s']:.1f} s)" if cell else "not run"
            cells.append(Raw(esc(text), f' class="{status.replace(" ", "-")}"'))
        cells.append(
            Raw(f"<b>{esc(vm['verdict'])}</b>", f' class="{vm["verdict"].replace(" ", "-")}"')
        )
        cells.append(vm["reason"])
        window = windows.get(vm["vm"])
        if window is None:
            cells.append("not down")
        else:
            down = vm["restart"]["down"]
            label = f"down {down['seconds']} s, {down['from']} to {down['to']}"
            bar = timeline_svg(window, t0, span, label)
            cells.append(Raw(f"{bar} {esc(down['seconds'])} s"))
        rows.append(cells)
    head = ["VM", "vmid", *STAGE_NAMES, "verdict", "reason", "down (one time axis)"]
    table = _table(rows, head, "pvepatch-matrix")
    return f'<div class="pvepatch" id="pvepatch-matrix"><h2>Fleet</h2>{table}</div>'


def vm_html(vm: dict[str, Any]) -> str:
    """Everything recorded about one VM: packages, reboot, kernel, boot_id, pid, timeline, commands."""
    name = esc(vm["vm"])
    parts = [
        f'<section class="pvepatch pvepatch-vm" id="vm-{name}">',
        f"<h3>{name} (VM {esc(vm['vmid'])} on {esc(vm['proxmox_host'])}): "
        f"{esc(vm['verdict'])}</h3>",
    ]
    if vm["reason"]:
        parts.append(f"<p><b>reason:</b> {esc(vm['reason'])}</p>")
    parts.append(_identity_table(vm))
    parts.append(_safety_html(vm))
    parts.append(_packages_html(vm))
    parts.append(_restart_html(vm.get("restart")))
    parts.append(_snapshot_html(vm))
    parts.append(_links_html(vm.get("transcripts", {})))
    parts.append(_commands_html("qm commands on the Proxmox host", vm["qm_commands"], False))
    parts.append(_commands_html("in-guest commands", vm["guest_commands"], True))
    parts.append("</section>")
    return "".join(parts)


def _identity_table(vm: dict[str, Any]) -> str:
    reboot = vm.get("reboot_required")
    if reboot:
        reboot = "yes, asked by: " + (", ".join(vm["reboot_packages"]) or "(no package named)")
    elif reboot is False:
        reboot = "no"
    pairs: list[Sequence[Any]] = [
        ("running kernel", vm.get("kernel_before"), vm.get("kernel_after")),
        ("boot_id", vm.get("boot_id_before"), vm.get("boot_id_after")),
        ("boot_id around apt", vm.get("boot_id_before_patch"), vm.get("boot_id_after_patch")),
        ("QEMU pid", vm.get("qemu_pid_before"), vm.get("qemu_pid_after")),
        ("QEMU on node", vm.get("qemu_node_before"), vm.get("qemu_node_after")),
    ]
    agent = vm.get("agent")
    if agent:
        agent = "; ".join(
            f"{k.replace('_', ' ')}: {'yes' if v else 'no'}" for k, v in agent.items()
        )
    for label, value in (("guest asked for a reboot", reboot), ("guest agent", agent)):
        pairs.append((label, Raw(esc(value), ' colspan="2"')))
    return _table(pairs, ["fact", "before", "after"], "pvepatch-facts")


def _safety_html(vm: dict[str, Any]) -> str:
    """The preconditions proven before each mutating qm command, the refusals, the notes."""
    rows = [
        (p["action"], f"proven: {p['binding']}; host key {p.get('host_key') or '—'}")
        for p in vm.get("proofs") or []
    ]
    rows += _cluster_rows(vm)
    rows += [("refused", refusal) for refusal in vm.get("refusals") or []]
    rows += [("note", note) for note in vm.get("notes") or []]
    if not rows:
        return ""
    return "<h4>preconditions and notes</h4>" + _table(
        rows, ["action", "what was proven or refused"], "pvepatch-safety"
    )


def _cluster_rows(vm: dict[str, Any]) -> list[tuple[str, str]]:
    """Where the cluster put the VM, its HA state, quorum, pending changes, its newest backup;
    the pending changes its restart applied."""
    rows = []
    facts = vm.get("cluster")
    if facts:
        ha = f"HA state {facts['hastate']}" if facts["hastate"] else "not HA-managed"
        seen = [f"on node {facts['node'] or '(not listed)'}", ha]
        seen += [facts["quorum"]] if facts["quorum"] else []
        seen.append("pending: " + ("; ".join(facts["pending"]) or "none"))
        if facts["backup_checked"]:
            seen.append(f"newest backup: {facts['backup_volid'] or 'none'}")
        rows.append(("cluster", ", ".join(seen)))
    applied = (vm.get("restart") or {}).get("pending_applied")
    if applied:
        rows.append(("pending applied", "the restart applied: " + "; ".join(applied)))
    return rows


def _packages_html(vm: dict[str, Any]) -> str:
    packages = vm.get("packages")
    if packages is None:
        return "<p>packages: not patched in this run</p>"
    if not packages:
        return "<p>packages: nothing to upgrade</p>"
    rows = [(p["name"], p["old"], p["new"], p["kind"]) for p in packages]
    return f"<h4>packages ({len(rows)})</h4>" + _table(
        rows, ["package", "old version", "new version", "change"], "pvepatch-packages"
    )


def _restart_html(restart: dict[str, Any] | None) -> str:
    if restart is None:
        return "<p>restart: not done in this run</p>"
    rows = [(e["label"], e["time"], e["after_s"]) for e in restart["events"]]
    downtime = restart["downtime_s"]
    rows.append(
        (
            "downtime (shutdown sent to agent answering)",
            None if downtime is None else f"{downtime} s",
            None,
        )
    )
    head = f"<h4>restart ({esc(restart['method'])})</h4>"
    notes = "".join(
        f"<p><b>{esc(k)}:</b> {esc(v)}</p>"
        for k, v in [("refused", restart["refused"]), *restart["errors"].items()]
        if v
    )
    return (
        head + notes + _table(rows, ["event", "time", "seconds after shutdown"], "pvepatch-restart")
    )


def _snapshot_html(vm: dict[str, Any]) -> str:
    """The snapshot before the update, the rollback to it, pruning, the ones seen."""
    snap, rollback, pruned = vm.get("snapshot"), vm.get("rollback"), vm.get("snapshots_pruned")
    rows: list[tuple[str, Any]] = []
    if snap and snap["name"]:
        state = "taken" if snap["taken"] else f"FAILED: {snap['error']}"
        rows.append(
            ("snapshot before the update", f"{snap['name']} ({state}, {snap['seconds']} s)")
        )
    elif snap:
        rows.append(("snapshot before the update", snap["skipped"] or snap["error"]))
    if rollback and rollback["rolled_back"]:
        rows.append(("ROLLED BACK", f"to {rollback['snapshot']} because {rollback['why']}"))
        rows.append(
            ("qm rollback", f"exit {rollback['rollback_rc']}, {rollback['rollback_seconds']} s")
        )
        errors = "; ".join(f"{k}: {v}" for k, v in rollback["errors"].items())
        back = "passed" if rollback["healthy"] else (errors or "not all done")
        rows.append(("checks after the rollback", back))
        rows += [
            ("package before the update", f"{name} {old or '(not installed)'}")
            for name, old in sorted(rollback["packages_before"].items())
        ]
    elif rollback:
        rows.append(("rollback", rollback["skipped"] or rollback["refused"] or rollback["errors"]))
    if pruned and (pruned["deleted"] or pruned["errors"]):
        rows.append(("older pvepatch snapshots deleted", ", ".join(pruned["deleted"]) or "none"))
        rows += [(f"not deleted: {n}", why) for n, why in pruned["errors"].items()]
    for seen in vm.get("snapshots_seen") or []:
        age = seen["age_s"]
        rows.append(
            (
                "pvepatch snapshot",
                f"{seen['name']} ({age / 3600:.1f} h old)" if age else seen["name"],
            )
        )
    if not rows:
        return ""
    return "<h4>snapshots</h4>" + _table(rows, ["", ""], "pvepatch-snapshots")


def _links_html(transcripts: dict[str, str]) -> str:
    if not transcripts:
        return ""
    links = ", ".join(f'<a href="{esc(p)}">{esc(label)}</a>' for label, p in transcripts.items())
    return f"<p>transcripts: {links}</p>"


def _commands_html(title: str, commands: list[dict[str, Any]], with_output: bool) -> str:
    head = ["sent", "host", "command", "exit", "s"] + (["output (tail)"] if with_output else [])
    rows = []
    for c in commands:
        seconds = (
            f"{c['duration_s']} (batch {c['batch'][:6]})" if c.get("batch") else c["duration_s"]
        )
        row: list[Any] = [c["started"], c["host"], c["command"], c["rc"], seconds]
        if with_output:
            text = "\n".join(t for t in (c["stdout_tail"], c["stderr_tail"]) if t)
            row.append(Raw(f"<pre>{html.escape(text)}</pre>" if text else ""))
        rows.append(row)
    table = _table(rows, head, "pvepatch-commands")
    return f"<details><summary>{esc(title)} ({len(commands)})</summary>{table}</details>"


def summary_prefix(data: dict[str, Any]) -> list[str]:
    """The fragments pytest-html puts above its results table (static HTML: no JS needed)."""
    return [STYLE, header_html(data["header"]), matrix_html(data["vms"])] + [
        vm_html(vm) for vm in data["vms"]
    ]


# --- transcripts and the index ----------------------------------------------------------


def write_transcript(directory: Path, name: str, text: str, redact: Callable[[str], str]) -> Path:
    """Write the redacted `text` to `directory/name`; a `name` that would land elsewhere
    (a separator, `..`) is refused."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if name in {"", ".", ".."} or path.resolve().parent != directory.resolve():
        raise ValueError(f"transcript name {name!r} leaves {directory}")
    path.write_text(redact(text), encoding="utf-8")
    return path


def write_index(reports: Path) -> Path:
    """reports/index.html: every run (by its ledger), newest first, with verdict and links."""
    rows = []
    for path in sorted(reports.glob("pvepatch-*.jsonl"), reverse=True):
        records = ledger.read(path)
        start = next((r for r in records if r.get("type") == "run_start"), {})
        report = path.with_suffix(".html")
        link = (
            Raw(f'<a href="{esc(report.name)}">{esc(report.name)}</a>') if report.exists() else "—"
        )
        stamp = start.get("time", "")
        rows.append(
            (
                stamp,
                start.get("mode"),
                start.get("limit"),
                ledger.verdict(records),
                link,
                Raw(f'<a href="{esc(path.name)}">ledger</a>'),
            )
        )
    rows.sort(key=lambda r: str(r[0]), reverse=True)
    table = _table(
        rows, ["started", "mode", "limit", "verdict", "report", "ledger"], "pvepatch-index"
    )
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>pvepatch runs</title>'
        f'{STYLE}</head><body class="pvepatch"><h1>pvepatch runs (newest first)</h1>{table}</body></html>'
    )
    index = reports / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
