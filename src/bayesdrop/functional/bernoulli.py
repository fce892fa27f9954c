"""Pure tensor math of Bernoulli dropout with learned rates (LBD) and fixed-rate MC dropout."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOGIT_BOUND",
    "bernoulli_entropy",
    "inverted_scale",
    "bernoulli_dropout",
    "gal_bernoulli_kl",
    "uniform_dtype",
    "column_sq_norms",
]

#: Learned drop logits are clamped to ``[-LOGIT_BOUND, LOGIT_BOUND]`` in every computation, so
#: ``p`` stays in ``[9.4e-14, 1 - 9.4e-14]`` and ``1 / (1 - p)`` stays finite in float32.
LOGIT_BOUND = 30.0


def uniform_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype for uniforms, keep probabilities and estimator coefficients: float64 when any of
    ``dtypes`` is float64, float32 otherwise (bfloat16/float16 activations included).

    A bfloat16 uniform takes only a few thousand distinct values in [0, 1) (its mean is off 1/2 by
    about 2e-3), which would bias both the masks and the ARM/DisARM coefficients.

    Example:
        >>> import torch
        >>> uniform_dtype(torch.bfloat16), uniform_dtype(torch.float16, torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float64 if torch.float64 in dtypes else torch.float32


class _ColumnSqNorms(torch.autograd.Function):
    """``w.square().sum(0)`` with a one-pass backward, ``2 w * g``."""

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return w.square().sum(0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return w * (2.0 * grad)


def column_sq_norms(weight: Tensor) -> Tensor:
    r"""Squared L2 norm of every column of a matrix, :math:`n_k = \sum_j W_{jk}^2`, shape ``(k,)``.

    The same values and gradients as ``weight.pow(2).sum(0)``, with a backward pass that reads
    the weight once (:math:`\partial n_k/\partial W_{jk} = 2W_{jk}`) instead of through the
    generic power rule: the prior's cost on large layers is one read of the weights forward and
    one write of their gradient backward.

    Example:
        >>> import torch
        >>> column_sq_norms(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([10., 20.])
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a matrix, but got shape {tuple(weight.shape)}")
    out: Tensor = _ColumnSqNorms.apply(weight)
    return out


def bernoulli_entropy(logits: Tensor) -> Tensor:
    r"""Entropy in nats of :math:`\mathrm{Ber}(\sigma(a))`, computed stably from the logit.

    .. math::
        H = \sigma(a)\,\mathrm{softplus}(-a) + \sigma(-a)\,\mathrm{softplus}(a)

    Symmetric in :math:`a`, so it is the same for drop and keep logits.

    Example:
        >>> import torch
        >>> round(float(bernoulli_entropy(torch.tensor(0.0))), 6)  # log 2
        0.693147
    """
    return torch.sigmoid(logits) * F.softplus(-logits) + torch.sigmoid(-logits) * F.softplus(logits)


def inverted_scale(logit_p: Tensor) -> Tensor:
    r"""The inverted-dropout scale :math:`1/(1-p) = 1 + e^{\mathrm{logit}\,p}` (exact and stable)."""
    return torch.exp(logit_p).add(1.0)


def bernoulli_dropout(x: Tensor, logit_p: Tensor, keep: Tensor) -> Tensor:
    r"""Inverted Bernoulli dropout with a given mask: :math:`x \odot z / (1 - p)`.

    Args:
        x: input.
        logit_p: drop logits, broadcastable against ``x``; the scale :math:`1/(1-p)` is
            differentiated pathwise with respect to them.
        keep: the mask ``z`` (bool or float, 1 = keep), broadcastable against ``x``.
    """
    return x * (keep.to(x.dtype) * inverted_scale(logit_p).to(x.dtype))


def gal_bernoulli_kl(
    logit_p: Tensor, weight_sq_norms: Tensor | None, length_scale: float
) -> Tensor:
    r"""Gal's quantised-Gaussian KL for Bernoulli dropout on input units (LBD paper, §2.2).

    With keep probability :math:`\pi_k = 1 - p_k` of input unit :math:`k`, prior
    :math:`w \sim \mathcal N(0, s^2)`, :math:`s = 1/l` (``length_scale`` :math:`l`), and mean weights
    :math:`M` of the variational distribution :math:`W = M\,\mathrm{diag}(z)`,

    .. math::
        \mathrm{KL} \approx \sum_k \frac{\pi_k}{2 s^2}\,\|M_{\cdot k}\|^2 - H(\pi_k)
                  = \sum_k \frac{l^2}{2\pi_k}\,\|W_{\cdot k}\|^2 - H(\pi_k),

    where the second form is written in the weights :math:`W = \pi M` that a layer fed by
    *inverted* dropout (:math:`x z/\pi`) actually stores. Without weights (bare form) only the
    entropy term remains. Returns a 0-dim tensor (a sum, never scaled by the data-set size).
    """
    logit_p = logit_p.clamp(-LOGIT_BOUND, LOGIT_BOUND)
    entropy = bernoulli_entropy(logit_p)
    units = weight_sq_norms.shape[0] if weight_sq_norms is not None else entropy.numel()
    neg_entropy = -entropy.expand(units).sum() if entropy.numel() == 1 else -entropy.sum()
    if weight_sq_norms is None:
        return neg_entropy
    weight_term = 0.5 * length_scale**2 * (weight_sq_norms * inverted_scale(logit_p)).sum()
    return weight_term + neg_entropy
