"""Keep secrets out of every artifact: known secret values, private keys, credentials in text."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

MASK = "***REDACTED***"
# Names whose values are secrets (env vars, inventory vars, options); `_file`/`_path` hold paths.
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|credential|private[_-]?key|vault", re.I
)
NOT_SECRET_NAME = re.compile(r"(_file|_path|_sock|_dir)$", re.I)
MIN_SECRET_LEN = 4  # shorter values would redact ordinary words

_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|\Z)", re.S
)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(@)", re.I)
_NAME = r"[\w.-]*(?:pass(?:word|wd|phrase)?|secret|token|api[_-]?key|credential)[\w.-]*"
_ASSIGN = re.compile(rf"(?i)(\b{_NAME}\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s\"'<>&,;]+)")
_FLAG = re.compile(rf"(?i)(--{_NAME}\s+)([^\s\"'<>&]+)")


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not NOT_SECRET_NAME.search(name)


class Redactor:
    """Replaces secrets in text: known values (from the environment and the inventory), private
    key blocks, `password=...`-style assignments and URL credentials."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets: set[str] = set()
        self.add(secrets)

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            value = str(value).strip()
            if len(value) >= MIN_SECRET_LEN:
                self.secrets.add(value)

    def add_environment(self, environ: Mapping[str, str]) -> None:
        self.add(v for k, v in environ.items() if is_secret_name(k))

    def add_inventory(self, path: str | Path) -> None:
        """Values of secret-named variables anywhere in the YAML inventory."""
        try:
            tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return
        self.add(_secret_values(tree))

    def literal(self, text: str) -> str:
        """Only the known values, in plain, HTML-escaped and JSON-escaped form (safe on markup)."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            for form in {secret, html.escape(secret), json.dumps(secret)[1:-1]}:
                text = text.replace(form, MASK)
        return text

    def __call__(self, text: str) -> str:
        text = self.literal(text)
        text = _PEM.sub(MASK, text)
        text = _URL_USERINFO.sub(rf"\1{MASK}\2", text)
        text = _FLAG.sub(rf"\1{MASK}", text)
        return _ASSIGN.sub(rf"\1{MASK}", text)

    def obj(self, value: Any) -> Any:
        """A JSON-able structure with every string redacted (secret-named keys masked whole)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {
                k: MASK if is_secret_name(str(k)) and v else self.obj(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.obj(v) for v in value]
        return value

    def file(self, path: Path) -> None:
        """Redact a written file in place (JUnit XML, the HTML): known values only."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return
        clean = _URL_USERINFO.sub(rf"\1{MASK}\2", _PEM.sub(MASK, self.literal(text)))
        if clean != text:
            path.write_text(clean, encoding="utf-8")


def _secret_values(tree: Any) -> list[str]:
    found: list[str] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            if is_secret_name(str(key)) and isinstance(value, str | int):
                found.append(str(value))
            else:
                found.extend(_secret_values(value))
    elif isinstance(tree, list):
        for value in tree:
            found.extend(_secret_values(value))
    return found
