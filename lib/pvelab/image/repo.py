"""The lab's flat apt repository: the image's debs, real Debian updates, the test packages."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pvelab.image import debs
from pvelab.image.build import Image

Log = Callable[[str], None]


class RepoError(Exception):
    """The repository could not be built; `.command` and `.output` say why."""

    def __init__(self, command: list[str], output: str) -> None:
        super().__init__(f"repo: `{' '.join(command)}` failed:\n{output[-2000:]}")
        self.command = command
        self.output = output


def write_indexes(repo_dir: Path) -> None:
    """Packages, Packages.gz and a Release with their hashes (flat repository, `./`)."""
    proc = subprocess.run(
        ["dpkg-scanpackages", "-m", "."], cwd=repo_dir, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RepoError(["dpkg-scanpackages", "-m", "."], proc.stderr)
    (repo_dir / "Packages").write_text(proc.stdout)
    with gzip.GzipFile(repo_dir / "Packages.gz", "wb", mtime=0) as gz:
        gz.write(proc.stdout.encode())
    lines = [
        "Origin: pvelab", "Label: pvelab", "Suite: pvelab", "Codename: pvelab",
        time.strftime("Date: %a, %d %b %Y %H:%M:%S UTC", time.gmtime()),
        "Architectures: amd64 all", "Description: pvelab lab repository",
    ]  # fmt: skip
    for algo, field in (("md5", "MD5Sum"), ("sha256", "SHA256")):
        lines.append(f"{field}:")
        for name in ("Packages", "Packages.gz"):
            data = (repo_dir / name).read_bytes()
            lines.append(f" {hashlib.new(algo, data).hexdigest()} {len(data)} {name}")
    (repo_dir / "Release").write_text("\n".join(lines) + "\n")


def repo_key(image: Image) -> str:
    """Cache key of the built repository: the image recipe (which covers this file)."""
    return image.recipe


def _build_cached(image: Image, log: Log) -> Path:
    cached = image.dir / f"repo-{repo_key(image)}"
    if (cached / "Release").is_file():
        return cached
    tmp = image.dir / f"repo.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    began = time.monotonic()
    for sub in ("base", "updates"):
        for deb in sorted((image.pool / sub).glob("*.deb")):
            os.link(deb, tmp / deb.name)
    debs.build_all(debs.ALL, debs.UPDATE_VERSION, tmp)
    write_indexes(tmp)
    os.rename(tmp, cached)
    count = len(list(cached.glob("*.deb")))
    log(f"[repo] built {cached} ({count} packages) in {time.monotonic() - began:.1f} s")
    return cached


def ensure_repo(image: Image, repo_dir: Path, log: Log = print) -> None:
    """Make `repo_dir` the lab's flat apt repository (hard links into the image cache)."""
    cached = _build_cached(image, log)
    stamp = repo_dir / ".pvelab-repo"
    if stamp.is_file() and stamp.read_text().strip() == cached.name:
        return
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo_dir.mkdir(parents=True)
    for path in cached.iterdir():
        try:
            os.link(path, repo_dir / path.name)
        except OSError:  # another filesystem: copy instead
            shutil.copy2(path, repo_dir / path.name)
    stamp.write_text(cached.name + "\n")
    log(f"[repo] {repo_dir} ready")


def start_repo_server(repo_dir: Path, port: int, log_file: Path) -> int:
    """Serve `repo_dir` on 127.0.0.1:port in a detached process; returns its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
             "--directory", str(repo_dir), str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    return proc.pid
