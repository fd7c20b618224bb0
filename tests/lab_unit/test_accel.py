"""The KVM probe: its guest really runs, `$PVELAB_ACCEL` wins, verdicts are cached per boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import accel


def test_probe_boot_sector_prints_marker_under_tcg(tmp_path: Path) -> None:
    disk = tmp_path / "boot.img"
    disk.write_bytes(accel.BOOT_SECTOR)
    ok, detail = accel.run_guest(
        ["-drive", f"file={disk},format=raw,if=ide"], tmp_path / "serial", accel.MARKER,
        wait=20, accel=("-accel", "tcg"),
    )  # fmt: skip
    assert ok, detail


def test_boot_sector_is_one_bootable_sector() -> None:
    assert len(accel.BOOT_SECTOR) == 512 and accel.BOOT_SECTOR.endswith(b"\x55\xaa")


@pytest.mark.parametrize("kind", ["tcg", "kvm"])
def test_env_override(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.ENV_OVERRIDE, kind)
    assert accel.probe(LabPaths(tmp_path))[0] == kind


def test_probe_caches_verdict_for_this_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(accel.ENV_OVERRIDE, raising=False)
    paths = LabPaths(tmp_path)
    verdict = accel.probe(paths, kernel=None, refresh=True)
    assert verdict[0] in ("kvm", "tcg") and verdict[1]
    cached = json.loads((tmp_path / accel.CACHE_NAME).read_text())
    assert cached["boot_id"] == accel.boot_id() and cached["accel"] == verdict[0]
    monkeypatch.setattr(accel, "_probe_kvm", lambda _k: pytest.fail("probe ran again"))
    assert accel.probe(paths) == verdict


def test_cache_of_another_boot_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.ENV_OVERRIDE, raising=False)
    (tmp_path / accel.CACHE_NAME).write_text(json.dumps({"boot_id": "old", "accel": "kvm"}))
    monkeypatch.setattr(accel, "_probe_kvm", lambda _k: ("tcg", "probed"))
    assert accel.probe(LabPaths(tmp_path)) == ("tcg", "probed")
