"""Command-line parsing the PVE way: Getopt::Long + JSONSchema::get_options, then validate.

Order as in PVE (pve-common 8.3 `CLIHandler`/`RESTHandler::cli_handler`): Getopt (unknown
options: `400 unable to parse option`), positional arguments (`not enough arguments`,
`too many arguments`), boolean values (`unable to parse boolean option`), then
`JSONSchema::validate` of every parameter at once (`400 Parameter verification failed.` with
one `<param>: <error>` line per bad parameter). Every 400 error ends in the command's usage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pvelab.pve.vmconf import parse_boolean

# pve-common JSONSchema.pm pve_verify_vmid: the format check runs before minimum/maximum
# (check_prop), so every out-of-range vmid fails the format, as does `0900`.
_VMID_RE = re.compile(r"[1-9][0-9]{2,8}")
_INTEGER_RE = re.compile(r"[+-]?\d+")
_NUMBER_RE = re.compile(r"[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?")


class UsageError(Exception):
    """Bad command line; `str()` is the full stderr text PVE prints. Exit code 255."""

    rc = 255


class ParamErrors(Exception):
    """raise_param_exc from a command's own code: `{param: message}`; the CLI adds the usage."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__(dict(errors))
        self.errors = dict(errors)


@dataclass(frozen=True)
class Option:
    """One parameter's schema: `boolean` takes an optional value (Getopt `:s`), others one."""

    name: str
    kind: str = "string"  # boolean | integer | number | string
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] | None = None
    check: Callable[[str], str | None] | None = None  # a format: None or the error text
    max_length: int | None = None
    is_list: bool = False  # a `-list` format: repeatable (`=s@`), values joined with ","
    requires: str | None = None  # JSONSchema `requires`
    # The CLI's param_mapping (RESTHandler cli_handler): the value given is replaced by this
    # function's result after Getopt, before validation (`--sshkeys <file>`: the file's text).
    mapping: Callable[[str], str] | None = None


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
        """RESTHandler getopt_usage, 'short': `"$prefix $args"` (two spaces without args)."""
        words = [f"<{a}>" for a in self.args]
        if self.extra_args:
            words.append("[<extra-args>]")
        text = f"qm {self.name} {' '.join(words)}"
        return text + " [OPTIONS]" if self.options else text


def usage_error(cmd: Command, message: str) -> UsageError:
    """A PVE::Exception with code 400 from the CLI handler: message, then the usage."""
    return UsageError(f"400 {message}\n{cmd.usage()}\n")


def param_error(cmd: Command, errors: Mapping[str, str]) -> UsageError:
    """`400 Parameter verification failed.` + `<param>: <msg>` lines + usage (Exception.pm).

    PVE prints the lines in Perl hash order; here they are sorted."""
    lines = "".join(f"{key}: {errors[key]}\n" for key in sorted(errors))
    return UsageError(f"400 Parameter verification failed.\n{lines}{cmd.usage()}\n")


def _getopt_specs(cmd: Command) -> list[Option]:
    """JSONSchema get_options: a Getopt spec for every schema property, the positional ones
    too (`qm status --vmid 100` is an option; the positional assignment then needs its own)."""
    positional = [Option(a, is_list=a == "extra-args") for a in cmd.args]
    if cmd.extra_args:
        positional.append(Option("extra-args", is_list=True))
    return [*cmd.options, *positional]


def _lookup(specs: list[Option], name: str) -> tuple[Option | None, str]:
    """Getopt::Long: case-insensitive, unique abbreviations allowed; else the warning."""
    low = name.lower()
    exact = [o for o in specs if o.name.lower() == low]
    if exact:
        return exact[0], ""
    hits = sorted(o.name for o in specs if o.name.lower().startswith(low))
    if len(hits) == 1:
        return next(o for o in specs if o.name == hits[0]), ""
    if hits:
        return None, f"Option {low} is ambiguous ({', '.join(hits)})\n"
    return None, f"Unknown option: {low}\n"


def _looks_like_option(arg: str) -> bool:
    """Getopt prefix_pattern `(--|-)`: `-5` is an option named `5` too; `-` alone is not."""
    return arg.startswith("-") and arg != "-"


def _split_argv(cmd: Command, argv: list[str]) -> tuple[dict[str, str], list[str], str]:
    """Getopt::Long with permute: options anywhere until `--`. Returns opts, args, warnings."""
    specs = _getopt_specs(cmd)
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
        name, eq, value = arg.removeprefix("-").removeprefix("-").partition("=")
        option, warning = _lookup(specs, name)
        if option is None:
            warnings += warning
            continue
        if not eq:
            if option.kind == "boolean":  # `:s`: a following option or `--` is pushed back
                if i < len(argv) and not _looks_like_option(argv[i]):
                    value = argv[i]
                    i += 1
            elif i < len(argv):  # `=s` takes the next argument, whatever it is
                value = argv[i]
                i += 1
            else:
                warnings += f"Option {option.name} requires an argument\n"
                continue
        if option.is_list and option.name in opts:
            value = f"{opts[option.name]},{value}"
        opts[option.name] = value
    return opts, args, warnings


def check_value(option: Option, value: str) -> str | None:
    """JSONSchema check_prop for one scalar: type, format, maxLength, range, enum."""
    if option.kind == "integer" and not _INTEGER_RE.fullmatch(value):
        return f"type check ('integer') failed - got '{value}'"
    if option.kind == "number" and not _NUMBER_RE.fullmatch(value):
        return f"type check ('number') failed - got '{value}'"
    if option.kind == "boolean" and value not in ("0", "1"):
        return f"type check ('boolean') failed - got '{value}'"
    if option.check is not None and (error := option.check(value)) is not None:
        return error
    if option.max_length is not None and len(value) > option.max_length:
        return f"value may only be {option.max_length} characters long"
    if _NUMBER_RE.fullmatch(value):
        if option.maximum is not None and float(value) > option.maximum:
            return f"value must have a maximum value of {option.maximum}"
        if option.minimum is not None and float(value) < option.minimum:
            return f"value must have a minimum value of {option.minimum}"
    if option.enum is not None and value not in option.enum:
        return (
            f"value '{value}' does not have a value in the enumeration '{', '.join(option.enum)}'"
        )
    return None


def vmid_error(value: str) -> str | None:
    """The `pve-vmid` standard option: integer, format pve-vmid (min 100, max 999999999)."""
    if not _INTEGER_RE.fullmatch(value):
        return f"type check ('integer') failed - got '{value}'"
    if not _VMID_RE.fullmatch(value):
        return "invalid format - value does not look like a valid VM ID\n"
    return None


def _positional(cmd: Command, name: str, value: str) -> str | None:
    if name == "vmid":
        return vmid_error(value)
    check = cmd.arg_checks.get(name)
    if check is not None and (error := check(value)) is not None:
        return error
    enum = cmd.arg_enums.get(name)
    if enum is not None and value not in enum:
        return f"value '{value}' does not have a value in the enumeration '{', '.join(enum)}'"
    return None


def _typed(option: Option, value: str) -> Any:
    if option.kind == "integer":
        return int(value)
    if option.kind == "boolean":
        return value == "1"
    return value


def parse(cmd: Command, argv: list[str]) -> dict[str, Any]:
    """Options and positionals of `argv` (after the command words) as typed values.

    Positionals land under their names (`vmid` as int), the rest under `extra-args`.
    """
    raw, args, warnings = _split_argv(cmd, argv)
    if warnings:
        raise UsageError(warnings + f"400 unable to parse option\n{cmd.usage()}\n")
    if "extra-args" in raw and args:
        raise usage_error(cmd, "internal error: extra-args must be the last argument")
    for name in (*cmd.args, "extra-args"):  # the positional assignment overwrites, or fails
        raw.pop(name, None)
    if len(args) < len(cmd.args):
        raise usage_error(cmd, "not enough arguments")
    positional = dict(zip(cmd.args, args, strict=False))
    rest = args[len(cmd.args) :]
    if rest and not cmd.extra_args:
        raise usage_error(cmd, "too many arguments")
    by_name = {o.name: o for o in cmd.options}
    for name, value in raw.items():
        if by_name[name].kind == "boolean":
            flag = True if value == "" else parse_boolean(value)
            if flag is None:
                raise usage_error(cmd, "unable to parse boolean option")
            raw[name] = "1" if flag else "0"
    for name, value in raw.items():
        if (mapping := by_name[name].mapping) is not None:
            raw[name] = mapping(value)
    errors: dict[str, str] = {}
    for name, value in positional.items():
        if (error := _positional(cmd, name, value)) is not None:
            errors[name] = error
    for name, value in raw.items():
        option = by_name[name]
        if (error := check_value(option, value)) is not None:
            errors[name] = error
        if option.requires and option.requires not in raw:
            errors[option.requires] = f"missing property - '{name}' requires this property"
    if errors:
        raise param_error(cmd, errors)
    values: dict[str, Any] = {n: _typed(by_name[n], v) for n, v in raw.items()}
    values.update(positional)
    if "vmid" in values:
        values["vmid"] = int(values["vmid"])
    if cmd.extra_args:
        values["extra-args"] = rest
    return values
