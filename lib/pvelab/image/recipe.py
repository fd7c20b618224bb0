"""The image recipe: what goes into the guest image, and the hash that names its cache entry."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from pvelab.image import debs

IMAGE_DIR = Path(__file__).resolve().parent
GUEST_DIR = IMAGE_DIR / "guest"
SUITE = "bookworm"
INCLUDE = (
    "systemd-sysv", "udev", "dbus", "openssh-server", "qemu-guest-agent", "linux-image-amd64",
    "initramfs-tools", "iproute2", "dnsmasq", "procps", "kmod", "netbase", "bind9-dnsutils",
)  # fmt: skip
# The modules whose code decides what the image and its repository hold.
BUILD_CODE = ("build.py", "recipe.py", "updates.py", "repo.py", "debs/__init__.py")


def recipe_files() -> list[Path]:
    """Everything whose change must rebuild the image: build code, guest files, test debs."""
    guest = sorted(p for p in GUEST_DIR.rglob("*") if p.is_file())
    return [*(IMAGE_DIR / name for name in BUILD_CODE), *guest, *debs.source_files()]


def recipe_hash(files: Sequence[Path] | None = None, root: Path = IMAGE_DIR) -> str:
    """Hash of the recipe: file names (relative to `root`), modes, contents, package list.

    Names are relative to the image package, so the hash does not depend on where the
    project is checked out nor on where `pvelab/image` sits in the tree."""
    digest = hashlib.sha256(f"{SUITE}\n{' '.join(INCLUDE)}\n".encode())
    for path in files if files is not None else recipe_files():
        digest.update(f"{path.relative_to(root)}:{path.stat().st_mode & 0o111:o}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
