"""Filters of the Liang et al. (2018) protocol: binarise ratings, drop duplicates, minimum counts.

Each returns the kept interactions and the :class:`~bayesdrop.recsys.interactions.FilterStep`
saying what it removed; a filter that would remove everything is an error naming it.
"""

from __future__ import annotations

import math

import numpy as np

from .interactions import FilterStep, Interactions, filter_step

__all__ = ["binarize", "deduplicate", "filter_min_counts"]


def binarize(inter: Interactions, threshold: float = 3.5) -> tuple[Interactions, FilterStep]:
    """Keep interactions with rating strictly above ``threshold`` (all of them if unrated)."""
    if inter.ratings is None:
        return inter, filter_step(f"binarize (no ratings, all {len(inter)} kept)", inter, inter)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, but got {type(threshold).__name__}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, but got {threshold}")
    out = inter.subset(inter.ratings > threshold)
    if len(out) == 0 and len(inter):
        raise ValueError(
            f"threshold={threshold:g} removes every interaction of {inter.source}: no rating is "
            f"above it (ratings range from {inter.ratings.min():g} to {inter.ratings.max():g})"
        )
    return out, filter_step(f"binarize (rating > {threshold})", inter, out)


def deduplicate(inter: Interactions) -> tuple[Interactions, FilterStep]:
    """Drop repeated (user, item) pairs, keeping the first occurrence in file order."""
    _, uc = np.unique(inter.users, return_inverse=True)
    _, ic = np.unique(inter.items, return_inverse=True)
    key = uc.astype(np.int64) * (int(ic.max()) + 1 if len(ic) else 1) + ic
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(inter), dtype=bool)
    keep[first] = True
    out = inter.subset(keep)
    return out, filter_step("deduplicate (user, item)", inter, out)


def _counts(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv, cnt = np.unique(ids, return_inverse=True, return_counts=True)
    return cnt[inv], uniq


def filter_min_counts(
    inter: Interactions, min_user: int = 5, min_item: int = 0
) -> tuple[Interactions, list[FilterStep]]:
    """Liang et al.'s ``filter_triplets``: items with ``>= min_item`` users first, then users with
    ``>= min_user`` items (one pass each, in that order)."""
    steps: list[FilterStep] = []
    for name, value in (("min_user", min_user), ("min_item", min_item)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, but got {value!r}")
    if len(inter) == 0:
        raise ValueError("no interactions to filter (empty input)")
    if min_item > 0:
        before = inter
        inter = inter.subset(_counts(inter.items)[0] >= min_item)
        steps.append(filter_step(f"items with >= {min_item} users", before, inter))
        if len(inter) == 0:
            most = int(_counts(before.items)[0].max())
            raise ValueError(
                f"min_item={min_item} removes every interaction: no item has more than "
                f"{most} users; lower min_item"
            )
    if min_user > 0:
        before = inter
        inter = inter.subset(_counts(inter.users)[0] >= min_user)
        steps.append(filter_step(f"users with >= {min_user} items", before, inter))
        if len(inter) == 0:
            most = int(_counts(before.users)[0].max())
            raise ValueError(
                f"min_user={min_user} removes every interaction: no user has more than "
                f"{most} items{' after the item filter' if min_item > 0 else ''}; lower min_user"
            )
    return inter, steps
