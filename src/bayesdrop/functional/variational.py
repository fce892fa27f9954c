"""Variational dropout (Kingma, Salimans & Welling 2015): learned α, log-uniform prior.

The noise itself is Gaussian dropout (:mod:`bayesdrop.functional.gaussian`) with
:math:`\\alpha = e^{\\log\\alpha}` learned by the pathwise gradient; this module adds the two
pieces specific to the variational reading: the clamp :math:`\\alpha \\le \\alpha_{\\max}` and the
KL term summed over the weights each :math:`\\alpha` governs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .kl import LOG_ALPHA_MIN, kl_log_uniform

__all__ = ["clamp_log_alpha", "variational_dropout_kl"]


class _InwardClamp(torch.autograd.Function):
    """Clamp whose gradient is blocked outside the range only when it points further out."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: float, high: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        # Gradient descent moves x by -grad: above the range only grad > 0 moves it back in.
        passes = ((x >= ctx.low) & (x <= ctx.high)) | ((x > ctx.high) & (grad > 0))
        passes = passes | ((x < ctx.low) & (grad < 0))
        return grad * passes.to(grad.dtype), None, None


def clamp_log_alpha(
    log_alpha: Tensor, max_log_alpha: float = 0.0, min_log_alpha: float = LOG_ALPHA_MIN
) -> Tensor:
    r"""Clamp :math:`\log\alpha` to ``[min_log_alpha, max_log_alpha]`` without trapping it outside.

    The value is :math:`\min(\max(\log\alpha, \text{low}), \text{high})`. Inside the range the
    gradient is the identity. Outside it, a plain clamp has zero gradient, so a parameter that an
    optimiser step pushed just past :math:`\alpha_{\max}` would never move again (both the data
    term and the KL are evaluated at the clamped value). Here the gradient is kept outside the
    range when it points back into it (a descent step would move the parameter inwards) and
    zeroed when it points further out.

    Args:
        log_alpha: unconstrained :math:`\log\alpha`.
        max_log_alpha: upper bound :math:`\log\alpha_{\max}` (default 0, i.e. :math:`\alpha \le 1`).
        min_log_alpha: lower bound (default ``LOG_ALPHA_MIN = -20``).

    Example:
        >>> import torch
        >>> la = torch.tensor([-30.0, -1.0, 2.0], requires_grad=True)
        >>> clamp_log_alpha(la).tolist()
        [-20.0, -1.0, 0.0]
        >>> clamp_log_alpha(la).sum().backward()  # descent would increase the first, lower the last
        >>> la.grad.tolist()
        [0.0, 1.0, 1.0]
    """
    if not min_log_alpha <= max_log_alpha:
        raise ValueError(
            f"min_log_alpha must be <= max_log_alpha, but got {min_log_alpha} > {max_log_alpha}"
        )
    return _InwardClamp.apply(log_alpha, float(min_log_alpha), float(max_log_alpha))


def variational_dropout_kl(log_alpha: Tensor, weights_per_alpha: int | Tensor = 1) -> Tensor:
    r"""KL of variational dropout: the Kingma cubic summed over every weight an :math:`\alpha` governs.

    .. math::
        \mathrm{KL} = \sum_k n_k\,\mathrm{KL}_{\text{kingma}}(\alpha_k)
        = -\sum_k n_k\bigl(\tfrac12\log\alpha_k + c_1\alpha_k + c_2\alpha_k^2 + c_3\alpha_k^3\bigr)

    (up to an additive constant per weight; see
    :func:`~bayesdrop.functional.kl_log_uniform`), where :math:`n_k` (``weights_per_alpha``) is
    the number of weights whose posterior has noise variance :math:`\alpha_k`:

    * type B, independent weights :math:`q(w_{ji}) = \mathcal N(\theta_{ji}, \alpha\theta_{ji}^2)`:
      the KL factorises over weights; :math:`n = 1` per weight, ``in_features`` (times the kernel
      size) per output unit, the number of weights for a per-layer :math:`\alpha`.
    * type A, :math:`w_{ji} = \xi_i\theta_{ji}` with one :math:`\xi_i \sim \mathcal N(1, \alpha_i)`
      per input unit: every weight leaving unit :math:`i` has the same marginal
      :math:`\mathcal N(\theta_{ji}, \alpha_i\theta_{ji}^2)` as in type B, but the weights are
      perfectly correlated, so the joint KL from the factorised prior is infinite (q lives on a
      lower-dimensional set). What is summed is the KL of those marginals, with :math:`n_i` = the
      fan-out of unit :math:`i` (the joint KL minus the infinite total-correlation term): it equals
      the type-B KL of the same :math:`\alpha`'s, so the two types are regularised on one scale.
      The paper's §3.2 alternative, a prior on :math:`\xi` alone, is :math:`n_i = 1`.

    Args:
        log_alpha: clamped :math:`\log\alpha`, any shape.
        weights_per_alpha: :math:`n_k`, an int or a tensor broadcastable against ``log_alpha``.

    Returns:
        A 0-dim tensor.

    Example:
        >>> import torch
        >>> round(float(variational_dropout_kl(torch.zeros(3), 4)), 4)  # 12 weights at alpha = 1
        -2.9485
    """
    return (weights_per_alpha * kl_log_uniform(log_alpha, "kingma")).sum()
