"""The lab's guest image recipe and, with `-m lab`, the real cached image (pvelab.image)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pvelab.image import build, debs, recipe, updates

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
"""


@pytest.fixture
def recipe_tree(tmp_path: Path) -> list[Path]:
    """A small stand-in recipe: one script and one guest file."""
    (tmp_path / "guest").mkdir()
    files = [tmp_path / "image.py", tmp_path / "guest" / "seed"]
    files[0].write_text("build\n")
    files[1].write_text("#!/bin/sh\n")
    return files


def test_recipe_hash_is_stable() -> None:
    assert recipe.recipe_hash() == recipe.recipe_hash()


def test_recipe_hash_changes_when_a_guest_file_changes(recipe_tree: list[Path]) -> None:
    root = recipe_tree[0].parent
    before = recipe.recipe_hash(recipe_tree, root)
    recipe_tree[1].write_text("#!/bin/sh\necho changed\n")
    assert recipe.recipe_hash(recipe_tree, root) != before


def test_recipe_hash_changes_when_a_file_becomes_executable(recipe_tree: list[Path]) -> None:
    root = recipe_tree[0].parent
    before = recipe.recipe_hash(recipe_tree, root)
    recipe_tree[1].chmod(0o755)
    assert recipe.recipe_hash(recipe_tree, root) != before


def test_recipe_covers_guest_files_build_code_and_test_packages() -> None:
    names = {str(p) for p in recipe.recipe_files()}
    assert str(recipe.GUEST_DIR / "usr/local/sbin/pvelab-seed") in names
    assert str(debs.SOURCE_DIR / "pvelab-conffile/DEBIAN/control") in names
    assert any(n.endswith("pvelab/image/repo.py") for n in names)


def test_guest_sources_list_names_only_the_lab_repo() -> None:
    text = (recipe.GUEST_DIR / "etc/apt/sources.list").read_text()
    assert text == "deb [trusted=yes] http://10.0.2.100/ ./\n"


def test_guest_scripts_are_executable() -> None:
    for script in (recipe.GUEST_DIR / "usr/local/sbin").iterdir():
        assert script.stat().st_mode & 0o111, script


def test_parse_mirrors_reads_deb822_sources() -> None:
    assert updates.parse_mirrors(DEB822) == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )


def test_parse_mirrors_reads_one_line_sources_and_defaults_security() -> None:
    text = "deb [arch=amd64] http://ftp.example/debian/ bookworm main\n"
    assert updates.parse_mirrors(text) == (
        "http://ftp.example/debian",
        "http://ftp.example/debian-security",
    )


def test_parse_mirrors_falls_back_to_deb_debian_org() -> None:
    assert updates.parse_mirrors("") == (
        updates.DEFAULT_MIRROR,
        updates.DEFAULT_MIRROR + "-security",
    )


def test_apt_timers_are_masked() -> None:
    assert {"apt-daily.timer", "apt-daily-upgrade.timer"} <= set(build.MASKED_UNITS)


# ---- the real image (built or reused from the cache; about 4 minutes the first time) ----


@pytest.fixture(scope="module")
def built() -> build.Image:
    return build.ensure_image(log=lambda _: None)


@pytest.fixture(scope="module")
def raw_disk(built: build.Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("disk") / "base.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(built.base), str(raw)], check=True)
    return raw


def debugfs(raw: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(raw)], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.lab
def test_image_sources_list_is_only_the_lab_repo(raw_disk: Path) -> None:
    assert (
        debugfs(raw_disk, "cat /etc/apt/sources.list")
        == "deb [trusted=yes] http://10.0.2.100/ ./\n"
    )


@pytest.mark.lab
def test_image_has_no_sources_list_d_entries(raw_disk: Path) -> None:
    names = debugfs(raw_disk, "ls -p /etc/apt/sources.list.d").split()
    assert [n for n in names if n.endswith((".list/", ".sources/"))] == []


@pytest.mark.lab
def test_image_has_no_ssh_host_keys(raw_disk: Path) -> None:
    assert "ssh_host_" not in debugfs(raw_disk, "ls /etc/ssh")


@pytest.mark.lab
def test_image_machine_id_is_empty(raw_disk: Path) -> None:
    assert debugfs(raw_disk, "cat /etc/machine-id") == ""


@pytest.mark.lab
def test_image_conffile_is_locally_modified(raw_disk: Path) -> None:
    assert debs.LOCAL_EDIT in debugfs(raw_disk, "cat /etc/pvelab/conffile.conf")


@pytest.mark.lab
def test_image_masks_apt_daily_timer(raw_disk: Path) -> None:
    assert "/dev/null" in debugfs(raw_disk, "stat /etc/systemd/system/apt-daily.timer")


@pytest.mark.lab
def test_image_packages_include_test_packages_at_image_version(built: build.Image) -> None:
    assert {n: built.packages.get(n) for n in debs.IN_IMAGE} == dict.fromkeys(
        debs.IN_IMAGE, debs.IMAGE_VERSION
    )
    assert "qemu-guest-agent" in built.packages and "dnsmasq" in built.packages


@pytest.mark.lab
def test_image_boot_files_are_small_and_present(built: build.Image) -> None:
    assert built.kernel.stat().st_size > 1_000_000
    assert 1_000_000 < built.initrd.stat().st_size < 20_000_000


@pytest.mark.lab
def test_cached_image_is_reused_quickly() -> None:
    messages: list[str] = []
    build.ensure_image(log=messages.append)
    assert messages == []


def test_recipe_hash_does_not_depend_on_where_the_image_package_sits(tmp_path: Path) -> None:
    """Moving pvelab/image (or the checkout) must not rebuild the cached image."""
    moved = tmp_path / "elsewhere" / "image"
    shutil.copytree(recipe.IMAGE_DIR, moved, ignore=shutil.ignore_patterns("__pycache__"))
    files = [moved / p.relative_to(recipe.IMAGE_DIR) for p in recipe.recipe_files()]
    assert recipe.recipe_hash(files, moved) == recipe.recipe_hash()
