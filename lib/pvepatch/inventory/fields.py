"""Typed access to one host's variables, with errors that name file, host and field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pvepatch.errors import InventoryError
from pvepatch.inventory.source import Vault, WrittenInt

# systemd unit names: ASCII letters, digits and : - _ . \ @, never starting with '-'
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@][A-Za-z0-9:_.\\@-]{0,254}")
_DECIMAL = re.compile(r"[+]?[0-9]+")
_TRUE, _FALSE = {"yes", "true", "on", "1"}, {"no", "false", "off", "0"}


class Fields:
    """One host's merged variables; each accessor validates, or raises naming the field."""

    def __init__(self, path: str, host: str, hvars: Mapping[str, Any]):
        self.path, self.host, self.vars = path, host, hvars

    def error(self, field_name: str, message: str) -> InventoryError:
        return InventoryError(self.path, message, host=self.host, field=field_name)

    def _get(self, name: str, default: Any) -> Any:
        value = self.vars.get(name, default)
        if isinstance(value, Vault):
            raise self.error(
                name,
                "is vault-encrypted: vault-encrypted values are not supported for "
                f"'{name}' (write it in clear; pvepatch needs it before connecting)",
            )
        return value

    def text(self, name: str, default: str | None = None) -> str:
        value = self._get(name, default)
        if value is None:
            raise self.error(name, "is missing")
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
            raise self.error(name, f"must be a non-empty string, got {_show(value)}")
        return str(value)

    def word(self, name: str, default: str | None = None) -> str:
        """A text without whitespace or control characters (a name, an address)."""
        value = self.text(name, default)
        if any(c.isspace() or not c.isprintable() for c in value):
            raise self.error(name, f"must not contain spaces or control characters, got {value!r}")
        return value

    def optional_word(self, name: str) -> str | None:
        return None if self._get(name, None) is None else self.word(name)

    def integer(self, name: str, default: int | None = None, lo: int = 1, hi: int = 65535) -> int:
        value = self._get(name, default)
        if value is None:
            raise self.error(name, "is missing")
        number = _decimal(value)
        if number is None:
            raise self.error(name, _integer_problem(value))
        if not lo <= number <= hi:
            raise self.error(name, f"must be between {lo} and {hi}, got {number}")
        return number

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._get(name, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int) and str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
        raise self.error(name, f"must be a boolean, got {_show(value)}")

    def unit(self, name: str, default: str) -> str:
        """A systemd unit name (it reaches `systemctl`, so nothing an option could hide in)."""
        value = self.text(name, default)
        if not _UNIT.fullmatch(value):
            raise self.error(
                name,
                f"must be a plain systemd unit name (letters, digits and : - _ . \\ @, "
                f"not starting with '-'), got {value!r}",
            )
        return value


def _decimal(value: Any) -> int | None:
    """The integer `value` means, only when it is written in plain decimal."""
    if isinstance(value, bool) or isinstance(value, WrittenInt):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        digits = value.strip().lstrip("+")
        return None if len(digits) > 1 and digits.startswith("0") else int(digits)
    return None


def _integer_problem(value: Any) -> str:
    if isinstance(value, WrittenInt):
        meant = f", not {value.text.lstrip('0')}" if value.text.isdigit() else ""
        return (
            f"is written as {value.text}, which YAML 1.1 reads as {int(value)}{meant}: "
            "write the integer in plain decimal, without leading zeros"
        )
    text = str(value).strip() if isinstance(value, str) else ""
    if _DECIMAL.fullmatch(text):
        return (
            f"is written as {text!r} with a leading zero: Proxmox refuses such ids and YAML may "
            "read them as octal; write it without leading zeros"
        )
    return f"must be an integer, got {_show(value)}"


def _show(value: Any) -> str:
    """A short repr: a value from the inventory can be big."""
    if not isinstance(value, str | int | float | bool):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
