"""Non-neural baselines: item popularity and EASE (Steck 2019).

Both are fitted on the training users' click matrix and score held-out users from their fold-in
items, like the autoencoders.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
from torch import Tensor

from .._validation import check_positive

__all__ = ["Popularity", "EASE", "ease_weights"]


def _as_csr(x: sp.spmatrix | np.ndarray, name: str) -> sp.csr_matrix:
    if sp.issparse(x):
        return sp.csr_matrix(x, dtype=np.float64)
    if isinstance(x, np.ndarray) and x.ndim == 2:
        return sp.csr_matrix(x.astype(np.float64))
    raise TypeError(f"{name} must be a 2-d scipy.sparse matrix or numpy array")


class Popularity:
    """Scores every item by the number of training users who clicked it (same for all users).

    Example:
        >>> import numpy as np
        >>> m = Popularity().fit(np.array([[1, 0, 1], [0, 0, 1]]))
        >>> m.scores(np.zeros((1, 3))).tolist()
        [[1.0, 0.0, 2.0]]
    """

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train: sp.spmatrix | np.ndarray) -> Popularity:
        x = _as_csr(train, "train")
        self.counts = np.asarray((x > 0).sum(axis=0), dtype=np.float64).ravel()
        return self

    def scores(self, fold_in: sp.spmatrix | np.ndarray) -> Tensor:
        """Dense ``(users, items)`` scores (float64)."""
        if self.counts is None:
            raise RuntimeError("call fit() first")
        n = fold_in.shape[0]
        if fold_in.shape[1] != self.counts.size:
            raise ValueError(f"fold_in must have {self.counts.size} columns, got {fold_in.shape}")
        return torch.from_numpy(np.tile(self.counts, (n, 1)))


def ease_weights(train: sp.spmatrix | np.ndarray, l2: float) -> np.ndarray:
    r"""EASE item-item weights in closed form (Steck 2019).

    The solution of :math:`\min_B \|X - XB\|_F^2 + \lambda\|B\|_F^2` subject to
    :math:`\mathrm{diag}(B) = 0` is

    .. math::
        P = (X^\top X + \lambda I)^{-1},\qquad B_{ij} = -P_{ij}/P_{jj}\ (i\ne j),\quad B_{jj}=0.

    Builds the dense ``items × items`` Gram matrix (the method's own cost) and inverts it by
    Cholesky.

    Example:
        >>> import numpy as np
        >>> b = ease_weights(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]]), 1.0)
        >>> np.allclose(np.diag(b), 0)
        True
    """
    l2 = check_positive("l2", l2)
    x = _as_csr(train, "train")
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += l2
    # X^T X + lambda I is symmetric positive definite: Cholesky, then solve against I (much
    # faster than a general inverse with the bundled LAPACK).
    factor = scipy.linalg.cho_factor(gram, lower=True, check_finite=False)
    p = scipy.linalg.cho_solve(factor, np.eye(gram.shape[0]), check_finite=False)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


class EASE:
    """Embarrassingly shallow autoencoder: ``scores = X_fold_in @ B`` (:func:`ease_weights`).

    Args:
        l2: regularisation weight :math:`\\lambda` (Steck uses a few hundred on ML-20M).
    """

    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = check_positive("l2", l2)
        self.weights: np.ndarray | None = None

    def fit(self, train: sp.spmatrix | np.ndarray) -> EASE:
        self.weights = ease_weights(train, self.l2)
        return self

    def scores(self, fold_in: sp.spmatrix | np.ndarray) -> Tensor:
        """Dense ``(users, items)`` scores (float64)."""
        if self.weights is None:
            raise RuntimeError("call fit() first")
        x = _as_csr(fold_in, "fold_in")
        if x.shape[1] != self.weights.shape[0]:
            raise ValueError(f"fold_in must have {self.weights.shape[0]} columns, got {x.shape}")
        return torch.from_numpy(np.asarray(x @ self.weights))
