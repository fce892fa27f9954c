r"""Per-weight Gaussian posteriors in the additive parameterisation (Molchanov et al. 2017).

The sparse variational (``bayesdrop.functional.sparse_variational``) and ARD
(``bayesdrop.functional.ard``) families share a fully factorised posterior
:math:`q(w_{ij}) = \mathcal N(\theta_{ij}, \sigma^2_{ij})` parameterised by the mean
:math:`\theta` and a free :math:`\log\sigma^2` (Molchanov, Ashukha & Vetrov, *Variational Dropout
Sparsifies Deep Neural Networks*, 2017), with

.. math::
    \log\alpha = \mathrm{clamp}\bigl(\log\sigma^2 - \log(\theta^2 + \epsilon),\
    \text{ADDITIVE\_LOG\_ALPHA\_MIN}, \text{ADDITIVE\_LOG\_ALPHA\_MAX}\bigr).

This file holds what the two share: the clamps, the posterior variance with a one-multiply
backward (:func:`additive_variance`), and the machinery of a *fused* KL sum
(:func:`fused_kl_sum`): a KL that touches every weight at every step is evaluated with its
per-weight gradient in closed form in the same pass, in cache-sized chunks on the CPU, instead
of back-propagating through a dozen elementwise operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "ADDITIVE_LOG_ALPHA_MIN",
    "ADDITIVE_LOG_ALPHA_MAX",
    "LOG_SIGMA2_MIN",
    "LOG_SIGMA2_MAX",
    "THETA_SQ_EPS",
    "KL_CHUNK",
    "ChunkKernel",
    "additive_log_alpha",
    "additive_variance",
    "clamp_log_sigma2",
    "fused_kl_sum",
    "log_alpha_kernel",
]

#: :math:`\log\alpha` of the additive families is clamped to ``[ADDITIVE_LOG_ALPHA_MIN,
#: ADDITIVE_LOG_ALPHA_MAX]`` (as in Molchanov et al.'s code) wherever it is used (KL, ``p``, the
#: pruning threshold); outside that range the KL gives no gradient, which also keeps it finite
#: at :math:`\theta = 0`.
ADDITIVE_LOG_ALPHA_MIN = -10.0
ADDITIVE_LOG_ALPHA_MAX = 10.0
#: ``log_sigma2`` is clamped to ``[LOG_SIGMA2_MIN, LOG_SIGMA2_MAX]`` before use, so
#: :math:`\sigma^2` stays a finite, normal float32 number. Pruned weights get ``LOG_SIGMA2_MIN``.
LOG_SIGMA2_MIN = -40.0
LOG_SIGMA2_MAX = 20.0
#: Added to :math:`\theta^2` inside the logarithm so :math:`\theta = 0` gives a finite
#: :math:`\log\alpha` (then clamped to ``ADDITIVE_LOG_ALPHA_MAX``) and a zero, not NaN, gradient.
THETA_SQ_EPS = 1e-16
#: The fused KL works through the weights of a CPU layer this many at a time (cache-sized).
KL_CHUNK = 65536

#: ``kernel(theta, log_sigma2, grad_theta, grad_log_sigma2) -> kl_sum`` over one chunk of
#: (flattened) weights, ``log_sigma2`` already clamped. When the two output tensors are given it
#: writes the per-weight derivatives of the KL into them.
ChunkKernel = Callable[[Tensor, Tensor, "Tensor | None", "Tensor | None"], Tensor]


def additive_log_alpha(
    theta: Tensor, log_sigma2: Tensor, max_log_sigma2: float = LOG_SIGMA2_MAX
) -> Tensor:
    r""":math:`\mathrm{clamp}(\mathrm{clamp}(\log\sigma^2) - \log(\theta^2 + \epsilon))`, differentiable.

    Example:
        >>> import torch
        >>> additive_log_alpha(torch.tensor([1.0, 0.0, 1e3]), torch.tensor([0.0, 0.0, 0.0]))
        tensor([  0.,  10., -10.])
    """
    la = log_sigma2.clamp(LOG_SIGMA2_MIN, max_log_sigma2) - torch.log(theta.square() + THETA_SQ_EPS)
    return la.clamp(ADDITIVE_LOG_ALPHA_MIN, ADDITIVE_LOG_ALPHA_MAX)


def clamp_log_sigma2(log_sigma2: Tensor, max_log_sigma2: float) -> tuple[Tensor, Tensor | None]:
    """``log_sigma2`` clamped to ``[LOG_SIGMA2_MIN, max_log_sigma2]``, and where the clamp acts.

    The second value is ``None`` when it acts nowhere. On the CPU one ``aminmax`` pass decides
    whether any clamping is needed at all (almost never in training); elsewhere the clamp is
    always applied, to avoid a device sync.
    """
    lo, hi = LOG_SIGMA2_MIN, max_log_sigma2
    if log_sigma2.device.type == "cpu" and not torch.compiler.is_compiling():
        mn, mx = torch.aminmax(log_sigma2.detach())
        if lo <= float(mn) and float(mx) <= hi:
            return log_sigma2, None
    clamped = log_sigma2.clamp(lo, hi)
    return clamped, log_sigma2.ne(clamped)


class _ClampedExp(torch.autograd.Function):
    """``exp(clamp(log_sigma2))`` with a one-multiply backward (zero where the clamp acts)."""

    @staticmethod
    def forward(ctx: Any, log_sigma2: Tensor, max_log_sigma2: float) -> Tensor:
        ls, clamped = clamp_log_sigma2(log_sigma2, max_log_sigma2)
        var = ls.exp()
        if clamped is None:
            ctx.save_for_backward(var)
        else:
            ctx.save_for_backward(var, clamped)
        return var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        saved = ctx.saved_tensors
        g = grad * saved[0]
        if len(saved) == 2:
            g.masked_fill_(saved[1], 0.0)
        return g, None


def additive_variance(
    log_sigma2: Tensor, max_log_sigma2: float = LOG_SIGMA2_MAX, pruned: Tensor | None = None
) -> Tensor:
    r"""Posterior variances :math:`\sigma^2 = \exp(\mathrm{clamp}(\log\sigma^2))`, 0 where ``pruned``.

    Its gradient is :math:`\partial\sigma^2/\partial\log\sigma^2 = \sigma^2` (0 where the clamp
    acts), computed with one multiply. First derivatives only.

    Example:
        >>> import torch
        >>> additive_variance(torch.tensor([0.0, 100.0]), 1.0)
        tensor([1.0000, 2.7183])
    """
    var = _ClampedExp.apply(log_sigma2, float(max_log_sigma2))
    return var if pruned is None else var.masked_fill(pruned, 0.0)


def log_alpha_kernel(
    kl_of_log_alpha: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]],
) -> ChunkKernel:
    r"""A :data:`ChunkKernel` for a KL that depends on the weights through :math:`\log\alpha` only.

    ``kl_of_log_alpha(log_alpha, inside)`` gets an already clamped :math:`\ell = \log\alpha`
    (which it may overwrite) and, when the gradient is wanted, ``inside``: 1.0 where the clamp
    is inactive and 0.0 where it acts. It returns the KL *summed* (0-dim) and, with ``inside``,
    :math:`-2k'(\ell)\cdot` ``inside`` per weight (the factor -2 and the mask save passes). With
    :math:`\ell = \log\sigma^2 - \log(\theta^2+\epsilon)`,
    :math:`\partial\ell/\partial\log\sigma^2 = 1` and
    :math:`\partial\ell/\partial\theta = -2\theta/(\theta^2+\epsilon)` where the clamp is
    inactive, 0 where it acts (as autograd's ``clamp`` gives).
    """

    def kernel(
        theta: Tensor, log_sigma2: Tensor, g_theta: Tensor | None, g_ls: Tensor | None
    ) -> Tensor:
        denom = theta.square().add_(THETA_SQ_EPS)
        la = torch.log(denom)
        torch.sub(log_sigma2, la, out=la)
        if g_theta is None or g_ls is None:
            la.clamp_(ADDITIVE_LOG_ALPHA_MIN, ADDITIVE_LOG_ALPHA_MAX)
            return kl_of_log_alpha(la, None)[0]
        la_c = la.clamp(ADDITIVE_LOG_ALPHA_MIN, ADDITIVE_LOG_ALPHA_MAX)
        inside = la.eq_(la_c)
        value, h = kl_of_log_alpha(la_c, inside)
        assert h is not None
        torch.mul(h, -0.5, out=g_ls)
        torch.mul(h, theta, out=g_theta).div_(denom)
        return value

    return kernel


class _FusedKLSum(torch.autograd.Function):
    """The KL sum with its per-weight gradient computed in closed form in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        theta: Tensor,
        log_sigma2: Tensor,
        kernel: ChunkKernel,
        pruned: Tensor | None,
        max_log_sigma2: float,
    ) -> Tensor:
        value, g_theta, g_ls = _kl_chunked(
            theta.detach(), log_sigma2.detach(), kernel, pruned, max_log_sigma2, True
        )
        ctx.save_for_backward(g_theta, g_ls)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:  # type: ignore[override]
        g_theta, g_ls = ctx.saved_tensors
        return grad * g_theta, grad * g_ls, None, None, None


def _kl_chunked(
    theta: Tensor,
    log_sigma2: Tensor,
    kernel: ChunkKernel,
    pruned: Tensor | None,
    max_log_sigma2: float,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Run ``kernel`` over the weights in cache-sized chunks (one chunk off the CPU).

    Each chunk's temporaries stay in cache, which makes this several-pass elementwise computation
    about 1.5x faster on a CPU than one pass over the whole tensor at a time.
    """
    ls, ls_clamped = clamp_log_sigma2(log_sigma2, max_log_sigma2)
    flat_t, flat_s = theta.reshape(-1), ls.reshape(-1)
    g_theta = torch.empty_like(flat_t) if need_grad else None
    g_ls = torch.empty_like(flat_s) if need_grad else None
    n = flat_t.numel()
    step = KL_CHUNK if theta.device.type == "cpu" and n > 2 * KL_CHUNK else max(n, 1)
    flat_pruned = None if pruned is None else pruned.reshape(-1)
    total = theta.new_zeros(())
    for i in range(0, n, step):
        j = min(i + step, n)
        gt = None if g_theta is None else g_theta[i:j]
        gs = None if g_ls is None else g_ls[i:j]
        if flat_pruned is None:
            total += kernel(flat_t[i:j], flat_s[i:j], gt, gs)
        else:
            total += _masked_kernel(kernel, flat_t[i:j], flat_s[i:j], gt, gs, flat_pruned[i:j])
    if g_theta is None or g_ls is None:
        return total, None, None
    if ls_clamped is not None:
        g_ls.masked_fill_(ls_clamped.reshape(-1), 0.0)
    return total, g_theta.view_as(theta), g_ls.view_as(theta)


def _masked_kernel(
    kernel: ChunkKernel,
    theta: Tensor,
    log_sigma2: Tensor,
    g_theta: Tensor | None,
    g_ls: Tensor | None,
    pruned: Tensor,
) -> Tensor:
    """``kernel`` over the weights not ``pruned`` (their KL and gradients are 0)."""
    keep = ~pruned
    kt, ks = theta[keep], log_sigma2[keep]
    gt = None if g_theta is None else torch.empty_like(kt)
    gs = None if g_ls is None else torch.empty_like(ks)
    value = kernel(kt, ks, gt, gs)
    if g_theta is not None and g_ls is not None and gt is not None and gs is not None:
        g_theta.zero_().masked_scatter_(keep, gt)
        g_ls.zero_().masked_scatter_(keep, gs)
    return value


def fused_kl_sum(
    theta: Tensor,
    log_sigma2: Tensor,
    kernel: ChunkKernel,
    *,
    pruned: Tensor | None = None,
    max_log_sigma2: float = LOG_SIGMA2_MAX,
) -> Tensor:
    r"""Sum of a per-weight KL over the weights not ``pruned``, with a closed-form gradient.

    The value and first derivatives equal those of the straightforward per-weight formula summed
    by autograd (tested in float64); it does not support double backward. ``kernel`` computes the
    KL and its derivatives over one chunk (:func:`.log_alpha_kernel` builds one from a function of
    :math:`\log\alpha`); ``log_sigma2`` is clamped to ``[LOG_SIGMA2_MIN, max_log_sigma2]`` first,
    with zero gradient where that clamp acts.

    Args:
        theta: posterior means :math:`\theta`.
        log_sigma2: posterior log-variances, shaped like ``theta``.
        kernel: the per-chunk KL (see :data:`.ChunkKernel`).
        pruned: optional boolean mask of weights left out of the sum.
        max_log_sigma2: upper clamp of ``log_sigma2``.

    Returns:
        A 0-dim tensor.
    """
    if torch.is_grad_enabled() and (theta.requires_grad or log_sigma2.requires_grad):
        return _FusedKLSum.apply(theta, log_sigma2, kernel, pruned, float(max_log_sigma2))
    with torch.no_grad():
        return _kl_chunked(theta, log_sigma2, kernel, pruned, max_log_sigma2, False)[0]
