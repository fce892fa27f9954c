r"""KL terms of variational automatic relevance determination (Kharitonov, Molchanov & Vetrov 2018).

The ARD model puts a Gaussian prior :math:`p(w_i \mid \tau_i) = \mathcal N(0, \tau_i^{-1})` with a
precision per weight on a network with a factorised Gaussian posterior
:math:`q(w_i) = \mathcal N(\mu_i, \sigma_i^2)`, :math:`\alpha_i = \sigma_i^2 / \mu_i^2`. Maximising
the ELBO over the precisions (empirical Bayes) gives a closed-form regulariser that depends on
:math:`\alpha` only (:func:`kl_ard`, eq. (3) of the paper); putting a Gamma hyperprior on the
precisions and maximising over them (MAP-II) gives :func:`kl_ard_gamma` (section 4, Appendix B).

Both functions are elementwise and return the *negated* regulariser, i.e. the term that is
*added* to the negative ELBO; the modules sum them (:class:`bayesdrop.nn.ARDDropout`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .additive_gaussian import LOG_SIGMA2_MAX, fused_kl_sum, log_alpha_kernel

__all__ = [
    "kl_ard",
    "kl_ard_gamma",
    "ard_gamma_constant",
    "ard_kl_and_derivative",
    "ard_kl",
    "ard_gamma_kl",
    "check_gamma",
]


def kl_ard(log_alpha: Tensor) -> Tensor:
    r"""ARD KL with the optimal prior precision, per weight (Kharitonov et al. 2018, eq. (3)).

    For :math:`q = \mathcal N(\mu, \sigma^2)` and prior :math:`\mathcal N(0, \tau^{-1})`,
    :math:`\mathrm{KL}(q\,\|\,p_\tau)` is minimised by :math:`\tau^* = (\mu^2 + \sigma^2)^{-1}`,
    where it equals

    .. math::
        \mathrm{KL}(q \,\|\, p_{\tau^*}) = \tfrac12 \log\Bigl(1 + \frac{\mu^2}{\sigma^2}\Bigr)
        = \tfrac12 \log\bigl(1 + \alpha^{-1}\bigr)
        = \tfrac12\,\mathrm{softplus}(-\log\alpha),

    with :math:`\alpha = \sigma^2/\mu^2`. It is positive, decreases to 0 as :math:`\alpha \to
    \infty` (a pruned weight costs nothing) and grows like :math:`-\tfrac12\log\alpha` as
    :math:`\alpha \to 0`. Computed with ``softplus``, so it is finite for every finite input.

    Args:
        log_alpha: :math:`\log\alpha`, any shape.

    Returns:
        The KL per element, same shape as ``log_alpha``.

    Example:
        >>> import torch
        >>> kl_ard(torch.tensor([0.0]))  # alpha = 1: log(2) / 2
        tensor([0.3466])
    """
    return 0.5 * F.softplus(-log_alpha)


def ard_gamma_constant(a: float, b: float) -> float:
    r"""The constant :math:`C` of the Gamma-hyperprior regulariser (Appendix B).

    .. math::
        C = 1 - a + a\log b - \log\Gamma(a) + \tfrac12(2a - 1)\log(2a - 1)

    Args:
        a: Gamma shape, :math:`a > 1/2`.
        b: Gamma rate, :math:`b > 0`.
    """
    a, b = check_gamma(a, b)
    return (
        1.0 - a + a * math.log(b) - math.lgamma(a) + 0.5 * (2.0 * a - 1.0) * math.log(2.0 * a - 1.0)
    )


def kl_ard_gamma(mu: Tensor, log_sigma2: Tensor, a: float, b: float) -> Tensor:
    r"""Negated MAP-II regulariser of ARD with a Gamma(a, b) hyperprior, per weight (Appendix B).

    With :math:`p(\tau) = \mathrm{Gamma}(\tau \mid a, b)` (shape :math:`a`, *rate* :math:`b`) on
    the prior precision of each weight, the objective per weight is
    :math:`\log p(\tau) - \mathrm{KL}(\mathcal N(\mu,\sigma^2)\,\|\,\mathcal N(0,\tau^{-1}))`.
    Its maximiser over :math:`\tau` exists for :math:`a > 1/2`,
    :math:`\tau^* = (2a-1)/(\sigma^2 + \mu^2 + 2b)`, and substituting it back gives the
    regulariser :math:`R` that the ELBO gains; this function returns :math:`-R`:

    .. math::
        -R(\mu, \sigma) = -\tfrac12\log\sigma^2 + \tfrac12(2a-1)\log(\sigma^2 + \mu^2 + 2b) - C,
        \qquad C = 1 - a + a\log b - \log\Gamma(a) + \tfrac12(2a-1)\log(2a-1).

    With :math:`a = 1` and :math:`b \to 0` (an improper hyperprior) and without :math:`C` this is
    :func:`kl_ard`. Unlike a KL it can be negative, and for :math:`a < 1` it decreases without
    bound as :math:`\sigma^2 \to \infty`: the paper clips the posterior variance
    (:math:`\log\sigma < -4`), which :class:`bayesdrop.nn.ARDDropout` does by default.

    Args:
        mu: posterior means :math:`\mu`, any shape.
        log_sigma2: posterior log-variances :math:`\log\sigma^2`, broadcastable against ``mu``.
        a: Gamma shape, :math:`a > 1/2`.
        b: Gamma rate, :math:`b > 0`.

    Returns:
        :math:`-R` per element, the broadcast shape of ``mu`` and ``log_sigma2``.

    Example:
        >>> import torch
        >>> kl_ard_gamma(torch.tensor([1.0]), torch.tensor([0.0]), a=1.0, b=0.5)
        tensor([1.2425])
    """
    a, b = check_gamma(a, b)
    c = ard_gamma_constant(a, b)
    sigma2 = torch.exp(log_sigma2)
    return -0.5 * log_sigma2 + (a - 0.5) * torch.log(sigma2 + mu.square() + 2.0 * b) - c


def check_gamma(a: float, b: float) -> tuple[float, float]:
    """``(a, b)`` as floats after checking the Gamma hyperprior's shape :math:`a > 1/2` and rate
    :math:`b > 0` (``TypeError``/``ValueError`` naming the argument)."""
    for name, v in (("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a float, but got {type(v).__name__}")
    a, b = float(a), float(b)
    if not (math.isfinite(a) and a > 0.5):
        raise ValueError(f"a must be finite and > 1/2 (the MAP-II optimum needs it), but got {a}")
    if not (math.isfinite(b) and b > 0.0):
        raise ValueError(f"b must be finite and > 0, but got {b}")
    return a, b


def ard_kl_and_derivative(
    log_alpha: Tensor, inside: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    r"""ARD KL summed over a clamped :math:`\ell = \log\alpha`, and :math:`-2` times its derivative.

    .. math::
        \mathrm{KL} = \sum\tfrac12\log(1 + e^{-\ell}) = -\sum\tfrac12\log\sigma(\ell),\qquad
        -2\,\frac{d\,\mathrm{KL}}{d\ell} = 1 - \sigma(\ell).

    The derivative is returned only when ``inside`` is given, multiplied by it. Overwrites
    ``log_alpha``; no autograd (the fused KL uses it).

    Example:
        >>> import torch
        >>> kl, d = ard_kl_and_derivative(torch.tensor([0.0]), torch.ones(1))
        >>> round(kl.item(), 4), -0.5 * d.item()
        (0.3466, -0.25)
    """
    r = log_alpha.sigmoid_()
    value = r.log().sum() * -0.5
    if inside is None:
        return value, None
    return value, torch.addcmul(inside, r, inside, value=-1.0, out=r)  # (1 - r) inside


_ARD_KERNEL = log_alpha_kernel(ard_kl_and_derivative)


def ard_kl(
    theta: Tensor,
    log_sigma2: Tensor,
    *,
    pruned: Tensor | None = None,
    max_log_sigma2: float = LOG_SIGMA2_MAX,
) -> Tensor:
    r""":func:`kl_ard` of the clamped :math:`\log\alpha` summed over the weights not ``pruned``.

    .. math::
        \mathrm{KL} = \sum_{ij}\tfrac12\log\bigl(1 + e^{-\ell_{ij}}\bigr),\qquad
        \ell = \mathrm{clamp}\bigl(\log\sigma^2 - \log(\theta^2 + \epsilon), -10, 10\bigr)

    with its gradient in closed form, fused (:func:`~bayesdrop.functional.fused_kl_sum`); value
    and first derivatives equal autograd through the per-weight formula.

    Example:
        >>> import torch
        >>> round(float(ard_kl(torch.ones(2, 2), torch.zeros(2, 2))), 4)  # 4 log(2) / 2
        1.3863
    """
    return fused_kl_sum(
        theta, log_sigma2, _ARD_KERNEL, pruned=pruned, max_log_sigma2=max_log_sigma2
    )


def ard_gamma_kl(
    theta: Tensor,
    log_sigma2: Tensor,
    a: float,
    b: float,
    *,
    pruned: Tensor | None = None,
    max_log_sigma2: float = LOG_SIGMA2_MAX,
) -> Tensor:
    r""":func:`kl_ard_gamma` summed over the weights not ``pruned``, with a fused gradient.

    With :math:`s` the clamped :math:`\log\sigma^2` and :math:`S = e^s + \theta^2 + 2b`:

    .. math::
        -R = \sum_{ij} -\tfrac12 s_{ij} + (a - \tfrac12)\log S_{ij} - C,\qquad
        \frac{\partial}{\partial s} = -\tfrac12 + (a - \tfrac12)\frac{e^s}{S},\qquad
        \frac{\partial}{\partial\theta} = (2a - 1)\frac{\theta}{S}.

    Example:
        >>> import torch
        >>> round(float(ard_gamma_kl(torch.tensor([1.0]), torch.tensor([0.0]), 1.0, 0.5)), 4)
        1.2425
    """
    a, b = check_gamma(a, b)
    c = ard_gamma_constant(a, b)
    half = a - 0.5

    def kernel(theta: Tensor, ls: Tensor, g_theta: Tensor | None, g_ls: Tensor | None) -> Tensor:
        sigma2 = ls.exp()
        big_s = theta.square().add_(sigma2).add_(2.0 * b)
        value = big_s.log().sum() * half - 0.5 * ls.sum() - theta.numel() * c
        if g_theta is not None and g_ls is not None:
            torch.div(sigma2, big_s, out=g_ls).mul_(half).sub_(0.5)
            torch.div(theta, big_s, out=g_theta).mul_(2.0 * half)
        return value

    return fused_kl_sum(theta, log_sigma2, kernel, pruned=pruned, max_log_sigma2=max_log_sigma2)
