"""Patch or verify: the stages, and the run's mode, decided once from what pytest selected."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import pytest

PATCH, VERIFY = "patch", "verify"


class Stage(NamedTuple):
    name: str
    order: int
    mutating: bool
    after_failure: bool = False  # runs after an earlier stage of its VM failed (the rollback)


# The stages, in order; the mutating ones run only when the user's -m selected them.
STAGES = {
    s.name: s
    for s in (
        Stage("preflight", 1, False),
        Stage("guest_agent", 2, True),
        Stage("snapshot", 3, True),
        Stage("patch", 4, True),
        Stage("restart", 5, True),
        Stage("verify", 6, False),
        Stage("rollback", 7, True, after_failure=True),
    )
}
# The identifiers of a -m expression (pytest's grammar: letters, digits, _ : + - . [ ] \ /).
_IDENT = re.compile(r"(?:\w|:|\+|-|\.|\[|\]|\\|/)+")


def stage_of(item: pytest.Item) -> Stage | None:
    """The pvepatch stage of a test (its `stage` marker), checked."""
    marker = item.get_closest_marker("stage")
    if marker is None:
        return None
    stage = STAGES.get(marker.args[0] if marker.args else "")
    if stage is None:
        raise pytest.UsageError(
            f"{item.nodeid}: unknown stage {marker.args!r} (known: {', '.join(STAGES)})"
        )
    if stage.mutating and item.get_closest_marker(VERIFY):
        raise pytest.UsageError(
            f"{item.nodeid}: mutating stage {stage.name!r} must not be marked verify"
        )
    return stage


def names_patch(markexpr: str) -> bool:
    """True when the -m expression names the `patch` mark, not negated (`-m patch`,
    `-m "patch and not verify"`); only such a run can patch. A bare run, `-m verify`,
    `-m "not verify"` and `-m "not patch"` cannot."""
    words = _IDENT.findall(markexpr or "")
    return any(w == PATCH and (i == 0 or words[i - 1] != "not") for i, w in enumerate(words))


def written_mode(config: pytest.Config) -> str:
    """The mode as `-m` is written, before collection decides the run's mode: what names the
    report files and titles the report, which pytest-html needs before collection."""
    return PATCH if names_patch(config.getoption("markexpr") or "") else VERIFY


def decide_mode(markexpr: str, items: Sequence[pytest.Item]) -> str:
    """The run's mode, from the -m expression and the tests left after pytest's own -m, -k,
    --deselect and node-id selection: `patch` when -m names `patch` and a mutating stage is
    left, else `verify`."""
    mutating_left = any((stage_of(item) or Stage("", 0, False)).mutating for item in items)
    return PATCH if names_patch(markexpr) and mutating_left else VERIFY


def belongs_to_verify(item: pytest.Item) -> bool:
    """A verify run keeps only the tests marked `verify` (never a mutating stage, nor a
    patch-only check such as the restart proofs, which have nothing to check then)."""
    return item.get_closest_marker(VERIFY) is not None
