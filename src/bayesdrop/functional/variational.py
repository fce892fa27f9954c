"""Variational dropout (Kingma, Salimans & Welling 2015): learned α, log-uniform prior.

The noise itself is Gaussian dropout (:mod:`bayesdrop.functional.gaussian`) with
:math:`\\alpha = e^{\\log\\alpha}` learned by the pathwise gradient; this module adds the two
pieces specific to the variational reading: the clamp :math:`\\alpha \\le \\alpha_{\\max}` and the
KL term, one per noise variable that each :math:`\\alpha` governs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._validation import check_choice
from .kl import (
    KINGMA_COEFFICIENTS,
    KL_APPROXIMATIONS,
    KL_LOG_ALPHA_MAX,
    KL_LOG_ALPHA_MIN,
    KLApproximation,
    kl_log_uniform,
)

_C1, _C2, _C3 = KINGMA_COEFFICIENTS

__all__ = ["clamp_log_alpha", "variational_dropout_kl", "weight_variance"]


def _inside(x: Tensor, low: float, high: float) -> bool:
    """Whether every entry of ``x`` is in ``[low, high]``; only asked on the CPU.

    On an accelerator (and while compiling) it answers ``False`` without looking, since reading
    the answer would stall the device queue: the slightly slower general path is taken instead.
    """
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x.detach())
    return low <= float(lo) and float(hi) <= high


class _InwardClamp(torch.autograd.Function):
    """Clamp whose gradient is blocked outside the range only when it points further out."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: float, high: float) -> Tensor:
        y = x.clamp(low, high)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, y = ctx.saved_tensors
        # Gradient descent moves x by -grad. With d = x - clamp(x) (0 inside, > 0 above, < 0
        # below) the gradient passes iff d * grad >= 0: inside always, outside only inwards.
        return grad.where((x - y).mul_(grad) >= 0, 0.0), None, None


#: The fused Kingma KL works through a CPU tensor this many entries at a time (cache-sized).
KL_CHUNK = 65536


def _kingma_chunk(la: Tensor, n: float, deriv: Tensor | None) -> Tensor:
    """Sum over one chunk of the cubic (times -n) and, into ``deriv``, its derivative."""
    lo, hi = KL_LOG_ALPHA_MIN, KL_LOG_ALPHA_MAX
    inside = _inside(la, lo, hi)
    lac = la if inside else la.clamp(lo, hi)
    alpha = lac.exp()
    poly = torch.mul(alpha, _C3).add_(_C2).mul_(alpha).add_(_C1)  # c1 + c2 a + c3 a^2
    value = (0.5 * lac.sum() + torch.dot(poly, alpha)) * -n
    if deriv is not None:
        # d/dl = -n (1/2 + c1 a + 2 c2 a^2 + 3 c3 a^3), 0 where the clamp acts
        d = torch.mul(alpha, 3 * _C3, out=deriv).add_(2 * _C2).mul_(alpha).add_(_C1)
        d.mul_(alpha).add_(0.5).mul_(-n)
        if not inside:
            d.mul_(la.eq(lac))
    return value


class _KingmaKLSum(torch.autograd.Function):
    """``n * kl_log_uniform(log_alpha, "kingma").sum()`` with the derivative in closed form,
    d/dlog(alpha) = -n (1/2 + c1 alpha + 2 c2 alpha^2 + 3 c3 alpha^3), computed in the same
    cache-sized pass as the value (on the CPU), so the backward is one multiply."""

    @staticmethod
    def forward(ctx: Any, log_alpha: Tensor, n: float) -> Tensor:
        la = log_alpha.detach().reshape(-1)
        deriv = torch.empty_like(la) if log_alpha.requires_grad else None
        size = la.numel()
        step = KL_CHUNK if la.device.type == "cpu" and size > 2 * KL_CHUNK else max(size, 1)
        total = la.new_zeros(())
        for i in range(0, size, step):
            total += _kingma_chunk(
                la[i : i + step], n, None if deriv is None else deriv[i : i + step]
            )
        if deriv is not None:
            ctx.save_for_backward(deriv.view_as(log_alpha))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (deriv,) = ctx.saved_tensors
        return grad * deriv, None


class _WeightVariance(torch.autograd.Function):
    """``exp(log_alpha) * weight**2`` with the backward written out (half autograd's passes)."""

    @staticmethod
    def forward(ctx: Any, log_alpha: Tensor, weight: Tensor) -> Tensor:
        alpha = log_alpha.exp()
        var = alpha * weight * weight
        ctx.save_for_backward(alpha, weight, var)
        return var

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        alpha, weight, var = ctx.saved_tensors
        grad_log_alpha = grad_weight = None
        if ctx.needs_input_grad[0]:  # d var / d log(alpha) = var
            grad_log_alpha = (grad * var).sum_to_size(alpha.shape)
        if ctx.needs_input_grad[1]:  # d var / d weight = 2 alpha weight
            grad_weight = (grad * alpha).mul_(weight).mul_(2.0)
        return grad_log_alpha, grad_weight


def weight_variance(log_alpha: Tensor, weight: Tensor) -> Tensor:
    r"""Variance :math:`\alpha\theta^2` of the weight posterior :math:`\mathcal N(\theta, \alpha\theta^2)`.

    .. math::
        \sigma^2 = e^{\log\alpha}\,\theta^{\odot 2},\qquad
        \frac{\partial\sigma^2}{\partial\log\alpha} = \sigma^2,\qquad
        \frac{\partial\sigma^2}{\partial\theta} = 2\alpha\theta

    computed with a hand-written backward (the weight-sized elementwise work of a type-B step is
    a large part of its cost on a CPU). Finite with zero gradients at :math:`\theta = 0`.

    Args:
        log_alpha: :math:`\log\alpha` (already clamped), broadcastable against ``weight``: one
            per weight, ``(out, 1, ...)`` per output unit, or one per layer.
        weight: the means :math:`\theta`.

    Returns:
        A tensor shaped like ``weight``: the ``weight_var`` of :func:`~bayesdrop.functional.lrt_linear`.

    Example:
        >>> import torch
        >>> weight_variance(torch.tensor([[0.0], [-2.0]]), torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
        tensor([[1.0000, 4.0000],
                [1.2180, 0.0000]])
    """
    return _WeightVariance.apply(log_alpha, weight)


def clamp_log_alpha(
    log_alpha: Tensor, max_log_alpha: float = 0.0, min_log_alpha: float = KL_LOG_ALPHA_MIN
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
        min_log_alpha: lower bound (default ``KL_LOG_ALPHA_MIN = -20``).

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
    low, high = float(min_log_alpha), float(max_log_alpha)
    if _inside(log_alpha, low, high):
        return log_alpha  # fast path: nothing to clamp, identity gradient
    return _InwardClamp.apply(log_alpha, low, high)


def variational_dropout_kl(
    log_alpha: Tensor,
    weights_per_alpha: int | Tensor = 1,
    approximation: KLApproximation = "kingma",
) -> Tensor:
    r"""KL of variational dropout: :math:`\mathrm{KL}(\alpha_k)` counted :math:`n_k` times per :math:`\alpha_k`.

    .. math::
        \mathrm{KL} = \sum_k n_k\,\mathrm{KL}(\alpha_k),\qquad
        \mathrm{KL}_{\text{kingma}}(\alpha)
        = -\bigl(\tfrac12\log\alpha + c_1\alpha + c_2\alpha^2 + c_3\alpha^3\bigr)

    (the cubic up to an additive constant per term, fitted on :math:`0 < \alpha \le 1`;
    ``"molchanov"``: the sigmoid fit valid for every :math:`\alpha`; see
    :func:`~bayesdrop.functional.kl_log_uniform`). :math:`n_k` (``weights_per_alpha``) is the
    number of noise variables with variance :math:`\alpha_k`, each with its own KL term
    (Kingma, Salimans & Welling 2015, §3):

    * type B, independent weight noise :math:`q(w_{ji}) = \mathcal N(\theta_{ji},
      \alpha\theta_{ji}^2)`: every weight is a noise variable; :math:`n = 1` per weight,
      ``in_features`` (times the kernel size) per output unit, the number of weights for a
      per-layer :math:`\alpha`.
    * type A, correlated weight noise :math:`w_{ji} = s_i\theta_{ji}` with one scale variable
      :math:`s_i \sim \mathcal N(1, \alpha_i)` per input unit (§3.2): the posterior and the
      log-uniform prior are on the scales, so :math:`n = 1` per input unit (the number of units
      for a per-layer :math:`\alpha`). Counting each unit once per outgoing weight instead
      (:math:`n_i` = fan-out) is the KL of the weights' marginals, which puts A on the scale of
      type B; it is not the paper's objective.

    Args:
        log_alpha: clamped :math:`\log\alpha`, any shape.
        weights_per_alpha: :math:`n_k`, an int or a tensor broadcastable against ``log_alpha``.
        approximation: ``"kingma"`` (default; only for :math:`\alpha \le 1`) or
            ``"molchanov"``.

    Returns:
        A 0-dim tensor.

    Example:
        >>> import torch
        >>> round(float(variational_dropout_kl(torch.zeros(3), 4)), 4)  # 12 terms at alpha = 1
        -2.9485
        >>> round(float(variational_dropout_kl(torch.zeros(3), 4, "molchanov")), 4)
        5.1749
    """
    check_choice("approximation", approximation, KL_APPROXIMATIONS)
    if approximation == "molchanov":
        return (weights_per_alpha * kl_log_uniform(log_alpha, "molchanov")).sum()
    if isinstance(weights_per_alpha, Tensor):
        return (weights_per_alpha * kl_log_uniform(log_alpha, "kingma")).sum()
    return _KingmaKLSum.apply(log_alpha, float(weights_per_alpha))
