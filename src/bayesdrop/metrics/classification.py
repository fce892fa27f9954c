r"""Classification metrics on predictive probabilities: accuracy, NLL, Brier, ECE and PAvPU.

Every function takes ``probs`` of shape ``(N, C)`` (rows on the simplex, e.g.
:attr:`bayesdrop.uncertainty.MCClassification.probs`) and integer ``labels`` of shape ``(N,)`` in
``[0, C)``, checks them, and returns tensors. Entropies are in nats (natural log).

PAvPU (Mukhoti & Gal, 2018; eq. (9) of the LBD paper) counts predictions that are accurate
(argmax equals the label) or not, and certain (predictive entropy :math:`\le` threshold) or
uncertain (entropy :math:`>` threshold):

.. math::
    \mathrm{PAvPU} = \frac{n_{ac} + n_{iu}}{n_{ac} + n_{au} + n_{ic} + n_{iu}}.

It rewards accurate-and-certain and inaccurate-and-uncertain predictions. (Some public copies put
:math:`n_{ic}` in the numerator, which rewards confident mistakes; this module follows the
definition.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_int

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "ece",
    "calibration_bins",
    "CalibrationBins",
    "predictive_entropy",
    "PAvPUCounts",
    "pavpu_counts",
    "pavpu",
    "p_accurate_given_certain",
    "p_uncertain_given_inaccurate",
    "PAvPUCurve",
    "pavpu_curve",
    "entropy_thresholds",
    "check_probs",
    "check_labels",
]

_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- validation
def check_probs(
    probs: Tensor, *, class_dim: int = 1, name: str = "probs", min_dim: int = 2
) -> Tensor:
    """Check ``probs`` is a finite floating tensor of probabilities summing to one along ``class_dim``.

    The tolerance on the sums and on the range ``[0, 1]`` is ``1e-4`` (``1e-2`` for half
    precision), so rounding in a softmax or an average never trips it.
    """
    if not isinstance(probs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, but got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of probabilities, got {probs.dtype}")
    if probs.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dims, got shape {tuple(probs.shape)}"
        )
    if probs.shape[class_dim] < 2:
        raise ValueError(
            f"{name} needs at least 2 classes along dim {class_dim}, got {tuple(probs.shape)}"
        )
    if not bool(torch.isfinite(probs).all()):
        raise ValueError(f"{name} must be finite, but it contains NaN or inf")
    tol = 1e-2 if probs.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if bool((probs < -tol).any()) or bool((probs > 1 + tol).any()):
        raise ValueError(f"{name} must lie in [0, 1]")
    if probs.numel():
        dev = float((probs.sum(class_dim) - 1).abs().max())
        if dev > tol:
            raise ValueError(
                f"{name} must sum to one along dim {class_dim} (a probability per class), but "
                f"the largest deviation is {dev:.3g}; apply softmax to logits first"
            )
    return probs


def check_labels(
    labels: Tensor,
    shape: tuple[int, ...],
    num_classes: int,
    *,
    name: str = "labels",
    ignore_index: int | None = None,
) -> Tensor:
    """Check ``labels`` is an integer tensor of ``shape`` with values in ``[0, num_classes)``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, but got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} to match the probabilities, but got {tuple(labels.shape)}"
        )
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes - 1}] (one of {num_classes} classes), but got "
            f"values in [{int(valid.min())}, {int(valid.max())}]"
        )
    return labels


def _check(probs: Tensor, labels: Tensor) -> None:
    if isinstance(probs, Tensor) and probs.dim() != 2:
        raise ValueError(f"probs must have shape (N, C), but got {tuple(probs.shape)}")
    check_probs(probs)
    if probs.shape[0] == 0:
        raise ValueError("probs must hold at least one prediction (N >= 1)")
    check_labels(labels, (probs.shape[0],), probs.shape[1])


def _xlogx(probs: Tensor) -> Tensor:
    """:math:`p \\log p` with :math:`0 \\log 0 = 0`; rounding just outside [0, 1] is clipped first."""
    p = probs.clamp(0.0, 1.0)
    return torch.special.xlogy(p, p)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}, but got {reduction!r}")
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


# --------------------------------------------------------------------------- basic metrics
def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    r"""Fraction of predictions whose argmax equals the label, :math:`\frac1N\sum_i 1[\hat y_i = y_i]`.

    Example:
        >>> import torch
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]))
        tensor(0.5000)
    """
    _check(probs, labels)
    return (probs.argmax(1) == labels).to(probs.dtype).mean()


def nll(probs: Tensor, labels: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Negative log-likelihood of the labels, :math:`-\frac1N\sum_i \log p_{i, y_i}` (nats).

    A zero probability is clamped to the smallest positive normal number of the dtype, so the
    result is finite (about 87.3 in float32, 708.4 in float64).

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per example).

    Example:
        >>> import torch
        >>> round(float(nll(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1]))), 6)
        0.490415
    """
    _check(probs, labels)
    p = probs.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return _reduce(-p.clamp_min(torch.finfo(probs.dtype).tiny).log(), reduction)


def brier(probs: Tensor, labels: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Brier score (Brier, 1950), summed over classes: :math:`\frac1N\sum_i\sum_k (p_{ik} - 1[y_i = k])^2`.

    It lies in ``[0, 2]``.

    Example:
        >>> import torch
        >>> brier(torch.tensor([[0.75, 0.25]]), torch.tensor([0]))
        tensor(0.1250)
    """
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[1]).to(probs.dtype)
    return _reduce((probs - onehot).pow(2).sum(1), reduction)


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics of the top-label confidence (what a reliability diagram draws).

    Attributes:
        edges: ``n_bins + 1`` bin edges on ``[0, 1]``; bin ``m`` is ``(edges[m], edges[m+1]]``.
        confidence: mean confidence per bin (0 for empty bins).
        accuracy: accuracy per bin (0 for empty bins).
        count: number of predictions per bin.
    """

    edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    count: Tensor

    @property
    def ece(self) -> Tensor:
        r"""The expected calibration error of these bins,
        :math:`\sum_m \frac{|B_m|}{N} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|` (what :func:`ece`
        returns)."""
        return (self.count / self.count.sum() * (self.accuracy - self.confidence).abs()).sum()


def calibration_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> CalibrationBins:
    """Bin the top-label confidence into ``n_bins`` equal-width bins ``(m/M, (m+1)/M]``."""
    _check(probs, labels)
    n_bins = check_int("n_bins", n_bins)
    conf, pred = probs.max(1)
    correct = (pred == labels).to(probs.dtype)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=probs.dtype, device=probs.device)
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.bincount(idx, minlength=n_bins).to(probs.dtype)
    conf_sum = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device).index_add_(
        0, idx, correct
    )
    safe = count.clamp_min(1.0)
    return CalibrationBins(edges, conf_sum / safe, acc_sum / safe, count)


def ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    r"""Expected calibration error (Naeini et al., 2015; Guo et al., 2017) of the top label.

    .. math::
        \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}\,\bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|

    with equal-width bins :math:`B_m = ((m-1)/M, m/M]` of the confidence :math:`\max_k p_{ik}`.

    The bins themselves (what a reliability diagram draws, :func:`bayesdrop.plots.reliability_diagram`)
    are :func:`calibration_bins`; ``ece(probs, labels, M) == calibration_bins(probs, labels, M).ece``.

    Args:
        n_bins: number of bins :math:`M \ge 1` (15 by default, as Guo et al.).

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
        >>> round(float(ece(probs, torch.tensor([0, 1, 1]), n_bins=2)), 6)
        0.133333
    """
    return calibration_bins(probs, labels, n_bins).ece


def predictive_entropy(probs: Tensor, *, dim: int = 1) -> Tensor:
    r"""Entropy in nats along ``dim``, :math:`H[p] = -\sum_k p_k \log p_k` (:math:`0\log 0 = 0`).

    Example:
        >>> import torch
        >>> round(float(predictive_entropy(torch.tensor([[0.5, 0.5]]))), 6)  # log 2
        0.693147
    """
    check_probs(probs, class_dim=dim, min_dim=1)
    return -_xlogx(probs).sum(dim)


# --------------------------------------------------------------------------- PAvPU
@dataclass(frozen=True)
class PAvPUCounts:
    """The four counts of eq. (9): accurate/inaccurate × certain/uncertain (0-dim tensors)."""

    n_ac: Tensor
    n_au: Tensor
    n_ic: Tensor
    n_iu: Tensor

    @property
    def n(self) -> Tensor:
        return self.n_ac + self.n_au + self.n_ic + self.n_iu


def _uncertainty(
    probs: Tensor, labels: Tensor, uncertainty: Tensor | None
) -> tuple[Tensor, Tensor]:
    _check(probs, labels)
    if uncertainty is None:
        unc = -_xlogx(probs).sum(1)
    else:
        if not isinstance(uncertainty, Tensor) or tuple(uncertainty.shape) != (probs.shape[0],):
            raise ValueError(
                f"uncertainty must be a tensor of shape ({probs.shape[0]},) (one score per prediction)"
            )
        if not bool(torch.isfinite(uncertainty).all()):
            raise ValueError("uncertainty must be finite")
        unc = uncertainty
    return unc, probs.argmax(1) == labels


def _counts(accurate: Tensor, uncertain: Tensor) -> PAvPUCounts:
    a, u = accurate, uncertain

    def c(mask: Tensor) -> Tensor:
        return mask.sum(-1).to(torch.float64)

    return PAvPUCounts(c(a & ~u), c(a & u), c(~a & ~u), c(~a & u))


def _check_threshold(threshold: float | Tensor) -> float:
    t = float(threshold)
    if t != t:
        raise ValueError("threshold must not be NaN")
    return t


def pavpu_counts(
    probs: Tensor, labels: Tensor, threshold: float, *, uncertainty: Tensor | None = None
) -> PAvPUCounts:
    """Counts :math:`n_{ac}, n_{au}, n_{ic}, n_{iu}` at an entropy ``threshold`` (uncertain: ``>``)."""
    unc, acc = _uncertainty(probs, labels, uncertainty)
    return _counts(acc, unc > _check_threshold(threshold))


def _ratio(num: Tensor, den: Tensor, zero_division: float) -> Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float(zero_division)))


def pavpu(
    probs: Tensor, labels: Tensor, threshold: float, *, uncertainty: Tensor | None = None
) -> Tensor:
    r"""Patch accuracy versus patch uncertainty for per-example predictions, eq. (9) of the LBD paper.

    .. math::
        \mathrm{PAvPU} = \frac{n_{ac} + n_{iu}}{n_{ac} + n_{au} + n_{ic} + n_{iu}}

    A prediction is accurate when ``probs.argmax(1) == labels`` and uncertain when its predictive
    entropy (nats) is strictly greater than ``threshold``.

    Args:
        probs: ``(N, C)`` predictive probabilities.
        labels: ``(N,)`` class indices.
        threshold: entropy threshold in nats.
        uncertainty: optional ``(N,)`` scores to threshold instead of the predictive entropy
            (e.g. the mutual information).

    Returns:
        A 0-dim float64 tensor in ``[0, 1]``.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.99, 0.01], [0.6, 0.4], [0.55, 0.45], [0.97, 0.03]])
        >>> labels = torch.tensor([0, 0, 1, 1])  # accurate, accurate, wrong, wrong
        >>> float(pavpu(probs, labels, threshold=0.5))  # (n_ac + n_iu) / n = (1 + 1) / 4
        0.5
    """
    c = pavpu_counts(probs, labels, threshold, uncertainty=uncertainty)
    return (c.n_ac + c.n_iu) / c.n


def p_accurate_given_certain(
    probs: Tensor,
    labels: Tensor,
    threshold: float,
    *,
    uncertainty: Tensor | None = None,
    zero_division: float = 0.0,
) -> Tensor:
    r""":math:`P(\text{accurate} \mid \text{certain}) = n_{ac} / (n_{ac} + n_{ic})`.

    ``zero_division`` is returned when no prediction is certain.
    """
    c = pavpu_counts(probs, labels, threshold, uncertainty=uncertainty)
    return _ratio(c.n_ac, c.n_ac + c.n_ic, zero_division)


def p_uncertain_given_inaccurate(
    probs: Tensor,
    labels: Tensor,
    threshold: float,
    *,
    uncertainty: Tensor | None = None,
    zero_division: float = 0.0,
) -> Tensor:
    r""":math:`P(\text{uncertain} \mid \text{inaccurate}) = n_{iu} / (n_{ic} + n_{iu})`.

    ``zero_division`` is returned when every prediction is accurate.
    """
    c = pavpu_counts(probs, labels, threshold, uncertainty=uncertainty)
    return _ratio(c.n_iu, c.n_ic + c.n_iu, zero_division)


@dataclass(frozen=True)
class PAvPUCurve:
    """PAvPU and its two conditional probabilities over thresholds ``min + t (max - min)``.

    Attributes:
        t: the fractions ``t`` in ``[0, 1]``, shape ``(T,)``.
        thresholds: the entropy thresholds (nats), shape ``(T,)``.
        pavpu: PAvPU at each threshold.
        p_accurate_given_certain, p_uncertain_given_inaccurate: the conditionals at each
            threshold (``zero_division`` where undefined).
    """

    t: Tensor
    thresholds: Tensor
    pavpu: Tensor
    p_accurate_given_certain: Tensor
    p_uncertain_given_inaccurate: Tensor

    @property
    def mean(self) -> Tensor:
        """Mean PAvPU over the thresholds (the "Mean PAvPU" of the LBD paper's Table 1)."""
        return self.pavpu.mean()


def entropy_thresholds(
    scores: Tensor, ts: Tensor | None = None, *, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """``(ts, thresholds)`` with thresholds ``min + t (max - min)`` of ``scores``; ``ts`` defaults to 11 points."""
    if ts is None:
        ts = torch.linspace(0.0, 1.0, 11, dtype=dtype)
    ts = torch.as_tensor(ts, dtype=dtype).flatten().cpu()
    if ts.numel() == 0:
        raise ValueError("ts must hold at least one value")
    if not bool(torch.isfinite(ts).all()) or bool((ts < 0).any()) or bool((ts > 1).any()):
        raise ValueError(
            f"ts must lie in [0, 1], but got values in [{float(ts.min())}, {float(ts.max())}]"
        )
    s = scores.detach().to(dtype).cpu()
    lo, hi = s.min(), s.max()
    return ts, lo + ts * (hi - lo)


def _curve_from(unc: Tensor, acc: Tensor, ts: Tensor | None, zero_division: float) -> PAvPUCurve:
    ts_, thr = entropy_thresholds(unc, ts)
    u = unc.detach().to(torch.float64).cpu()
    a = acc.detach().cpu()
    uncertain = u.unsqueeze(0) > thr.unsqueeze(1)  # (T, n)
    c = _counts(a.unsqueeze(0).expand_as(uncertain), uncertain)
    pav = (c.n_ac + c.n_iu) / c.n
    pac = _ratio(c.n_ac, c.n_ac + c.n_ic, zero_division)
    pui = _ratio(c.n_iu, c.n_ic + c.n_iu, zero_division)
    return PAvPUCurve(ts_, thr, pav, pac, pui)


def pavpu_curve(
    probs: Tensor,
    labels: Tensor,
    ts: Tensor | None = None,
    *,
    uncertainty: Tensor | None = None,
    zero_division: float = 0.0,
) -> PAvPUCurve:
    r"""PAvPU over entropy thresholds :math:`H_{\min} + t\,(H_{\max} - H_{\min})` (LBD paper §3.2).

    :math:`H_{\min}, H_{\max}` are the smallest and largest predictive entropies over the
    evaluated set; the curve's :attr:`~PAvPUCurve.mean` is the paper's "Mean PAvPU".

    Args:
        probs: ``(N, C)`` predictive probabilities.
        labels: ``(N,)`` class indices.
        ts: fractions in ``[0, 1]`` (default ``torch.linspace(0, 1, 11)``).
        uncertainty: optional ``(N,)`` scores used instead of the predictive entropy.
        zero_division: value of a conditional probability whose conditioning set is empty.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.99, 0.01], [0.6, 0.4], [0.55, 0.45], [0.97, 0.03]])
        >>> curve = pavpu_curve(probs, torch.tensor([0, 0, 1, 1]), ts=torch.tensor([0.0, 1.0]))
        >>> curve.pavpu.tolist(), float(curve.mean)
        ([0.75, 0.5], 0.625)
    """
    unc, acc = _uncertainty(probs, labels, uncertainty)
    return _curve_from(unc, acc, ts, zero_division)
