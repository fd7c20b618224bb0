"""The lab's test packages and flat apt repository (pvelab.debs, pvelab.repo)."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from pvelab.fleet import faults, roster
from pvelab.image import debs, repo, updates
from pvelab.image.build import Image
from pvelab.paths import LabPaths

APT_SIMULATION = """\
NOTE: This is only a simulation!
Reading package lists...
Calculating upgrade...
The following packages will be upgraded:
  libssl3 openssl
Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst openssl [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst libnew1 (1.2-3 Debian:12.10/stable [amd64])
Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
"""


def control(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def extract(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-R", str(deb), str(dest)], check=True)
    return dest


def packages_index(repo_dir: Path) -> dict[str, list[str]]:
    """name -> versions listed in a Packages file."""
    found: dict[str, list[str]] = {}
    for stanza in (repo_dir / "Packages").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        if "Package" in fields:
            found.setdefault(fields["Package"], []).append(fields["Version"])
    return found


@pytest.mark.parametrize("name", debs.ALL)
def test_test_package_builds_at_requested_version(tmp_path: Path, name: str) -> None:
    deb = debs.build_deb(name, debs.UPDATE_VERSION, tmp_path)
    assert (control(deb, "Package"), control(deb, "Version")) == (name, debs.UPDATE_VERSION)
    assert control(deb, "Architecture") == "all"


def test_image_version_is_older_than_repo_version() -> None:
    proc = subprocess.run(
        ["dpkg", "--compare-versions", debs.IMAGE_VERSION, "lt", debs.UPDATE_VERSION], check=False
    )
    assert proc.returncode == 0


def test_kernel_sim_postinst_writes_reboot_required(tmp_path: Path) -> None:
    tree = extract(debs.build_deb("pvelab-kernel-sim", "1.1-1", tmp_path), tmp_path / "x")
    postinst = tree / "DEBIAN" / "postinst"
    assert postinst.stat().st_mode & 0o111
    text = postinst.read_text()
    assert "touch /var/run/reboot-required" in text
    assert 'echo "$DPKG_MAINTSCRIPT_PACKAGE" >> /var/run/reboot-required.pkgs' in text


def test_kernel_sim_postinst_runs_like_debians_hook(tmp_path: Path) -> None:
    tree = extract(debs.build_deb("pvelab-kernel-sim", "1.1-1", tmp_path), tmp_path / "x")
    script = (tree / "DEBIAN" / "postinst").read_text().replace("/var/run", str(tmp_path))
    env = {"PATH": os.environ["PATH"], "DPKG_MAINTSCRIPT_PACKAGE": "pvelab-kernel-sim"}
    for _ in range(2):  # a second run must not list the package twice
        subprocess.run(["sh", "-c", script, "postinst", "configure"], env=env, check=True)
    assert (tmp_path / "reboot-required").exists()
    assert (tmp_path / "reboot-required.pkgs").read_text() == "pvelab-kernel-sim\n"


def test_conffile_is_a_conffile_that_changes_between_versions(tmp_path: Path) -> None:
    old = extract(
        debs.build_deb("pvelab-conffile", debs.IMAGE_VERSION, tmp_path / "a"), tmp_path / "o"
    )
    new = extract(
        debs.build_deb("pvelab-conffile", debs.UPDATE_VERSION, tmp_path / "b"), tmp_path / "n"
    )
    assert (new / "DEBIAN" / "conffiles").read_text().split() == ["/etc/pvelab/conffile.conf"]
    conf = debs.MODIFIED_CONFFILE
    assert (old / conf).read_text() != (new / conf).read_text()


def test_slow_preinst_sleeps_for_configured_seconds(tmp_path: Path) -> None:
    tree = extract(debs.build_deb("pvelab-slow", "1.1-1", tmp_path), tmp_path / "x")
    text = (tree / "DEBIAN" / "preinst").read_text()
    assert "/etc/pvelab/slow-seconds" in text and "echo 60" in text and 'sleep "$seconds"' in text


def test_parse_simulation_reads_upgrades_and_new_packages() -> None:
    assert updates.parse_simulation(APT_SIMULATION) == [
        updates.Upgrade("libssl3", "3.0.15-1~deb12u1", "3.0.16-1~deb12u1"),
        updates.Upgrade("openssl", "3.0.15-1~deb12u1", "3.0.16-1~deb12u1"),
        updates.Upgrade("libnew1", None, "1.2-3"),
    ]


def test_update_sources_name_updates_and_security() -> None:
    text = updates.update_sources(
        "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    )
    assert "bookworm-updates main" in text
    assert "http://deb.debian.org/debian-security bookworm-security main" in text


def test_indexes_list_test_packages_with_matching_release_hashes(tmp_path: Path) -> None:
    debs.build_all(debs.ALL, debs.UPDATE_VERSION, tmp_path)
    repo.write_indexes(tmp_path)
    assert packages_index(tmp_path) == {name: [debs.UPDATE_VERSION] for name in debs.ALL}
    assert (
        gzip.decompress((tmp_path / "Packages.gz").read_bytes())
        == (tmp_path / "Packages").read_bytes()
    )
    data = (tmp_path / "Packages").read_bytes()
    release = (tmp_path / "Release").read_text()
    assert f" {hashlib.sha256(data).hexdigest()} {len(data)} Packages\n" in release


def fake_image(tmp_path: Path) -> Image:
    """An Image whose pool holds one 'debootstrap' deb: enough for ensure_repo."""
    image_dir = tmp_path / "image-0123456789abcdef"
    debs.build_deb("pvelab-motd", debs.IMAGE_VERSION, image_dir / "pool" / "base")
    (image_dir / "pool" / "updates").mkdir()
    files = (image_dir / "base.qcow2", image_dir / "vmlinuz", image_dir / "initrd.img")
    return Image(image_dir, *files, "0123456789abcdef", {"pvelab-motd": debs.IMAGE_VERSION})


def test_ensure_repo_holds_pool_and_test_packages(tmp_path: Path) -> None:
    repo_dir = tmp_path / "lab" / "repo"
    repo.ensure_repo(fake_image(tmp_path), repo_dir, log=lambda _: None)
    index = packages_index(repo_dir)
    assert index["pvelab-motd"] == [debs.IMAGE_VERSION, debs.UPDATE_VERSION]
    assert index["pvelab-slow"] == [debs.UPDATE_VERSION]


def test_ensure_repo_second_call_reuses_cache(tmp_path: Path) -> None:
    image = fake_image(tmp_path)
    repo_dir = tmp_path / "repo"
    repo.ensure_repo(image, repo_dir, log=lambda _: None)
    messages: list[str] = []
    repo.ensure_repo(image, repo_dir, log=messages.append)
    assert messages == []
    (repo_dir / ".pvelab-repo").unlink()  # a stale or foreign repo dir is refreshed by links
    repo.ensure_repo(image, repo_dir, log=messages.append)
    assert not any("built" in m for m in messages)
    assert (repo_dir / "Packages").stat().st_ino == (
        image.dir / "repo-0123456789abcdef" / "Packages"
    ).stat().st_ino


def test_bad_update_fault_adds_both_versions_and_ensure_repo_restores(tmp_path: Path) -> None:
    image, paths = fake_image(tmp_path), LabPaths(tmp_path / "lab")
    cached = image.dir / "repo-0123456789abcdef"
    repo.ensure_repo(image, paths.repo_dir, log=lambda _: None)
    original = {p.name: p.read_bytes() for p in cached.iterdir()}

    faults.offer_bad_update(paths, roster.by_name("pbs"))
    index = packages_index(paths.repo_dir)
    assert index["pvelab-bad-update"] == ["1.0-1", "1.1-1"]
    assert index["pvelab-motd"] == [debs.IMAGE_VERSION, debs.UPDATE_VERSION]  # the rest kept
    data = (paths.repo_dir / "Packages").read_bytes()
    release = (paths.repo_dir / "Release").read_text()
    assert f" {hashlib.sha256(data).hexdigest()} {len(data)} Packages\n" in release
    assert {p.name: p.read_bytes() for p in cached.iterdir()} == original  # cache untouched

    messages: list[str] = []
    repo.ensure_repo(image, paths.repo_dir, log=messages.append)
    assert messages == [f"[repo] {paths.repo_dir} ready"]
    assert "pvelab-bad-update" not in packages_index(paths.repo_dir)
    assert sorted(p.name for p in paths.repo_dir.glob("pvelab-bad-update*")) == []
    assert (paths.repo_dir / "Packages").stat().st_ino == (cached / "Packages").stat().st_ino


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_repo_server_serves_packages_on_loopback(tmp_path: Path) -> None:
    (tmp_path / "Packages").write_text("Package: x\n")
    port = free_port()
    pid = repo.start_repo_server(tmp_path, port, tmp_path / "log" / "http.log")
    try:
        assert os.getsid(pid) == pid  # own session: outlives the caller's process group
        deadline = time.monotonic() + 30  # a loaded CI machine starts Python slowly
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/Packages", timeout=2) as r:
                    assert r.read() == b"Package: x\n"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


@pytest.mark.lab
def test_real_repo_offers_upgrades_over_the_image(tmp_path: Path) -> None:
    from pvelab.image.build import ensure_image

    image = ensure_image(log=lambda _: None)
    repo.ensure_repo(image, tmp_path / "repo", log=lambda _: None)
    index = packages_index(tmp_path / "repo")
    for name in debs.IN_IMAGE:
        assert image.packages[name] == debs.IMAGE_VERSION
        assert debs.UPDATE_VERSION in index[name]
    assert image.packages["qemu-guest-agent"] in index["qemu-guest-agent"]
    assert "dnsmasq" in index and "dnsmasq-base" in index
    newer = [n for n, vs in index.items() if n in image.packages and not n.startswith("pvelab-")
             and any(v != image.packages[n] for v in vs)]  # fmt: skip
    assert newer, "no real Debian update in the repository"
