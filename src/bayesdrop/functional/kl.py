"""KL divergence of a multiplicative Gaussian posterior from the log-uniform prior.

For :math:`q(w) = \\mathcal N(\\theta, \\alpha\\theta^2)` and the scale-invariant log-uniform
prior :math:`p(\\log|w|) \\propto 1`, write :math:`w = \\theta\\xi` with
:math:`\\xi \\sim \\mathcal N(1, \\alpha)`. Then (Kingma, Salimans & Welling 2015, appendix C)

.. math::
    \\mathrm{KL}(q\\,\\|\\,p) = \\text{const} - \\tfrac12\\log\\alpha
        + \\mathbb E_{\\varepsilon\\sim\\mathcal N(0,1)}\\log\\bigl|1 + \\sqrt\\alpha\\,\\varepsilon\\bigr|,

independent of :math:`\\theta`. The prior is improper, so the constant is a convention: it is
fixed by requiring :math:`\\mathrm{KL} \\to 0` as :math:`\\alpha \\to \\infty`, which gives
const :math:`= (\\gamma + \\log 2)/2 \\approx 0.63518` (Euler's :math:`\\gamma`). The expectation
has no closed form; two fitted approximations are provided.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice

__all__ = [
    "KL_LOG_ALPHA_MIN",
    "KL_LOG_ALPHA_MAX",
    "KL_APPROXIMATIONS",
    "KINGMA_COEFFICIENTS",
    "MOLCHANOV_COEFFICIENTS",
    "KLApproximation",
    "kl_log_uniform",
]

#: :func:`kl_log_uniform` clamps ``log_alpha`` to ``[KL_LOG_ALPHA_MIN, KL_LOG_ALPHA_MAX]`` (the
#: gradient is zero outside); :class:`~bayesdrop.nn.VariationalDropout` keeps its
#: :math:`\log\alpha` in this range too. Over it both approximations are finite in float32: the
#: Kingma cubic is at most ~1e26 and the Molchanov form at most ~10.6 nats per weight.
KL_LOG_ALPHA_MIN = -20.0
KL_LOG_ALPHA_MAX = 20.0

#: The approximations of the KL from the log-uniform prior.
KLApproximation = Literal["kingma", "molchanov"]
#: Accepted values of ``approximation``.
KL_APPROXIMATIONS: tuple[KLApproximation, ...] = ("kingma", "molchanov")

#: :math:`(c_1, c_2, c_3)` of Kingma, Salimans & Welling 2015 (the cubic after eq. (12)), fitted
#: on :math:`0 < \alpha \le 1`.
KINGMA_COEFFICIENTS = (1.16145124, -1.50204118, 0.58629921)
#: :math:`(k_1, k_2, k_3)` of Molchanov, Ashukha & Vetrov 2017 (eq. (14)), valid for every
#: :math:`\alpha`.
MOLCHANOV_COEFFICIENTS = (0.63576, 1.87320, 1.48695)
_C1, _C2, _C3 = KINGMA_COEFFICIENTS
_K1, _K2, _K3 = MOLCHANOV_COEFFICIENTS


def kl_log_uniform(log_alpha: Tensor, approximation: KLApproximation = "kingma") -> Tensor:
    r"""Elementwise KL(:math:`\mathcal N(\theta, \alpha\theta^2)` ‖ log-uniform), from :math:`\log\alpha`.

    ``"kingma"`` (Kingma et al. 2015, §3.3) is the paper's cubic fit **without** its additive
    constant (the paper leaves the constant unspecified; it does not change gradients):

    .. math::
        \mathrm{KL} \approx -\bigl(\tfrac12\log\alpha + c_1\alpha + c_2\alpha^2 + c_3\alpha^3\bigr),
        \quad c_1 = 1.16145124,\ c_2 = -1.50204118,\ c_3 = 0.58629921.

    The fit is only meant for :math:`0 < \alpha \le 1` (the range variational dropout constrains
    :math:`\alpha` to). Above 1 the cubic term dominates and the value decreases without bound
    (-449 at :math:`\alpha = 10`, where the true KL is 0.049), so minimising it would drive every
    :math:`\alpha` up; use ``"molchanov"`` there.

    ``"molchanov"`` (Molchanov et al. 2017, eq. 14) is accurate for every :math:`\alpha` and
    includes the constant that makes :math:`\mathrm{KL} \to 0` as :math:`\alpha \to \infty`:

    .. math::
        \mathrm{KL} \approx k_1 - k_1\,\sigma(k_2 + k_3\log\alpha) + \tfrac12\log(1 + \alpha^{-1}),
        \quad k_1 = 0.63576,\ k_2 = 1.87320,\ k_3 = 1.48695,

    with :math:`\tfrac12\log(1+\alpha^{-1}) = \tfrac12\,\mathrm{softplus}(-\log\alpha)`.

    ``log_alpha`` is clamped to ``[KL_LOG_ALPHA_MIN, KL_LOG_ALPHA_MAX] = [-20, 20]``.

    Args:
        log_alpha: :math:`\log\alpha`, any shape.
        approximation: ``"kingma"`` or ``"molchanov"``.

    Returns:
        A tensor shaped like ``log_alpha`` (not summed).

    Example:
        >>> import torch
        >>> la = torch.tensor([0.0, 20.0])
        >>> [round(v, 4) for v in kl_log_uniform(la, "molchanov").tolist()]
        [0.4312, 0.0]
        >>> round(float(kl_log_uniform(torch.tensor(0.0))), 6)  # -(c1 + c2 + c3)
        -0.245709
    """
    check_choice("approximation", approximation, KL_APPROXIMATIONS)
    log_alpha = log_alpha.clamp(KL_LOG_ALPHA_MIN, KL_LOG_ALPHA_MAX)
    if approximation == "kingma":
        alpha = log_alpha.exp()
        return -(0.5 * log_alpha + alpha * (_C1 + alpha * (_C2 + alpha * _C3)))
    # k1 - k1 * sigmoid(z) = k1 * sigmoid(-z), without cancellation.
    return _K1 * (-(_K2 + _K3 * log_alpha)).sigmoid() + 0.5 * F.softplus(-log_alpha)
