"""Command-line parsing the PVE way (Getopt::Long + PVE::JSONSchema::get_options)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pvelab.pve.vmconf import parse_boolean

VMID_MIN, VMID_MAX = 100, 999_999_999


class UsageError(Exception):
    """Bad command line; `str()` is the full stderr text PVE prints. Exit code 255."""

    rc = 255


@dataclass(frozen=True)
class Option:
    """One option: `boolean` takes an optional value (Getopt `:s`), others a required one."""

    name: str
    kind: str = "string"  # boolean | integer | string
    minimum: int | None = None
    enum: tuple[str, ...] | None = None
    check: Callable[[str], str | None] | None = None  # a format: None or the error text


@dataclass(frozen=True)
class Command:
    """A `qm` (sub)command: positional parameters, options, and whether it takes extra-args."""

    name: str
    args: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    extra_args: bool = False
    arg_enums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    arg_checks: dict[str, Callable[[str], str | None]] = field(default_factory=dict)

    def usage(self) -> str:
        words = ["qm", self.name, *(f"<{a}>" for a in self.args)]
        if self.extra_args:
            words.append("[<extra-args>]")
        if self.options:
            words.append("[OPTIONS]")
        return " ".join(words)


def _fail(cmd: Command, message: str) -> UsageError:
    return UsageError(f"400 {message}\n{cmd.usage()}\n")


def _param_fail(cmd: Command, param: str, message: str) -> UsageError:
    return _fail(cmd, f"Parameter verification failed.\n{param}: {message}")


def _lookup(cmd: Command, name: str) -> Option | None:
    """Getopt::Long: case-insensitive, unique abbreviations allowed."""
    low = name.lower()
    exact = [o for o in cmd.options if o.name.lower() == low]
    if exact:
        return exact[0]
    prefixed = [o for o in cmd.options if o.name.lower().startswith(low)]
    return prefixed[0] if len(prefixed) == 1 else None


def _looks_like_option(arg: str) -> bool:
    return arg.startswith("-") and arg != "-" and not re.fullmatch(r"-\d+", arg)


def _split_argv(cmd: Command, argv: list[str]) -> tuple[dict[str, str], list[str], str]:
    """Getopt::Long with permute: options anywhere until `--`. Returns opts, args, warnings."""
    opts: dict[str, str] = {}
    args: list[str] = []
    warnings = ""
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            args.extend(argv[i:])
            break
        if not _looks_like_option(arg):
            args.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        option = _lookup(cmd, name)
        if option is None:
            warnings += f"Unknown option: {name.lower()}\n"
            continue
        if not eq:
            if option.kind == "boolean":
                if i < len(argv) and not _looks_like_option(argv[i]) and argv[i] != "--":
                    value = argv[i]
                    i += 1
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                warnings += f"Option {option.name} requires an argument\n"
                continue
        opts[option.name] = value
    return opts, args, warnings


def _check_value(cmd: Command, option: Option, value: str) -> Any:
    if option.kind == "boolean":
        if value == "":
            return True
        flag = parse_boolean(value)
        if flag is None:
            raise _param_fail(cmd, option.name, "unable to parse boolean option")
        return flag
    if option.kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise _param_fail(cmd, option.name, f"type check ('integer') failed - got '{value}'")
        number = int(value)
        if option.minimum is not None and number < option.minimum:
            raise _param_fail(
                cmd, option.name, f"value must have a minimum value of {option.minimum}"
            )
        return number
    if option.check is not None and (error := option.check(value)) is not None:
        raise _param_fail(cmd, option.name, error)
    if option.enum is not None and value not in option.enum:
        raise _param_fail(
            cmd,
            option.name,
            f"value '{value}' does not have a value in the enumeration '{', '.join(option.enum)}'",
        )
    return value


def _check_vmid(cmd: Command, value: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", value):
        raise _param_fail(cmd, "vmid", f"type check ('integer') failed - got '{value}'")
    vmid = int(value)
    if vmid < VMID_MIN:
        raise _param_fail(cmd, "vmid", f"value must have a minimum value of {VMID_MIN}")
    if vmid > VMID_MAX:
        raise _param_fail(cmd, "vmid", f"value may not exceed {VMID_MAX}")
    return vmid


def parse(cmd: Command, argv: list[str]) -> dict[str, Any]:
    """Options and positionals of `argv` (after the command words) as typed values.

    Positionals land under their names (`vmid` as int), the rest under `extra-args`.
    """
    raw, args, warnings = _split_argv(cmd, argv)
    if warnings:
        raise UsageError(warnings + f"400 unable to parse option\n{cmd.usage()}\n")
    values: dict[str, Any] = {}
    for option in cmd.options:
        if option.name in raw:
            values[option.name] = _check_value(cmd, option, raw[option.name])
    if len(args) < len(cmd.args):
        raise _fail(cmd, "not enough arguments")
    for name in cmd.args:
        value = args.pop(0)
        if name == "vmid":
            values[name] = _check_vmid(cmd, value)
            continue
        check = cmd.arg_checks.get(name)
        if check is not None and (error := check(value)) is not None:
            raise _param_fail(cmd, name, error)
        enum = cmd.arg_enums.get(name)
        if enum is not None and value not in enum:
            raise _param_fail(
                cmd,
                name,
                f"value '{value}' does not have a value in the enumeration '{', '.join(enum)}'",
            )
        values[name] = value
    if cmd.extra_args:
        values["extra-args"] = args
    elif args:
        raise _fail(cmd, "too many arguments")
    return values
