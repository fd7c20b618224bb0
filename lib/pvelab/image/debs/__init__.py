"""The lab's own test packages: sources in this directory, built offline with `dpkg-deb`."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent

IMAGE_VERSION = "1.0-1"  # installed in the image
UPDATE_VERSION = "1.1-1"  # offered by the lab's apt repository (a real upgrade)

# Installed in the image at IMAGE_VERSION, upgraded from the repository.
IN_IMAGE = ("pvelab-kernel-sim", "pvelab-conffile", "pvelab-motd")
# Only in the repository: installed by the lab's faults (dpkg lock held, half-configured).
REPO_ONLY = ("pvelab-slow", "pvelab-halfconf")
ALL = IN_IMAGE + REPO_ONLY

# The conffile the image modifies after installing IMAGE_VERSION (so upgrades would prompt).
MODIFIED_CONFFILE = Path("etc/pvelab/conffile.conf")
LOCAL_EDIT = "# edited locally by the pvelab image build\nlocal_setting = kept\n"


class DebBuildError(Exception):
    """dpkg-deb could not build a test package; `.package`, `.output` say which and why."""

    def __init__(self, package: str, output: str) -> None:
        super().__init__(f"dpkg-deb --build {package} failed:\n{output[-2000:]}")
        self.package = package
        self.output = output


def source_files() -> list[Path]:
    """Every file that goes into the packages (for recipe hashes), sorted."""
    return sorted(p for name in ALL for p in (SOURCE_DIR / name).rglob("*") if p.is_file())


def _render(src: Path, dst: Path, version: str) -> None:
    """Copy one package tree into `dst`, substituting @VERSION@ in every file."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text().replace("@VERSION@", version))
        target.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)


def _installed_size_kib(tree: Path) -> int:
    files = [p for p in tree.rglob("*") if p.is_file() and "DEBIAN" not in p.parts]
    return max(1, sum((p.stat().st_size + 1023) // 1024 for p in files))


def build_deb(name: str, version: str, out_dir: Path) -> Path:
    """Build `<name>_<version>_all.deb` into `out_dir` (no network, reproducible) and return it."""
    if name not in ALL:
        raise ValueError(f"unknown pvelab test package {name!r} (known: {', '.join(ALL)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{name}_{version}_all.deb"
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        tree = Path(tmp) / name
        _render(SOURCE_DIR / name, tree, version)
        control = tree / "DEBIAN" / "control"
        size = str(_installed_size_kib(tree))
        control.write_text(control.read_text().replace("@INSTALLED_SIZE@", size))
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SOURCE_DATE_EPOCH": "1700000000"}
        proc = subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        raise DebBuildError(name, proc.stdout + proc.stderr)
    return deb


def build_all(names: tuple[str, ...], version: str, out_dir: Path) -> list[Path]:
    """Build several packages at one version; returns the .deb paths."""
    return [build_deb(name, version, out_dir) for name in names]
