"""PVE's CLIHandler command tree (pve-common 8.3 `CLIHandler.pm`), shared by the stand-in CLIs.

A `$cmddef` is a tree of words: a real command (`Def`: its handler class and the short usage
after its words), an alias (`Alias`), or a group of subcommands (a dict). This module does
what CLIHandler does with it: unique-prefix expansion (`$expand_command_name`), resolution
(`resolve_cmd`), the usage listing of `print_usage_short` (exit 255 via `$abort`) and `help`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from pvelab.pve.qm.options import UsageError


@dataclass(frozen=True)
class Def:
    """A real command: the class that handles it (the listing's sort key) and the short usage
    after the command words: RESTHandler getopt_usage's `$args`, then ` [OPTIONS]` etc."""

    cls: str
    args: str = ""

    def usage(self, prefix: str) -> str:
        """getopt_usage 'short': `"$prefix $args"`, so a bare command keeps a trailing space."""
        return f"{prefix} {self.args}"


@dataclass(frozen=True)
class Alias:
    """`{ alias => 'disk import' }`: never expanded from a prefix, never listed."""

    target: str


Tree = dict[str, Union[Def, Alias, "Tree"]]
# handle_cmd adds `help => [__PACKAGE__, 'help', ['extra-args']]` to every $cmddef.
HELP = Def("PVE::CLIHandler", "[<extra-args>] [OPTIONS]")


@dataclass(frozen=True)
class Resolved:
    """resolve_cmd's answer: the expanded command words, the node reached, the rest of argv."""

    words: tuple[str, ...]
    node: Def | Tree | None
    rest: list[str]
    cmdstr: str


def expand(tree: Tree, word: str) -> str | None:
    """$expand_command_name with $enforce_exact: the word itself, or its only non-alias prefix
    match."""
    if word in tree:
        return word
    matches = [k for k in tree if k.startswith(word) and not isinstance(tree[k], Alias)]
    return matches[0] if len(matches) == 1 else None


def _is_prefix(tree: Tree, word: str) -> bool:
    return any(k.startswith(word) and not isinstance(tree[k], Alias) for k in tree)


def _class_order(tree: Tree, names: list[str]) -> list[str]:
    """print_usage_short's sort: groups first (by name), then commands by class, then name."""
    groups = sorted(k for k in names if isinstance(tree[k], dict))
    defs = [k for k in names if isinstance(tree[k], Def)]
    return groups + sorted(defs, key=lambda k: (_def(tree[k]).cls, k))


def _def(node: Def | Alias | Tree) -> Def:
    assert isinstance(node, Def)
    return node


@dataclass(frozen=True)
class CLI:
    """One PVE CLI: its executable name and $cmddef (`help` is added as handle_cmd does)."""

    exe: str
    cmddef: Tree

    @property
    def tree(self) -> Tree:
        return {**self.cmddef, "help": HELP}

    def resolve(self, argv: list[str]) -> Resolved:
        """resolve_cmd: walk the tree, expanding each word; one level of aliases."""
        node: Def | Tree | None = self.tree
        cmdstr, words = self.exe, []
        argv = list(argv)
        for i, arg in enumerate(argv):
            assert isinstance(node, dict)
            word = expand(node, arg) or arg
            cmdstr += f" {word}"
            entry = node.get(word)
            if entry is None:  # an ambiguous prefix keeps the tree, anything else is unknown
                node = node if _is_prefix(node, word) else None
                break
            if isinstance(entry, Alias):
                return self.resolve([*argv[:i], *entry.target.split(), *argv[i + 1 :]])
            words.append(word)
            if isinstance(entry, Def):
                return Resolved(tuple(words), entry, argv[i + 1 :], cmdstr)
            node = entry
        return Resolved(tuple(words), node, argv[1:], cmdstr)

    def _lines(self, tree: Tree, prefix: str, indent: str, separator: str, by_class: bool) -> str:
        """generate_usage_str over a (sub)tree."""
        names = [k for k in tree if not isinstance(tree[k], Alias)]
        order = _class_order(tree, names) if by_class else sorted(names)
        out, oldclass = "", None
        for name in order:
            node = tree[name]
            if isinstance(node, Def):
                if oldclass and oldclass != node.cls:
                    out += separator
                out += f"{indent}{node.usage(f'{prefix} {name}')}\n"
                oldclass = node.cls
            elif isinstance(node, dict):
                sub = self._lines(node, f"{prefix} {name}", indent, "", by_class)
                if sub and separator * 2 not in sub:  # `$substr !~ /\Q$separator\E{2}/`
                    sub += separator
                out += sub
        return out

    def usage_short(self, msg: str | None = None, argv: list[str] | None = None) -> str:
        """print_usage_short: `ERROR: <msg>`, the USAGE line, then every command (blank lines
        between classes) or, for an incomplete command, the commands under `argv`."""
        head = f"ERROR: {msg}\n" if msg else ""
        head += f"USAGE: {self.exe} <COMMAND> [ARGS] [OPTIONS]\n\n"
        if argv:
            found = self.resolve(argv)
            node, prefix = found.node, found.cmdstr
        else:
            node, prefix = self.tree, self.exe
        if isinstance(node, Def):
            return head + f"       {node.usage(prefix)}\n"
        assert isinstance(node, dict)
        return head + self._lines(node, prefix, " " * 7, "" if argv else "\n", by_class=True)

    def command(self, argv: list[str]) -> Resolved:
        """handle_cmd up to the handler: `$abort` (UsageError, exit 255) for no, an incomplete
        or an unknown command; else the real command and its arguments."""
        if not argv:
            raise UsageError(self.usage_short("no command specified"))
        found = self.resolve(argv)
        if isinstance(found.node, dict):
            raise UsageError(self.usage_short(f"incomplete command '{found.cmdstr}'", argv))
        if found.node is None:
            raise UsageError(self.usage_short(f"unknown command '{found.cmdstr}'"))
        return found

    def help(self, args: list[str]) -> str:
        """The `help` command (its short form): what it prints on stdout, exit 0."""
        if not args:
            return self.usage_short()
        found = self.resolve(args)
        if found.node is None:  # generate_usage_str: $abort->("unknown command '$cmd->[0]'")
            raise UsageError(self.usage_short(f"unknown command '{args[0]}'"))
        if isinstance(found.node, Def):
            text = found.node.usage(found.cmdstr) + "\n"
        else:
            text = self._lines(found.node, found.cmdstr, " " * 7, "", by_class=False)
        return f"USAGE: {text.lstrip()}\n"
