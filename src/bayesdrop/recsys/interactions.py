"""User-item interactions, the record of what a pre-processing step removed, and data errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Interactions",
    "FilterStep",
    "filter_step",
    "DataFormatError",
    "DataUnavailableError",
]

logger = logging.getLogger("bayesdrop.recsys.data")


class DataFormatError(ValueError):
    """A malformed interaction file; the message names the file and the line."""


class DataUnavailableError(RuntimeError):
    """A built-in data set that cannot be obtained here (no network, a package missing)."""


@dataclass(frozen=True)
class Interactions:
    """User-item interactions in file order.

    Attributes:
        users: raw user ids, shape ``(n,)`` (int64 for MovieLens formats, str otherwise).
        items: raw item ids, shape ``(n,)``.
        ratings: ratings as float64, shape ``(n,)``, or ``None`` when the source has none
            (implicit feedback).
        source: where the data came from (file name), for messages.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.items) != n or (self.ratings is not None and len(self.ratings) != n):
            raise ValueError("users, items and ratings must have the same length")

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_users(self) -> int:
        return int(np.unique(self.users).size)

    @property
    def n_items(self) -> int:
        return int(np.unique(self.items).size)

    def subset(self, keep: np.ndarray) -> Interactions:
        """The interactions where the boolean ``keep`` is true (file order kept)."""
        r = None if self.ratings is None else self.ratings[keep]
        return Interactions(self.users[keep], self.items[keep], r, self.source)


@dataclass(frozen=True)
class FilterStep:
    """What one pre-processing step removed and what is left."""

    name: str
    interactions_removed: int
    users_removed: int
    items_removed: int
    interactions_left: int
    users_left: int
    items_left: int

    def __str__(self) -> str:
        return (
            f"{self.name}: removed {self.interactions_removed} interactions, "
            f"{self.users_removed} users, {self.items_removed} items; left "
            f"{self.interactions_left} interactions, {self.users_left} users, "
            f"{self.items_left} items"
        )


def filter_step(name: str, before: Interactions, after: Interactions) -> FilterStep:
    """The :class:`FilterStep` that turned ``before`` into ``after`` (also logged)."""
    step = FilterStep(
        name,
        len(before) - len(after),
        before.n_users - after.n_users,
        before.n_items - after.n_items,
        len(after),
        after.n_users,
        after.n_items,
    )
    logger.info("%s", step)
    return step
