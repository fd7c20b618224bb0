"""The KVM probe: its guest really runs, `$PVELAB_ACCEL` wins, verdicts are cached per boot,
and an unusable KVM is said in one calm line (QEMU's error text stays in the lab's files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pvelab.__main__ import main as pvelab_main
from pvelab.fleet.lab import Lab, format_summary
from pvelab.paths import LabPaths
from pvelab.pve import accel


def test_probe_boot_sector_prints_marker_under_tcg(tmp_path: Path) -> None:
    disk = tmp_path / "boot.img"
    disk.write_bytes(accel.BOOT_SECTOR)
    run = accel.run_guest(
        ["-drive", f"file={disk},format=raw,if=ide"], tmp_path / "serial", accel.MARKER,
        wait=20, accel=("-accel", "tcg"),
    )  # fmt: skip
    assert run.ok, run


def test_boot_sector_is_one_bootable_sector() -> None:
    assert len(accel.BOOT_SECTOR) == 512 and accel.BOOT_SECTOR.endswith(b"\x55\xaa")


@pytest.mark.parametrize("kind", ["tcg", "kvm"])
def test_env_override(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.ENV_OVERRIDE, kind)
    assert accel.probe(LabPaths(tmp_path)).accel == kind


def test_probe_caches_verdict_for_this_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(accel.ENV_OVERRIDE, raising=False)
    paths = LabPaths(tmp_path)
    verdict = accel.probe(paths, kernel=None, refresh=True)
    assert verdict.accel in ("kvm", "tcg") and verdict.reason
    cached = json.loads((tmp_path / accel.CACHE_NAME).read_text())
    assert cached["boot_id"] == accel.boot_id() and cached["accel"] == verdict.accel
    monkeypatch.setattr(accel, "_probe_kvm", lambda _k: pytest.fail("probe ran again"))
    assert accel.probe(paths) == verdict


def test_cache_of_another_boot_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.ENV_OVERRIDE, raising=False)
    stale = {"boot_id": "old", "version": accel.CACHE_VERSION, "accel": "kvm"}
    (tmp_path / accel.CACHE_NAME).write_text(json.dumps(stale))
    monkeypatch.setattr(accel, "_probe_kvm", lambda _k: accel.Verdict("tcg", "probed"))
    assert accel.probe(LabPaths(tmp_path)) == accel.Verdict("tcg", "probed")


FAKE_QEMU_ABORT = """#!/bin/sh
echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2
echo "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed." >&2
kill -ABRT $$
"""


def test_unusable_kvm_is_one_calm_line_and_qemu_words_stay_in_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """As on a host whose KVM aborts QEMU: the terminal (fd level, QEMU's stderr included) gets
    one calm line and short reasons; QEMU's MSR error is kept in accel.json and lab.json."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qemu-system-x86_64").write_text(FAKE_QEMU_ABORT)
    (bin_dir / "qemu-system-x86_64").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv(accel.ENV_OVERRIDE, raising=False)
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(accel, "KVM_DEVICE", device)
    lab_dir = tmp_path / "lab"
    lab = Lab(LabPaths(lab_dir))

    verdict = lab.choose_accel(kernel=None, log=print)
    summary = {"seconds": 1.0, "accel": lab.state()["accel"], "pve": "ssh", "inventory": "inv"}
    print("\n".join(format_summary({**summary, "vms": {}})))
    assert pvelab_main(["--lab", str(lab_dir), "status"]) == 0

    out, err = capfd.readouterr()
    assert verdict.accel == "tcg"
    assert "MSR" not in out + err and "Assertion" not in out + err
    assert [line for line in out.splitlines() if line.startswith("[lab]")] == [
        "[lab] KVM is not usable here (a test guest under KVM stopped at start, QEMU exit -6);"
        " using TCG (software emulation: slower, fine)"
    ]
    assert "failed to set MSR 0x10a" in (lab_dir / accel.CACHE_NAME).read_text()
    assert "failed to set MSR 0x10a" in lab.state()["accel"]["detail"]


def test_a_cached_verdict_of_the_old_format_is_probed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(accel.ENV_OVERRIDE, raising=False)
    old = {"boot_id": accel.boot_id(), "accel": "tcg", "reason": "qemu said: failed to set MSR"}
    (tmp_path / accel.CACHE_NAME).write_text(json.dumps(old))
    monkeypatch.setattr(accel, "_probe_kvm", lambda _k: accel.Verdict("tcg", "probed"))
    assert accel.probe(LabPaths(tmp_path)) == accel.Verdict("tcg", "probed")
