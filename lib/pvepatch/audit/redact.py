"""Keep secrets out of every artifact: known secret values, private keys, credentials in text."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

MASK = "***REDACTED***"
MIN_SECRET_LEN = 4  # shorter values would redact ordinary words
NOT_SECRET_VALUES = {"true", "false", "none", "null", "yes"}
MIN_KEY_LINE = 16  # a learned line of key material; shorter tails of a block are not kept

# Secret-looking names, matched on words: a name is split on `_`, `-`, `.` and case changes.
SECRET_WORDS = {
    "password", "passwords", "passwd", "pass", "passphrase", "secret", "secrets",
    "token", "tokens", "apikey", "credential", "credentials", "authorization",
}  # fmt: skip
# One word that ends so is a secret too (PGPASSWORD, clientsecret); `pass` is not a suffix
# here, or BYPASS and COMPASS would be secrets.
SECRET_SUFFIXES = ("password", "passwords", "passwd", "passphrase", "secret", "token")
SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("auth", "key")}
SECRET_PREFIXES = {"vault"}  # Ansible's convention: vault_* variables hold vaulted values
# A last word that says the value is where a secret lives, not the secret (`..._password_file`).
LOCATION_WORDS = {"file", "path", "dir", "sock", "socket", "home", "url", "uri", "cmd"}
_WORD_SPLIT = re.compile(r"[\W_]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def name_words(name: str) -> list[str]:
    """`MY_SECRET_KEY`, `my-secret-key`, `mySecretKey` -> ['my', 'secret', 'key']."""
    return [w.lower() for w in _WORD_SPLIT.split(name) if w]


def is_secret_name(name: str) -> bool:
    """True for `PASSWORD`, `DB_PASSWORD`, `API_TOKEN`, `apiKey`, `vault_db`; False for
    `PASSENGER_PATH`, `COMPASS_HOME`, `BYPASS_DIR`, `ansible_ssh_private_key_file`, `PWD`."""
    words = name_words(name)
    if not words or words[-1] in LOCATION_WORDS:
        return False
    if words[0] in SECRET_PREFIXES and len(words) > 1:
        return True
    if "pwd" in words[1:]:  # MYSQL_PWD; a bare PWD is the working directory
        return True
    return (
        any(w in SECRET_WORDS or w.endswith(SECRET_SUFFIXES) for w in words)
        or any(pair in SECRET_PAIRS for pair in zip(words, words[1:], strict=False))
    )  # fmt: skip


# A private key block (PEM, OpenSSH, PGP), whole or cut by a tail at either end.
_KEY_KIND = r"[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?"
_KEY_BLOCK = re.compile(rf"-----BEGIN ({_KEY_KIND})-----.*?(?:-----END \1-----|\Z)", re.S)
_KEY_LINE = (
    r"[^\S\n]*(?:E[^\S\n]+)?(?:[A-Za-z0-9+/=]{8,}|=[A-Za-z0-9+/]{4})[^\S\n]*\n"  # `E` is pytest's
)
_KEY_END = re.compile(rf"(?m)(?:^{_KEY_LINE})*^[^\S\n]*(?:E[^\S\n]+)?-----END {_KEY_KIND}-----")
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(@)", re.I)
_VALUE = r"(?:(?:Bearer|Basic|Token|Digest)[ \t]+)?(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'<>&,;]+)"
# `name=value`, `name: value`, `"name": "value"`, `--name value`. The value is in a lookahead, so
# a name that is no secret consumes only itself (`Error: password=x` still finds `password`).
_ASSIGN = re.compile(
    rf"(?<![\w.])(?P<q>[\"']?)(?P<name>[A-Za-z_][\w.-]*)(?P=q)[ \t]*[=:][ \t]*(?=(?P<value>{_VALUE}))"
)
_FLAG = re.compile(r"(?<![\w-])--(?P<name>[A-Za-z][\w-]*)[ \t]+(?=(?P<value>[^\s\"'<>&-]\S*))")


class Redactor:
    """Replaces secrets in text: known values (from the environment and the inventory, and the
    lines of every private key seen), private key blocks, `password=...`-style assignments and
    URL credentials. One per run: what it learns masks the rest of the run."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets: set[str] = set()
        self._literal: re.Pattern[str] | None = None  # every known value, rebuilt after an add
        self.add(secrets)

    @classmethod
    def for_run(cls, environ: Mapping[str, str], inventory: str | Path | None) -> Redactor:
        """The run's redactor: secret-named environment and inventory variables."""
        redactor = cls()
        redactor.add_environment(environ)
        if inventory is not None:
            redactor.add_inventory(inventory)
        return redactor

    def add(self, values: Iterable[Any]) -> None:
        for value in values:
            value = str(value).strip()
            if len(value) >= MIN_SECRET_LEN and value.lower() not in NOT_SECRET_VALUES:
                if value not in self.secrets:
                    self.secrets.add(value)
                    self._literal = None

    def add_environment(self, environ: Mapping[str, str]) -> None:
        self.add(v for k, v in environ.items() if is_secret_name(k))

    def add_inventory(self, path: str | Path) -> None:
        """Values of secret-named variables anywhere in the YAML inventory."""
        try:
            tree = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_InventoryLoader)
        except (OSError, yaml.YAMLError):
            return
        self.add(_secret_values(tree))

    def learn(self, text: str) -> None:
        """Remember the lines of every private key block in `text`, so a tail of the same
        output that shows only part of the block (no BEGIN line) is masked as well."""
        for block in _KEY_BLOCK.finditer(text):
            self.add(
                line.strip() for line in block.group(0).splitlines()[1:-1]
                if len(line.strip()) >= MIN_KEY_LINE
            )  # fmt: skip

    def literal(self, text: str) -> str:
        """Only the known values, in plain, HTML-escaped and JSON-escaped form (safe on markup)."""
        if not self.secrets:
            return text
        if self._literal is None:
            forms = {f for s in self.secrets for f in (s, html.escape(s), json.dumps(s)[1:-1])}
            longest_first = sorted(forms, key=len, reverse=True)
            self._literal = re.compile("|".join(map(re.escape, longest_first)))
        return self._literal.sub(MASK, text)

    def blocks(self, text: str) -> str:
        """Private key blocks, learned first, then masked (whole, or the part a tail shows)."""
        self.learn(text)
        return _KEY_END.sub(MASK, _KEY_BLOCK.sub(MASK, text))

    def __call__(self, text: str) -> str:
        text = self.literal(self.blocks(text))
        text = _URL_USERINFO.sub(rf"\1{MASK}\2", text)
        return _mask_named(_ASSIGN, _mask_named(_FLAG, text))

    def obj(self, value: Any) -> Any:
        """A JSON-able structure with every string redacted (secret-named keys masked whole)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {
                self.obj(k): MASK if is_secret_name(str(k)) and v else self.obj(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.obj(v) for v in value]
        return value

    def file(self, path: Path, markup: bool = True) -> None:
        """Redact a written file in place. On HTML (`markup`) only what cannot be markup or
        script: known values, key blocks, URL credentials; elsewhere (JUnit XML) everything."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return
        if markup:
            clean = _URL_USERINFO.sub(rf"\1{MASK}\2", self.literal(self.blocks(text)))
        else:
            clean = self(text)
        if clean != text:
            path.write_text(clean, encoding="utf-8")


def _mask_named(pattern: re.Pattern[str], text: str) -> str:
    """Mask the value of each match of `pattern` whose name is secret-looking."""
    out, pos = [], 0
    for match in pattern.finditer(text):
        if match.start() < pos or not is_secret_name(match.group("name")):
            continue
        out += [text[pos : match.start("value")], MASK]
        pos = match.end("value")
    return "".join(out) + text[pos:]


class _InventoryLoader(yaml.SafeLoader):
    """SafeLoader that reads Ansible's `!vault` values as text (ciphertext, not a secret)."""


_InventoryLoader.add_constructor(
    "!vault",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


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


# --- in pytest: one redactor per run, and the reports redacted before any reporter --------

REDACTOR_KEY = pytest.StashKey[Redactor]()


def redact_text(config: pytest.Config, text: str) -> str:
    """`text` redacted by the run's redactor (for the terminal lines pvepatch writes itself);
    without one (pvepatch inactive), by the patterns alone."""
    redactor = config.stash.get(REDACTOR_KEY, None) or Redactor()
    return redactor(text)


@dataclass(frozen=True)
class RedactedCrash:
    """Where a redacted failure happened: what `-ra`, `--tb=line` and JUnit's message read."""

    path: str
    lineno: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.message}"


class RedactedRepr:
    """A failure's text after redaction, standing in for pytest's longrepr object."""

    def __init__(self, text: str, reprcrash: RedactedCrash | None):
        self.text, self.reprcrash = text, reprcrash

    def toterminal(self, out: Any) -> None:
        for line in self.text.splitlines():
            out.line(line, red=line.startswith("E "), bold=line.startswith("E "))

    def __str__(self) -> str:
        return self.text


def redact_report(report: pytest.TestReport | pytest.CollectReport, redact: Redactor) -> None:
    """Redact a report in place before the terminal, JUnit XML and pytest-html read it: its
    failure text, skip reason, captured output and log, user properties, text extras."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        report.longrepr = (longrepr[0], longrepr[1], redact(str(longrepr[2])))
    elif isinstance(longrepr, str):
        report.longrepr = redact(longrepr)
    elif longrepr is not None:
        text = report.longreprtext
        clean = redact(text)
        if clean != text:  # untouched otherwise: the terminal keeps pytest's own layout
            crash = getattr(longrepr, "reprcrash", None)
            report.longrepr = RedactedRepr(clean, crash and _crash(crash, redact))  # type: ignore[assignment]
    report.sections = [(title, redact(content)) for title, content in report.sections]
    if isinstance(report, pytest.TestReport):
        report.user_properties = [
            (name, MASK if is_secret_name(name) else _redact_value(value, redact))
            for name, value in report.user_properties
        ]
    for extra in getattr(report, "extras", []):
        if isinstance(extra, dict) and extra.get("format_type") in {"text", "html", "json", "url"}:
            extra["content"] = redact(str(extra.get("content", "")))


def _crash(crash: Any, redact: Redactor) -> RedactedCrash:
    return RedactedCrash(str(crash.path), int(crash.lineno), redact(str(crash.message)))


def _redact_value(value: object, redact: Redactor) -> object:
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))
