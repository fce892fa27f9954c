r"""ARD dropout (Kharitonov, Molchanov & Vetrov 2018): variational ARD with a learned α per weight.

*Variational Dropout via Empirical Bayes*, eq. (3), section 4 and Appendix B. The math lives in
:mod:`bayesdrop.functional.ard`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .._validation import check_choice
from ..functional.additive_gaussian import LOG_SIGMA2_MIN
from ..functional.ard import ard_gamma_kl, ard_kl, check_gamma, kl_ard, kl_ard_gamma
from .additive_gaussian import AdditiveGaussianDropout, PruneRule

__all__ = ["ARDDropout", "ARD_PRIORS", "ARDPrior", "GAMMA_MAX_LOG_SIGMA2"]

#: The priors of :class:`ARDDropout`.
ARDPrior = Literal["ard", "gamma"]
#: Accepted values of ``prior``.
ARD_PRIORS: tuple[ARDPrior, ...] = ("ard", "gamma")
#: Default clip of :math:`\log\sigma^2` with the Gamma hyperprior: the paper clips
#: :math:`\log\sigma < -4` (Appendix A), since for :math:`a < 1` the regulariser keeps
#: rewarding larger variances.
GAMMA_MAX_LOG_SIGMA2 = -8.0


class ARDDropout(AdditiveGaussianDropout):
    r"""ARD dropout on the weights of a wrapped ``nn.Linear`` or ``nn.Conv1d/2d/3d``.

    Same posterior, parameterisation, local reparameterisation, eval-mode zeroing and pruning as
    :class:`~bayesdrop.nn.SparseVariationalDropout`; only the prior differs. The prior is
    Gaussian, :math:`\mathcal N(0, \tau_{ij}^{-1})`, with its precisions chosen by empirical
    Bayes, which has a closed form.

    ``prior="ard"`` (eq. (3)): the optimal :math:`\tau^* = (\theta^2 + \sigma^2)^{-1}` gives
    (:func:`~bayesdrop.functional.kl_ard`)

    .. math::
        \mathrm{KL} = \sum_{ij} \tfrac12 \log\bigl(1 + \alpha_{ij}^{-1}\bigr).

    ``prior="gamma"`` (section 4, Appendix B): a :math:`\mathrm{Gamma}(a, b)` hyperprior on the
    precisions, maximised over them (MAP-II), gives the negated regulariser
    (:func:`~bayesdrop.functional.kl_ard_gamma`)

    .. math::
        -R = \sum_{ij} -\tfrac12\log\sigma_{ij}^2 + \tfrac12(2a-1)\log(\sigma_{ij}^2 +
        \theta_{ij}^2 + 2b) - C,

    with :math:`C = 1 - a + a\log b - \log\Gamma(a) + \tfrac12(2a-1)\log(2a-1)`. Smaller
    :math:`a` (towards 1/2) prunes less; the paper uses :math:`a \in [0.505, 0.52]`,
    :math:`b = 10^{-8}`, and clips :math:`\log\sigma^2 \le -8`, which is the default here.

    Pruning: the paper trims the weights with :math:`|\theta| < 10^{-2}` after training
    (Appendix A: "we then trim the weights ... setting those with :math:`|\mu_i| < 10^{-2}` to
    zero"), which is ``prune_rule="magnitude"``; the default, ``prune_rule="log_alpha"``,
    drops :math:`\log\alpha >` ``threshold`` as Sparse VD (Molchanov et al. 2017) does, so the
    two families prune alike unless asked.

    Args:
        layer: ``nn.Linear`` or ``nn.Conv1d/2d/3d``; its weight becomes :math:`\theta`.
        prior: ``"ard"`` or ``"gamma"``.
        a: Gamma shape, :math:`a > 1/2` (``prior="gamma"`` only).
        b: Gamma rate, :math:`b > 0` (``prior="gamma"`` only).
        threshold: :math:`\log\alpha` above which eval mode drops a weight, in [-10, 10]
            (``prune_rule="log_alpha"``).
        prune_rule: ``"log_alpha"`` (default) or ``"magnitude"`` (the ARD paper's rule).
        magnitude_threshold: with ``prune_rule="magnitude"``, eval mode drops the weights with
            :math:`|\theta|` below it (default :math:`10^{-2}`, the paper's).
        init_log_sigma2: initial :math:`\log\sigma^2` of every weight.
        max_log_sigma2: upper clip of :math:`\log\sigma^2`; ``None`` means
            ``GAMMA_MAX_LOG_SIGMA2`` (-8) with the Gamma prior and no clip (20) with ``"ard"``.
        init_max_log_alpha: optional cap on every weight's initial :math:`\log\alpha` (``None``:
            none, the papers' constant initialisation; see
            :class:`~bayesdrop.nn.additive_gaussian.AdditiveGaussianDropout`, which also describes
            :meth:`keep_dense_until_trained`, used by :func:`bayesdrop.convert`).
        generator: optional generator for the Gaussian noise.

    Shape:
        As the wrapped layer.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = ARDDropout(nn.Linear(3, 2), prior="gamma", a=0.51, b=1e-8)
        >>> m
        ARDDropout(
          prior='gamma', a=0.51, b=1e-08, threshold=3.0, max_log_sigma2=-8.0
          (layer): Linear(in_features=3, out_features=2, bias=True)
        )
        >>> m.kl().shape
        torch.Size([])
    """

    def __init__(
        self,
        layer: nn.Module,
        *,
        prior: ARDPrior = "ard",
        a: float = 0.51,
        b: float = 1e-8,
        threshold: float = 3.0,
        prune_rule: PruneRule = "log_alpha",
        magnitude_threshold: float = 1e-2,
        init_log_sigma2: float = -10.0,
        max_log_sigma2: float | None = None,
        init_max_log_alpha: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        prior = check_choice("prior", prior, ARD_PRIORS)  # type: ignore[assignment]
        a, b = check_gamma(a, b)
        if max_log_sigma2 is None and prior == "gamma":
            max_log_sigma2 = GAMMA_MAX_LOG_SIGMA2
        super().__init__(
            layer,
            threshold=threshold,
            prune_rule=prune_rule,
            magnitude_threshold=magnitude_threshold,
            init_log_sigma2=init_log_sigma2,
            max_log_sigma2=max_log_sigma2,
            init_max_log_alpha=init_max_log_alpha,
            generator=generator,
        )
        self.prior = prior
        self.a = a
        self.b = b

    def kl_per_weight(self) -> Tensor:
        if self.prior == "ard":
            return kl_ard(self.log_alpha)
        ls = self.log_sigma2.clamp(LOG_SIGMA2_MIN, self.max_log_sigma2)
        return kl_ard_gamma(self.theta, ls, self.a, self.b)

    def kl(self) -> Tensor:
        pruned, top = self._pruned(), self.max_log_sigma2
        if self.prior == "ard":
            return ard_kl(self.theta, self.log_sigma2, pruned=pruned, max_log_sigma2=top)
        return ard_gamma_kl(
            self.theta, self.log_sigma2, self.a, self.b, pruned=pruned, max_log_sigma2=top
        )

    def extra_repr(self) -> str:
        head = f"prior={self.prior!r}"
        if self.prior == "gamma":
            head += f", a={self.a}, b={self.b}"
        return f"{head}, {super().extra_repr()}"
