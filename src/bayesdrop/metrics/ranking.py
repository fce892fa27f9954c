"""Top-R ranking metrics for collaborative filtering, exactly as Liang et al. (2018) compute them.

Conventions (the reference code of "Variational Autoencoders for Collaborative Filtering"):

* ``scores`` is a dense ``(users, items)`` array; items a user has already seen (the fold-in
  part) must not compete for the top R: pass them as ``exclude`` (their scores become ``-inf``)
  or set their scores to ``-inf`` yourself.
* ``heldout`` is the binary ``(users, items)`` matrix of held-out interactions (dense or
  ``scipy.sparse``; any non-zero counts as relevant).
* Averages run over the users with at least one held-out item; users without one have no
  defined recall and are left out (``reduction="none"`` gives them ``nan``).

:func:`recall_at_k` divides the hits by :math:`\\min(R, |\\mathcal I_u|)`, so a perfect ranking
scores 1 even when a user has more than R held-out items. RecBole and Cornac divide by
:math:`|\\mathcal I_u|` instead; that variant is :func:`recall_at_k_recbole`, so the two are never
confused (for users with at most R held-out items they agree).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["recall_at_k", "recall_at_k_recbole", "ndcg_at_k", "top_k_items"]

_REDUCTIONS = ("mean", "none")


def _as_dense_scores(scores: Any) -> Tensor:
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(scores)
    if not isinstance(scores, Tensor):
        raise TypeError(
            f"scores must be a torch.Tensor or numpy array, got {type(scores).__name__}"
        )
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-d (users, items), but got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores must not contain NaN")
    return scores


def _as_dense_binary(x: Any, shape: tuple[int, int], name: str) -> Tensor:
    if hasattr(x, "toarray") and hasattr(x, "nnz"):  # scipy.sparse
        x = x.toarray()
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, numpy array or scipy.sparse matrix, "
            f"got {type(x).__name__}"
        )
    if x.layout != torch.strided:
        x = x.to_dense()
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have the shape of scores {shape}, but got {tuple(x.shape)}")
    return x != 0


def _check_k(k: int, n_items: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, but got {type(k).__name__}")
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, n_items={n_items}], but got {k}")
    return k


def _prepare(scores: Any, heldout: Any, k: int, exclude: Any) -> tuple[Tensor, Tensor, int]:
    s = _as_dense_scores(scores)
    shape = (int(s.shape[0]), int(s.shape[1]))
    h = _as_dense_binary(heldout, shape, "heldout").to(s.device)
    k = _check_k(k, shape[1])
    if exclude is not None:
        ex = _as_dense_binary(exclude, shape, "exclude").to(s.device)
        if bool((ex & h).any()):
            raise ValueError("exclude (fold-in) and heldout overlap: an item cannot be both")
        s = s.masked_fill(ex, float("-inf"))
    return s, h, k


def top_k_items(scores: Tensor, k: int) -> Tensor:
    """Indices of each row's ``k`` highest scores, best first, shape ``(users, k)``."""
    return torch.topk(scores, k, dim=1, largest=True, sorted=True).indices


def _reduce(per_user: Tensor, valid: Tensor, reduction: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}, but got {reduction!r}")
    if reduction == "none":
        return per_user.masked_fill(~valid, float("nan"))
    if not bool(valid.any()):
        raise ValueError("no user has a held-out item: the metric is undefined")
    return per_user[valid].mean()


def _hits(scores: Tensor, heldout: Tensor, k: int) -> Tensor:
    return torch.gather(heldout, 1, top_k_items(scores, k)).to(torch.float64)


def recall_at_k(
    scores: Any, heldout: Any, k: int, *, exclude: Any = None, reduction: str = "mean"
) -> Tensor:
    r"""Recall@R of Liang et al. (2018): hits in the top R over :math:`\min(R, |\mathcal I_u|)`.

    .. math::
        \mathrm{Recall@}R(u) = \frac{\sum_{r=1}^{R} 1[\omega(r) \in \mathcal I_u]}
                                     {\min(R, |\mathcal I_u|)}

    where :math:`\omega(r)` is the item ranked r-th for user u and :math:`\mathcal I_u` the
    held-out items.

    Args:
        scores: dense ``(users, items)`` scores (tensor or numpy array).
        heldout: binary ``(users, items)`` held-out matrix (dense or ``scipy.sparse``).
        k: cut-off R, in ``[1, items]``.
        exclude: optional binary ``(users, items)`` matrix of items not to rank (fold-in).
        reduction: ``"mean"`` over users with a held-out item (0-dim tensor) or ``"none"``
            (per user, ``nan`` where there is no held-out item).

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.9, 0.8, 0.1, 0.0]])
        >>> h = torch.tensor([[1, 0, 0, 1]])
        >>> float(recall_at_k(s, h, 2))  # one hit out of min(2, 2)
        0.5
    """
    s, h, k = _prepare(scores, heldout, k, exclude)
    n_rel = h.sum(1).to(torch.float64)
    per_user = _hits(s, h, k).sum(1) / n_rel.clamp(max=k).clamp(min=1)
    return _reduce(per_user, n_rel > 0, reduction)


def recall_at_k_recbole(
    scores: Any, heldout: Any, k: int, *, exclude: Any = None, reduction: str = "mean"
) -> Tensor:
    r"""Recall@R as RecBole and Cornac define it: hits over all held-out items.

    .. math::
        \mathrm{Recall@}R_{\mathrm{RecBole}}(u) = \frac{\sum_{r=1}^{R} 1[\omega(r) \in
        \mathcal I_u]}{|\mathcal I_u|}

    Never larger than :func:`recall_at_k`; the two agree for users with at most R held-out items.
    Arguments as in :func:`recall_at_k`.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.9, 0.8, 0.1, 0.0]])
        >>> h = torch.tensor([[1, 1, 1, 0]])
        >>> float(recall_at_k_recbole(s, h, 2)), float(recall_at_k(s, h, 2))
        (0.6666666666666666, 1.0)
    """
    s, h, k = _prepare(scores, heldout, k, exclude)
    n_rel = h.sum(1).to(torch.float64)
    per_user = _hits(s, h, k).sum(1) / n_rel.clamp(min=1)
    return _reduce(per_user, n_rel > 0, reduction)


def ndcg_at_k(
    scores: Any, heldout: Any, k: int, *, exclude: Any = None, reduction: str = "mean"
) -> Tensor:
    r"""Truncated NDCG@R with binary relevance (Liang et al. 2018).

    .. math::
        \mathrm{DCG@}R(u) = \sum_{r=1}^{R} \frac{1[\omega(r)\in\mathcal I_u]}{\log_2(r+1)},\qquad
        \mathrm{NDCG@}R(u) = \frac{\mathrm{DCG@}R(u)}
                                  {\sum_{r=1}^{\min(R, |\mathcal I_u|)} 1/\log_2(r+1)}

    Arguments as in :func:`recall_at_k`.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.9, 0.8, 0.1, 0.0]])
        >>> h = torch.tensor([[0, 1, 0, 0]])
        >>> round(float(ndcg_at_k(s, h, 2)), 6)  # 1/log2(3)
        0.63093
    """
    s, h, k = _prepare(scores, heldout, k, exclude)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=s.device))
    dcg = (_hits(s, h, k) * discount).sum(1)
    n_rel = h.sum(1)
    ideal = torch.cat([discount.new_zeros(1), discount.cumsum(0)])
    idcg = ideal[n_rel.clamp(max=k)]
    per_user = dcg / idcg.clamp(min=discount[-1].item())
    return _reduce(per_user, n_rel > 0, reduction)
