r"""Out-of-distribution detection from uncertainty scores: AUROC, AUPR and FPR at a TPR.

Each function takes the scores of in-distribution examples and of out-of-distribution examples,
where a **higher score means "more likely out of distribution"** (the predictive entropy or the
mutual information of :func:`bayesdrop.mc_predict`, or any other score), and treats detection as a
binary problem in which **out-of-distribution is the positive class**: an example is flagged as
out of distribution when its score is :math:`\ge` a threshold :math:`\theta`. Over all thresholds,

.. math::
    \mathrm{TPR}(\theta) = \frac{|\{j : s^{\mathrm{out}}_j \ge \theta\}|}{n_{\mathrm{out}}},\qquad
    \mathrm{FPR}(\theta) = \frac{|\{i : s^{\mathrm{in}}_i \ge \theta\}|}{n_{\mathrm{in}}},\qquad
    \mathrm{precision}(\theta) = \frac{n_{\mathrm{out}}\,\mathrm{TPR}(\theta)}
    {n_{\mathrm{out}}\,\mathrm{TPR}(\theta) + n_{\mathrm{in}}\,\mathrm{FPR}(\theta)}.

Ties between scores are one threshold (the examples are flagged together), exactly as
scikit-learn's ``roc_curve`` and ``precision_recall_curve``; each function equals scikit-learn's
reference with labels ``1`` for the out-of-distribution scores:

* :func:`ood_auroc` = ``roc_auc_score(y, s)`` (ties count one half: it is
  :math:`P(s^{\mathrm{out}} > s^{\mathrm{in}}) + \tfrac12 P(s^{\mathrm{out}} = s^{\mathrm{in}})`);
* :func:`ood_aupr` = ``average_precision_score(y, s)`` (the step-wise sum
  :math:`\sum_k (R_k - R_{k-1}) P_k`, no interpolation);
* :func:`fpr_at_tpr` = ``fpr[k]`` for the first ``k`` with ``tpr[k] >= tpr`` in
  ``roc_curve(y, s, drop_intermediate=False)``, i.e. the smallest FPR of any threshold whose TPR
  reaches the target.

Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
Neural Networks" (2017), introduced these three numbers as the standard report for OOD detection.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ood_auroc", "ood_aupr", "fpr_at_tpr", "check_scores"]


def check_scores(name: str, values: Any) -> Tensor:
    """``values`` as a 1-D float64 CPU tensor, refusing what is not a finite score per example."""
    if isinstance(values, Tensor):
        t = values.detach().cpu()
    elif isinstance(values, (np.ndarray, list, tuple)):
        try:
            t = torch.as_tensor(np.asarray(values))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must hold numbers, but got {values!r:.60}") from err
    else:
        raise TypeError(
            f"{name} must be a 1-D tensor, numpy array or list of scores, but got "
            f"{type(values).__name__}"
        )
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or _is_int(t)):
        raise TypeError(f"{name} must hold real numbers (scores), but has dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(
            f"{name} must be 1-D (one score per example), but got shape {tuple(t.shape)}; "
            "flatten it first if each element is an example"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} must hold at least one score, but it is empty")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} must be finite, but {bad} of its {t.numel()} scores are NaN or inf"
        )
    return t


def _is_int(t: Tensor) -> bool:
    return t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _counts(in_scores: Any, out_scores: Any) -> tuple[Tensor, Tensor, int, int]:
    """Cumulative (tp, fp) at each distinct threshold, scores in decreasing order (int64)."""
    s_in = check_scores("in_scores", in_scores)
    s_out = check_scores("out_scores", out_scores)
    scores = torch.cat([s_out, s_in])
    positive = torch.cat(
        [torch.ones(len(s_out), dtype=torch.int64), torch.zeros(len(s_in), dtype=torch.int64)]
    )
    order = torch.argsort(scores, descending=True, stable=True)
    scores, positive = scores[order], positive[order]
    # the last position of each group of equal scores is one threshold
    ends = torch.nonzero(scores[1:] != scores[:-1]).flatten()
    ends = torch.cat([ends, torch.tensor([len(scores) - 1])])
    tp = positive.cumsum(0)[ends]
    fp = ends + 1 - tp
    return tp, fp, len(s_out), len(s_in)


def ood_auroc(in_scores: Any, out_scores: Any) -> Tensor:
    r"""Area under the ROC curve of out-of-distribution detection (OOD is the positive class).

    .. math::
        \mathrm{AUROC} = \frac{1}{n_{\mathrm{in}} n_{\mathrm{out}}}\sum_{i,j}
        \Bigl(1[s^{\mathrm{out}}_j > s^{\mathrm{in}}_i] + \tfrac12\,1[s^{\mathrm{out}}_j =
        s^{\mathrm{in}}_i]\Bigr),

    the trapezoidal area under :math:`(\mathrm{FPR}(\theta), \mathrm{TPR}(\theta))`; equal to
    scikit-learn's ``roc_auc_score`` with labels 1 for ``out_scores``. 0.5 is chance, 1 perfect.
    Computed from integer counts, so it is exact up to the final division.

    Args:
        in_scores: ``(n_in,)`` scores of in-distribution examples (tensor, array or list).
        out_scores: ``(n_out,)`` scores of out-of-distribution examples; higher means "more
            likely out of distribution".

    Returns:
        A 0-dim float64 tensor in ``[0, 1]``.

    Example:
        >>> float(ood_auroc([0.1, 0.2, 0.3], [0.25, 0.4]))  # 5 of the 6 pairs ordered right
        0.8333333333333334
    """
    tp, fp, n_out, n_in = _counts(in_scores, out_scores)
    zero = torch.zeros(1, dtype=torch.int64)
    tp, fp = torch.cat([zero, tp]), torch.cat([zero, fp])
    # twice the area in units of one (1/n_in) x (1/n_out) cell: an exact integer
    twice = int(((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])).sum())
    return torch.tensor(twice / (2 * n_in * n_out), dtype=torch.float64)


def ood_aupr(in_scores: Any, out_scores: Any) -> Tensor:
    r"""Area under the precision-recall curve with out-of-distribution as the positive class.

    .. math::
        \mathrm{AUPR} = \sum_k (R_k - R_{k-1})\,P_k,

    over the distinct scores in decreasing order (:math:`R_k` the recall = TPR, :math:`P_k` the
    precision at the :math:`k`-th threshold, :math:`R_0 = 0`): scikit-learn's
    ``average_precision_score`` with labels 1 for ``out_scores``. Chance level is the fraction
    :math:`n_{\mathrm{out}} / (n_{\mathrm{in}} + n_{\mathrm{out}})`, so compare AUPRs only at the
    same ratio of the two sets.

    Args:
        in_scores, out_scores: as :func:`ood_auroc`.

    Returns:
        A 0-dim float64 tensor in ``(0, 1]``.

    Example:
        >>> float(ood_aupr([0.1, 0.2, 0.3], [0.25, 0.4]))  # (1/2)(1/1) + (1/2)(2/3)
        0.8333333333333333
    """
    tp, fp, n_out, _ = _counts(in_scores, out_scores)
    tp64 = tp.to(torch.float64)
    precision = tp64 / (tp + fp).to(torch.float64)
    recall_step = torch.diff(tp, prepend=torch.zeros(1, dtype=torch.int64)).to(torch.float64)
    return (recall_step / n_out * precision).sum()


def fpr_at_tpr(in_scores: Any, out_scores: Any, tpr: float = 0.95) -> Tensor:
    r"""False-positive rate at the first threshold whose true-positive rate reaches ``tpr``.

    .. math::
        \mathrm{FPR@TPR}_t = \min\{\mathrm{FPR}(\theta) : \mathrm{TPR}(\theta) \ge t\},

    the fraction of in-distribution examples flagged as out of distribution when the threshold is
    lowered just enough to flag a fraction :math:`\ge t` of the out-of-distribution examples
    (FPR95 for ``tpr=0.95``). Thresholds are the distinct scores (ties flagged together); the
    value equals ``fpr[k]`` at the first ``k`` with ``tpr[k] >= t`` of scikit-learn's
    ``roc_curve(y, s, drop_intermediate=False)`` (TPR computed as ``tp / n_out`` in float64).
    Lower is better.

    Args:
        in_scores, out_scores: as :func:`ood_auroc`.
        tpr: the target true-positive rate, in ``(0, 1]``.

    Returns:
        A 0-dim float64 tensor in ``[0, 1]``.

    Example:
        >>> float(fpr_at_tpr([0.1, 0.2, 0.3], [0.25, 0.4], tpr=0.95))  # flag >= 0.25: 1 of 3 in
        0.3333333333333333
    """
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)):
        raise TypeError(f"tpr must be a float in (0, 1], but got {type(tpr).__name__}")
    target = float(tpr)
    if not (0.0 < target <= 1.0) or math.isnan(target):
        raise ValueError(f"tpr must be in (0, 1], but got {tpr}")
    tp, fp, n_out, n_in = _counts(in_scores, out_scores)
    rates = tp.to(torch.float64) / n_out
    k = int(torch.nonzero(rates >= target)[0, 0])  # rates end at 1, so some k reaches the target
    return fp[k].to(torch.float64) / n_in
