"""Snapshot parts without a host: PVE's listsnapshot tree, pvepatch's names, own snapshots, ages."""

from __future__ import annotations

import calendar

import pytest
from pvepatch.cycle.snapshot import age_of, own, snapshot_name
from pvepatch.proxmox.parse import SnapshotEntry, parse_listsnapshot
from pvepatch.proxmox.qm import _snapshot_name

# print_snapshot_tree's own output (reference transcript, TZ=UTC), plus a sibling, a snapshot
# without time, a 40-character name and a description holding characters splitlines() splits on.
TREE = (
    "`-> pre-patch                   2026-01-01 00:00:00     before apt upgrade\n"
    " `-> second                     2026-01-01 01:00:00     no-description\n"
    "  `-> current                                           You are here!\n"
    " `-> sibling                    2026-01-02 00:00:00     two words\r\n"
    " `-> a234567890123456789012345678901234567890 2026-01-03 00:00:00 odd\x0bline\u2028end\n"
    " `-> notime                                             made by an old PVE\n"
)


def test_listsnapshot_tree_every_line_shape():
    entries = parse_listsnapshot(TREE)
    assert entries == [
        SnapshotEntry("pre-patch", "2026-01-01 00:00:00", "before apt upgrade", 0),
        SnapshotEntry("second", "2026-01-01 01:00:00", "no-description", 1),
        SnapshotEntry("sibling", "2026-01-02 00:00:00", "two words", 1),
        SnapshotEntry(
            "a234567890123456789012345678901234567890",
            "2026-01-03 00:00:00",
            "odd\x0bline\u2028end",
            1,
        ),
        SnapshotEntry("notime", None, "made by an old PVE", 1),
    ]


def test_listsnapshot_without_snapshots_and_garbage():
    assert parse_listsnapshot("`-> current" + " " * 49 + "You are here!\n") == []
    with pytest.raises(ValueError, match="unexpected line in qm listsnapshot output"):
        parse_listsnapshot("400 Parameter verification failed.\n")


def test_snapshot_name_is_the_run_time_in_utc_made_unique():
    started = calendar.timegm((2026, 11, 27, 10, 15, 0, 0, 0, 0))
    assert snapshot_name(started, []) == "pvepatch_20261127_101500"
    taken = ["pvepatch_20261127_101500", "pvepatch_20261127_101500_2"]
    assert snapshot_name(started, taken) == "pvepatch_20261127_101500_3"
    assert len(snapshot_name(started, taken)) <= 40


@pytest.mark.parametrize("bad", ["1x", "current", "Pending", "a" * 41, "x", "pv;rm", "a b"])
def test_names_proxmox_refuses_are_never_sent(bad):
    with pytest.raises(ValueError, match="not a Proxmox snapshot name"):
        _snapshot_name(bad)


def test_own_snapshots_need_the_name_and_the_description_oldest_first():
    def entry(name, desc):
        return SnapshotEntry(name, None, desc, 0)

    entries = [
        entry("pvepatch_20260301_000000", "pvepatch: before patching pbs"),
        entry("pvepatch_20260101_000000", "pvepatch: before patching pbs"),
        entry("pvepatch_20260201_000000", "taken by hand"),
        entry("before_upgrade", "pvepatch: looks like ours"),
        entry("pvepatch_20260101_000000_2", "pvepatch: a second one that second"),
    ]
    assert [e.name for e in own(entries)] == [
        "pvepatch_20260101_000000",
        "pvepatch_20260101_000000_2",
        "pvepatch_20260301_000000",
    ]


def test_age_from_the_name():
    now = calendar.timegm((2026, 11, 27, 12, 0, 0, 0, 0, 0))
    assert age_of("pvepatch_20261127_100000", now) == 7200
    assert age_of("pvepatch_20261127_100000_2", now) == 7200
    assert age_of("before_upgrade", now) is None
