r"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017): the KL of its per-weight posterior.

The posterior is :math:`q(w) = \mathcal N(\theta, \sigma^2)` per weight in the additive
parameterisation (:mod:`bayesdrop.functional.additive_gaussian`), the prior log-uniform, and the
KL the sigmoid approximation of Molchanov et al. (eq. (14)), which holds for every :math:`\alpha`:

.. math::
    \mathrm{KL}(\alpha) \approx k_1\,\sigma\bigl(-(k_2 + k_3\log\alpha)\bigr)
    + \tfrac12\log\bigl(1 + \alpha^{-1}\bigr),
    \qquad k_1 = 0.63576,\ k_2 = 1.87320,\ k_3 = 1.48695

(:func:`~bayesdrop.functional.kl_log_uniform` with ``approximation="molchanov"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .additive_gaussian import LOG_SIGMA2_MAX, fused_kl_sum, log_alpha_kernel
from .kl import MOLCHANOV_COEFFICIENTS

__all__ = ["molchanov_kl_and_derivative", "sparse_variational_kl"]

_K1, _K2, _K3 = MOLCHANOV_COEFFICIENTS


def molchanov_kl_and_derivative(
    log_alpha: Tensor, inside: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    r"""Molchanov KL summed over a clamped :math:`\ell = \log\alpha`, and :math:`-2` times its derivative.

    With :math:`s = \sigma(-(k_2 + k_3\ell))` and :math:`r = \sigma(\ell)`:

    .. math::
        \mathrm{KL} = \sum k_1 s - \tfrac12\log r,\qquad
        -2\,\frac{d\,\mathrm{KL}}{d\ell} = 1 - r - 2k_1k_3\,s(s - 1)

    (:math:`\tfrac12\log(1 + 1/\alpha) = -\tfrac12\log\sigma(\ell)`). The derivative is
    returned only when ``inside`` is given, multiplied by it (the fused KL passes where the
    clamp of :math:`\ell` is inactive). Overwrites ``log_alpha``; no autograd (tested against
    autograd through :func:`~bayesdrop.functional.kl_log_uniform`).

    Example:
        >>> import torch
        >>> kl, d = molchanov_kl_and_derivative(torch.tensor([0.0]), torch.ones(1))
        >>> round(kl.item(), 4), round(-0.5 * d.item(), 4)
        (0.4312, -0.3591)
    """
    s = torch.mul(log_alpha, -_K3).sub_(_K2).sigmoid_()
    r = log_alpha.sigmoid_()
    value = s.sum() * _K1 - 0.5 * r.log().sum()
    if inside is None:
        return value, None
    x = torch.addcmul(r, s, s - 1.0, value=2.0 * _K1 * _K3, out=r)  # r + 2 k1 k3 s (s - 1)
    return value, torch.addcmul(inside, x, inside, value=-1.0, out=x)  # (1 - x) inside


_KERNEL = log_alpha_kernel(molchanov_kl_and_derivative)


def sparse_variational_kl(
    theta: Tensor,
    log_sigma2: Tensor,
    *,
    pruned: Tensor | None = None,
    max_log_sigma2: float = LOG_SIGMA2_MAX,
) -> Tensor:
    r"""Molchanov KL summed over the weights not ``pruned``, with a fused closed-form gradient.

    .. math::
        \mathrm{KL} = \sum_{ij} k_1\,\sigma\bigl(-(k_2 + k_3\ell_{ij})\bigr)
        + \tfrac12\log\bigl(1 + e^{-\ell_{ij}}\bigr),\qquad
        \ell = \mathrm{clamp}\bigl(\log\sigma^2 - \log(\theta^2 + \epsilon), -10, 10\bigr)

    Value and first derivatives equal autograd through the per-weight formula
    (:func:`~bayesdrop.functional.kl_log_uniform` of
    :func:`~bayesdrop.functional.additive_log_alpha`).

    Args:
        theta: posterior means.
        log_sigma2: posterior log-variances, shaped like ``theta``.
        pruned: optional boolean mask of weights left out.
        max_log_sigma2: upper clamp of ``log_sigma2``.

    Example:
        >>> import torch
        >>> round(float(sparse_variational_kl(torch.ones(2, 2), torch.zeros(2, 2))), 4)
        1.725
    """
    return fused_kl_sum(theta, log_sigma2, _KERNEL, pruned=pruned, max_log_sigma2=max_log_sigma2)
