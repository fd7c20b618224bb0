"""Read the inventory file into plain data, with bounded work and errors instead of tracebacks.

YAML here is untrusted input: nesting depth, alias expansion and file size are bounded before
anything walks the data, `!vault` values become `Vault` placeholders, and integers keep the
text they were written as (YAML 1.1 reads `0144` as octal 100).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pvepatch.inventory.problems import Problems

MAX_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 40
MAX_NODES = 100_000  # after alias expansion
_INI_SECTION = re.compile(r"^\[[^\]\s]+\]\s*([;#].*)?$", re.MULTILINE)
_INI_HOSTVAR = re.compile(r"^[^\s#;:]+\s+\w+=", re.MULTILINE)


class Vault(str):
    """An `!vault`-encrypted value: fine where unused, an error where pvepatch needs it."""


class WrittenInt(int):
    """An integer YAML read from a non-decimal form (octal, hex, leading zero, `1_0`, `1:40`)."""

    text: str

    def __new__(cls, value: int, text: str) -> WrittenInt:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


class _Loader(yaml.SafeLoader):
    """SafeLoader plus Ansible's tags, and a record of duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key in seen and key != "<<":
                self.duplicates.append((key_node.start_mark.line + 1, str(key)))
            seen.add(key)
        return super().construct_mapping(node, deep)


def _vault(loader: yaml.SafeLoader, node: yaml.Node) -> Vault:
    return Vault(loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else "")


def _unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    return loader.construct_object(node)


def _int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    value = yaml.SafeLoader.construct_yaml_int(loader, node)  # type: ignore[arg-type]
    text = str(node.value)
    return value if text.lstrip("+") == str(value) else WrittenInt(value, text)


_Loader.add_constructor("!vault", _vault)
_Loader.add_constructor("!unsafe", _unsafe)
_Loader.add_constructor("tag:yaml.org,2002:int", _int)


def read_text(path: Path, problems: Problems) -> str:
    """The file as text: refuse unreadable, huge and non-UTF-8 files."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        problems.fatal(f"cannot read inventory: {exc.strerror or exc}")
    if len(raw) > MAX_BYTES:
        problems.fatal(f"the inventory is larger than {MAX_BYTES // 1024 // 1024} MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.fatal(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} "
            "(save the inventory as UTF-8)"
        )


def looks_like_ini(text: str) -> str | None:
    """The first INI section header (`[group]` alone on a line), if the file looks like INI."""
    section = _INI_SECTION.search(text)
    if section and (_INI_HOSTVAR.search(text) or text.lstrip().startswith("[")):
        return section.group(0).split()[0]
    return None


def _ini_message(path: Path, header: str) -> str:
    return (
        f"this is an INI inventory ({header!r} is an INI section header); pvepatch reads the "
        f"YAML format: convert it with `ansible-inventory -i {path} --list -y > inventory.yaml`"
    )


def _check_shape(text: str, problems: Problems) -> None:
    """Bound the nesting depth from the event stream (PyYAML composes recursively)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                problems.fatal(f"nested deeper than {MAX_DEPTH} levels at line {line}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _expanded_size(root: yaml.Node, problems: Problems) -> None:
    """Refuse an alias bomb: count nodes as if every alias were copied (memoized, so linear)."""
    size: dict[int, int] = {}
    active: set[int] = set()

    def count(node: yaml.Node) -> int:
        key = id(node)
        if key in size:
            return size[key]
        if key in active:
            line = node.start_mark.line + 1
            problems.fatal(f"an alias refers to its own anchor (recursive data) at line {line}")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(count(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(count(k) + count(v) for k, v in node.value)
        active.discard(key)
        size[key] = min(total, MAX_NODES + 1)
        if total > MAX_NODES:
            problems.fatal(
                f"YAML aliases expand to more than {MAX_NODES} values (an alias bomb?); "
                "write the values out or use fewer nested aliases"
            )
        return size[key]

    count(root)


def load_yaml(path: Path, problems: Problems) -> Any:
    """Parse the inventory text into plain data, or record why not and stop."""
    text = read_text(path, problems)
    ini = looks_like_ini(text)
    try:
        _check_shape(text, problems)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _expanded_size(node, problems)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        if ini:
            problems.fatal(_ini_message(path, ini))
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        problems.fatal(f"YAML syntax error{where}: {problem}")
    if ini and not isinstance(data, dict):
        problems.fatal(_ini_message(path, ini))
    for line, key in loader.duplicates:
        problems.warnings.append(
            f"{path}: line {line}: key '{key}' is given twice in one mapping; "
            "the last one is used (as Ansible does)"
        )
    return data
