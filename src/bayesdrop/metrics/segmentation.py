r"""Segmentation metrics: patch-wise PAvPU (Mukhoti & Gal, 2018) and mean IoU.

Mukhoti & Gal judge uncertainty on regions rather than single pixels, and the LBD paper (§3.2)
follows them with :math:`w \times w` windows (:math:`w = 2`). For each window (patch):

* its **uncertainty** is the mean predictive entropy (nats) of its pixels, and it is
  *uncertain* when that mean is strictly greater than the threshold;
* it is **accurate** when the fraction of its pixels whose argmax equals the label is at least
  ``accuracy_threshold`` (Mukhoti & Gal's :math:`T_{acc}`; default 0.5).

PAvPU is then eq. (9) over patches, :math:`(n_{ac} + n_{iu}) / n`. Windows move by ``stride``
pixels (default ``window``: non-overlapping patches; ``stride=1`` gives every overlapping
window); windows that do not fit inside the image at the right/bottom edges are dropped, as in
:func:`torch.nn.functional.avg_pool2d`. Pixels labelled ``ignore_index`` count in neither the
accuracy nor the entropy of their patch, and patches with no labelled pixel are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_int, check_probability
from .classification import (
    PAvPUCurve,
    _counts,
    _curve_from,
    _ratio,
    _xlogx,
    check_labels,
    check_probs,
)

__all__ = [
    "patch_statistics",
    "patch_pavpu",
    "patch_pavpu_curve",
    "confusion_matrix",
    "mean_iou",
    "per_class_iou",
    "pixel_accuracy",
]


def _check_seg(probs: Tensor, labels: Tensor, ignore_index: int | None) -> None:
    if isinstance(probs, Tensor) and probs.dim() != 4:
        raise ValueError(f"probs must have shape (N, C, H, W), but got {tuple(probs.shape)}")
    check_probs(probs)
    n, c, h, w = probs.shape
    check_labels(labels, (n, h, w), c, ignore_index=ignore_index)


def patch_statistics(
    probs: Tensor,
    labels: Tensor,
    *,
    window: int = 2,
    stride: int | None = None,
    accuracy_threshold: float = 0.5,
    ignore_index: int | None = None,
    uncertainty: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-patch mean entropy and accuracy flag, each a flat tensor over the kept patches.

    Args:
        probs: ``(N, C, H, W)`` predictive probabilities.
        labels: ``(N, H, W)`` class indices.
        window: patch side :math:`w` (2 by default, as in the LBD paper).
        stride: step between windows (default ``window``: non-overlapping).
        accuracy_threshold: a patch is accurate when its pixel accuracy is ``>=`` this, in (0, 1].
        ignore_index: label value of unlabelled pixels, or ``None``.
        uncertainty: optional ``(N, H, W)`` per-pixel scores used instead of the entropy.

    Returns:
        ``(patch_uncertainty, patch_accurate)``: float64 and bool tensors of shape ``(P,)``.
    """
    _check_seg(probs, labels, ignore_index)
    window = check_int("window", window)
    stride = window if stride is None else check_int("stride", stride)
    accuracy_threshold = check_probability(
        "accuracy_threshold", accuracy_threshold, high_open=False
    )
    n, _, h, w = probs.shape
    if window > h or window > w:
        raise ValueError(f"window={window} does not fit in images of size {h}x{w}")
    if uncertainty is None:
        unc = -_xlogx(probs).sum(1)
    else:
        if not isinstance(uncertainty, Tensor) or tuple(uncertainty.shape) != (n, h, w):
            raise ValueError(
                f"uncertainty must be a tensor of shape {(n, h, w)} (one score per pixel)"
            )
        if not bool(torch.isfinite(uncertainty).all()):
            raise ValueError("uncertainty must be finite")
        unc = uncertainty
    valid = (
        torch.ones_like(labels, dtype=torch.bool)
        if ignore_index is None
        else labels != ignore_index
    )
    correct = (probs.argmax(1) == labels) & valid

    def pool_sum(x: Tensor) -> Tensor:
        return F.avg_pool2d(x.to(torch.float64).unsqueeze(1), window, stride).squeeze(1) * (
            window * window
        )

    count = pool_sum(valid)
    keep = count > 0
    safe = count.clamp_min(1.0)
    patch_unc = pool_sum(unc.detach() * valid) / safe
    patch_acc = pool_sum(correct) / safe >= accuracy_threshold
    return patch_unc[keep], patch_acc[keep]


def patch_pavpu(
    probs: Tensor,
    labels: Tensor,
    threshold: float,
    *,
    window: int = 2,
    stride: int | None = None,
    accuracy_threshold: float = 0.5,
    ignore_index: int | None = None,
    uncertainty: Tensor | None = None,
) -> Tensor:
    r"""Patch-wise PAvPU, eq. (9) over :math:`w\times w` patches (see the module docstring).

    .. math::
        \mathrm{PAvPU} = \frac{n_{ac} + n_{iu}}{n_{ac} + n_{au} + n_{ic} + n_{iu}}

    Example:
        >>> import torch
        >>> probs = torch.zeros(1, 2, 2, 4)
        >>> probs[:, 0] = torch.tensor([[0.9, 0.9, 0.5, 0.5], [0.9, 0.9, 0.5, 0.5]])
        >>> probs[:, 1] = 1 - probs[:, 0]
        >>> labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])  # left patch right, right wrong
        >>> float(patch_pavpu(probs, labels, threshold=0.5))  # certain+accurate, uncertain+wrong
        1.0
    """
    unc, acc = patch_statistics(
        probs,
        labels,
        window=window,
        stride=stride,
        accuracy_threshold=accuracy_threshold,
        ignore_index=ignore_index,
        uncertainty=uncertainty,
    )
    if unc.numel() == 0:
        raise ValueError("no patch holds a labelled pixel")
    c = _counts(acc, unc > float(threshold))
    return (c.n_ac + c.n_iu) / c.n


def patch_pavpu_curve(
    probs: Tensor,
    labels: Tensor,
    ts: Tensor | None = None,
    *,
    window: int = 2,
    stride: int | None = None,
    accuracy_threshold: float = 0.5,
    ignore_index: int | None = None,
    uncertainty: Tensor | None = None,
    zero_division: float = 0.0,
) -> PAvPUCurve:
    r"""Patch-wise PAvPU at thresholds :math:`U_{\min} + t(U_{\max} - U_{\min})` of the patch entropies.

    The minimum and maximum are over the patches of the evaluated set; the curve's ``mean`` is the
    "Mean PAvPU" of the LBD paper's CamVid column.
    """
    unc, acc = patch_statistics(
        probs,
        labels,
        window=window,
        stride=stride,
        accuracy_threshold=accuracy_threshold,
        ignore_index=ignore_index,
        uncertainty=uncertainty,
    )
    if unc.numel() == 0:
        raise ValueError("no patch holds a labelled pixel")
    return _curve_from(unc, acc, ts, zero_division)


def _predictions(
    pred: Tensor, labels: Tensor, num_classes: int | None, ignore_index: int | None
) -> tuple[Tensor, int]:
    if not isinstance(pred, Tensor):
        raise TypeError(f"pred must be a torch.Tensor, but got {type(pred).__name__}")
    if pred.is_floating_point():
        check_probs(pred)
        k = pred.shape[1]
        if num_classes is not None and num_classes != k:
            raise ValueError(f"num_classes={num_classes} does not match the {k} classes of pred")
        pred = pred.argmax(1)
    else:
        if num_classes is None:
            raise ValueError("num_classes is needed when pred holds class indices")
        k = check_int("num_classes", num_classes, minimum=2)
        check_labels(pred, tuple(pred.shape), k, name="pred")
    check_labels(labels, tuple(pred.shape), k, ignore_index=ignore_index)
    return pred, k


def confusion_matrix(
    pred: Tensor, labels: Tensor, num_classes: int | None = None, *, ignore_index: int | None = None
) -> Tensor:
    """``(C, C)`` counts, row = true class, column = predicted class.

    Args:
        pred: probabilities ``(N, C, *)`` (argmax taken along dim 1) or class indices ``(N, *)``.
        labels: class indices ``(N, *)``.
        num_classes: needed when ``pred`` holds indices.
        ignore_index: label value left out.
    """
    p, k = _predictions(pred, labels, num_classes, ignore_index)
    keep = (
        torch.ones_like(labels, dtype=torch.bool)
        if ignore_index is None
        else labels != ignore_index
    )
    idx = labels[keep].long() * k + p[keep].long()
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def per_class_iou(
    pred: Tensor, labels: Tensor, num_classes: int | None = None, *, ignore_index: int | None = None
) -> tuple[Tensor, Tensor]:
    r"""IoU per class, :math:`|\hat Y_k \cap Y_k| / |\hat Y_k \cup Y_k|`, and which classes occur.

    Returns:
        ``(iou, present)``: float64 ``(C,)`` IoUs (0 where the class is neither predicted nor
        labelled) and the bool mask of classes with a non-empty union.
    """
    cm = confusion_matrix(pred, labels, num_classes, ignore_index=ignore_index).to(torch.float64)
    inter = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return inter / union.clamp_min(1.0), present


def mean_iou(
    pred: Tensor, labels: Tensor, num_classes: int | None = None, *, ignore_index: int | None = None
) -> Tensor:
    r"""Mean intersection over union over the classes that occur (predicted or labelled).

    .. math::
        \mathrm{mIoU} = \frac{1}{|K|}\sum_{k\in K} \frac{TP_k}{TP_k + FP_k + FN_k}

    Example:
        >>> import torch
        >>> pred = torch.tensor([[0, 0, 1, 1]])
        >>> labels = torch.tensor([[0, 1, 1, 1]])
        >>> round(float(mean_iou(pred, labels, num_classes=3)), 6)  # (1/2 + 2/3) / 2
        0.583333
    """
    iou, present = per_class_iou(pred, labels, num_classes, ignore_index=ignore_index)
    if not bool(present.any()):
        raise ValueError("no labelled pixel to score")
    return iou[present].mean()


def pixel_accuracy(
    pred: Tensor, labels: Tensor, num_classes: int | None = None, *, ignore_index: int | None = None
) -> Tensor:
    """Fraction of labelled pixels whose prediction equals the label (float64, 0-dim)."""
    cm = confusion_matrix(pred, labels, num_classes, ignore_index=ignore_index).to(torch.float64)
    total = cm.sum()
    return _ratio(cm.diagonal().sum(), total, 0.0)
