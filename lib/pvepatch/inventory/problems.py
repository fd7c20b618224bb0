"""Collect every inventory problem, then raise them together as one InventoryProblems."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

from pvepatch.errors import InventoryError, InventoryProblems

T = TypeVar("T")
SHOWN = 50


class Problems:
    """The problems (and warnings) of one inventory file, in the order they were found."""

    def __init__(self, path: str):
        self.path = path
        self.items: list[InventoryError] = []
        self.warnings: list[str] = []

    def add(self, message: str, host: str | None = None, field: str | None = None) -> None:
        self.items.append(InventoryError(self.path, message, host=host, field=field))

    def attempt(self, get: Callable[[], T]) -> T | None:
        """`get()`, or None after recording the InventoryError it raised."""
        try:
            return get()
        except InventoryProblems as exc:
            self.items.extend(exc.problems)
        except InventoryError as exc:
            self.items.append(exc)
        return None

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InventoryProblems(self.path, self.items, shown=SHOWN)

    def fatal(self, message: str, host: str | None = None, field: str | None = None) -> NoReturn:
        """Record one more problem and stop: nothing sensible can be checked after it."""
        self.add(message, host, field)
        raise InventoryProblems(self.path, self.items, shown=SHOWN)
