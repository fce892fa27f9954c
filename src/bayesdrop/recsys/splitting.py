"""The Liang et al. (2018) split: train users, and fold-in/held-out parts of held-out users."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .filtering import binarize, deduplicate, filter_min_counts
from .interactions import FilterStep, Interactions, filter_step

__all__ = ["CFSplit", "liang_split", "prepare_liang"]

logger = logging.getLogger("bayesdrop.recsys.data")


@dataclass
class CFSplit:
    """The Liang et al. split: train users, and fold-in/held-out parts of validation/test users.

    All matrices are binary ``float32`` CSR with one column per item of ``item_ids``.
    Validation and test rows follow the shuffled user order; a held-out user whose items all
    fell outside the training item set has an empty row (and no held-out item, so the metrics
    skip it).
    """

    train: sp.csr_matrix
    val_fold_in: sp.csr_matrix
    val_heldout: sp.csr_matrix
    test_fold_in: sp.csr_matrix
    test_heldout: sp.csr_matrix
    item_ids: np.ndarray
    train_user_ids: np.ndarray
    val_user_ids: np.ndarray
    test_user_ids: np.ndarray
    report: list[FilterStep] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])

    def summary(self) -> dict[str, int]:
        """Sizes of every part (for logs and the CLI's JSON)."""
        return {
            "items": self.n_items,
            "train_users": int(self.train.shape[0]),
            "train_interactions": int(self.train.nnz),
            "val_users": int(self.val_fold_in.shape[0]),
            "val_fold_in": int(self.val_fold_in.nnz),
            "val_heldout": int(self.val_heldout.nnz),
            "test_users": int(self.test_fold_in.shape[0]),
            "test_fold_in": int(self.test_fold_in.nnz),
            "test_heldout": int(self.test_heldout.nnz),
        }


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows.astype(np.int64), cols.astype(np.int64))),
        shape=shape,
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _split_fold_in(
    users: np.ndarray, test_prop: float, seed: int, min_items: int
) -> tuple[np.ndarray, int]:
    """Boolean held-out mask over one group of interactions, as Liang's
    ``split_train_test_proportion``: users in sorted id order, file order within a user."""
    rng = np.random.RandomState(seed)
    heldout = np.zeros(len(users), dtype=bool)
    if len(users) == 0:
        return heldout, 0
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    n_split = 0
    for s, e in zip(starts, ends):
        n = int(e - s)
        if n >= min_items:
            pick = rng.choice(n, size=int(test_prop * n), replace=False).astype(np.int64)
            heldout[order[s + pick]] = True
            n_split += 1
    return heldout, n_split


def liang_split(
    inter: Interactions,
    n_heldout_users: int,
    *,
    seed: int = 98765,
    test_prop: float = 0.2,
    min_heldout_items: int = 5,
) -> CFSplit:
    """Split filtered interactions into train / validation / test users (Liang et al. 2018).

    Args:
        inter: binarised, filtered interactions (see :func:`prepare_liang`).
        n_heldout_users: users in each of the validation and test sets.
        seed: seed of the user shuffle and of the fold-in/held-out draw (98765 in the paper).
        test_prop: share of a held-out user's items held out (``int(test_prop * n)`` items).
        min_heldout_items: held-out users with fewer items keep them all as fold-in (5).
    """
    if isinstance(n_heldout_users, bool) or not isinstance(n_heldout_users, int):
        raise TypeError(f"n_heldout_users must be an int, got {type(n_heldout_users).__name__}")
    if not 0.0 < test_prop < 1.0:
        raise ValueError(
            f"test_prop must be in (0, 1) so every held-out user keeps fold-in items, got "
            f"{test_prop}"
        )
    unique_uid = np.unique(inter.users)
    n_users = unique_uid.size
    if n_heldout_users < 1 or 2 * n_heldout_users >= n_users:
        raise ValueError(
            f"n_heldout_users must be in [1, {(n_users - 1) // 2}] for {n_users} users (two "
            f"held-out sets and at least one training user), but got {n_heldout_users}"
        )
    perm = np.random.RandomState(seed).permutation(n_users)
    unique_uid = unique_uid[perm]
    n_train = n_users - 2 * n_heldout_users
    tr_users = unique_uid[:n_train]
    vd_users = unique_uid[n_train : n_train + n_heldout_users]
    te_users = unique_uid[n_train + n_heldout_users :]

    in_train = np.isin(inter.users, tr_users)
    train_items = inter.items[in_train]
    _, first = np.unique(train_items, return_index=True)
    item_ids = train_items[np.sort(first)]  # pd.unique: order of first appearance
    item_pos = {v: i for i, v in enumerate(item_ids.tolist())}

    def rows_for(users: np.ndarray, group: np.ndarray) -> np.ndarray:
        pos = {v: i for i, v in enumerate(group.tolist())}
        return np.fromiter((pos[u] for u in users.tolist()), dtype=np.int64, count=len(users))

    def cols(items: np.ndarray) -> np.ndarray:
        return np.fromiter((item_pos[i] for i in items.tolist()), dtype=np.int64, count=len(items))

    report: list[FilterStep] = []
    train = _csr(
        rows_for(inter.users[in_train], tr_users), cols(train_items), (n_train, len(item_ids))
    )
    parts = []
    for name, group in (("validation", vd_users), ("test", te_users)):
        sel = np.isin(inter.users, group)
        part = inter.subset(sel)
        known = np.isin(part.items, item_ids)
        kept = part.subset(known)
        report.append(filter_step(f"{name} users: items not seen in training", part, kept))
        heldout, n_split = _split_fold_in(kept.users, test_prop, seed, min_heldout_items)
        r = rows_for(kept.users, group)
        c = cols(kept.items)
        shape = (len(group), len(item_ids))
        fold_in = _csr(r[~heldout], c[~heldout], shape)
        held = _csr(r[heldout], c[heldout], shape)
        if n_split == 0:
            raise ValueError(
                f"no {name} user has {min_heldout_items} or more items after restricting to "
                "training items: nothing to evaluate on; use more data or fewer held-out users"
            )
        n_short = len(group) - n_split
        if n_short:
            logger.info(
                "%d %s users have fewer than %d items: all fold-in, no held-out item",
                n_short,
                name,
                min_heldout_items,
            )
        parts.append((fold_in, held))
    return CFSplit(
        train,
        parts[0][0],
        parts[0][1],
        parts[1][0],
        parts[1][1],
        item_ids,
        tr_users,
        vd_users,
        te_users,
        report,
    )


def prepare_liang(
    inter: Interactions,
    n_heldout_users: int,
    *,
    threshold: float | None = 3.5,
    min_user: int = 5,
    min_item: int = 0,
    seed: int = 98765,
    test_prop: float = 0.2,
) -> CFSplit:
    """Binarise (``rating > threshold``; ``None`` keeps all), drop duplicate pairs, filter, and
    split (:func:`liang_split`); the returned split's ``report`` lists every step."""
    report: list[FilterStep] = []
    if threshold is not None:
        inter, step = binarize(inter, threshold)
        report.append(step)
    inter, step = deduplicate(inter)
    report.append(step)
    inter, steps = filter_min_counts(inter, min_user=min_user, min_item=min_item)
    report.extend(steps)
    split = liang_split(inter, n_heldout_users, seed=seed, test_prop=test_prop)
    split.report = report + split.report
    return split
