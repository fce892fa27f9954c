r"""ARD dropout (Kharitonov, Molchanov & Vetrov 2018): variational ARD with a learned α per weight.

Paper: variational-dropout-empirical-bayes-ard.txt, eq. (3) and section 4 / Appendix B.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import check_choice
from ..functional.ard import _check_gamma, ard_gamma_constant, kl_ard, kl_ard_gamma
from ._additive import AdditiveGaussianDropout

__all__ = ["ARDDropout", "ARD_PRIORS", "GAMMA_MAX_LOG_SIGMA2"]

#: Accepted values of ``prior``.
ARD_PRIORS = ("ard", "gamma")
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

    Args:
        layer: ``nn.Linear`` or ``nn.Conv1d/2d/3d``; its weight becomes :math:`\theta`.
        prior: ``"ard"`` or ``"gamma"``.
        a: Gamma shape, :math:`a > 1/2` (``prior="gamma"`` only).
        b: Gamma rate, :math:`b > 0` (``prior="gamma"`` only).
        threshold: :math:`\log\alpha` above which eval mode drops a weight, in [-10, 10].
        init_log_sigma2: initial :math:`\log\sigma^2` of every weight.
        max_log_sigma2: upper clip of :math:`\log\sigma^2`; ``None`` means
            ``GAMMA_MAX_LOG_SIGMA2`` (-8) with the Gamma prior and no clip (20) with ``"ard"``.
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
        prior: str = "ard",
        a: float = 0.51,
        b: float = 1e-8,
        threshold: float = 3.0,
        init_log_sigma2: float = -10.0,
        max_log_sigma2: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        prior = check_choice("prior", prior, ARD_PRIORS)
        a, b = _check_gamma(a, b)
        if max_log_sigma2 is None and prior == "gamma":
            max_log_sigma2 = GAMMA_MAX_LOG_SIGMA2
        super().__init__(
            layer,
            threshold=threshold,
            init_log_sigma2=init_log_sigma2,
            max_log_sigma2=max_log_sigma2,
            generator=generator,
        )
        self.prior = prior
        self.a = a
        self.b = b

    def kl_per_weight(self) -> Tensor:
        if self.prior == "ard":
            return kl_ard(self.log_alpha)
        return kl_ard_gamma(self.theta, self._log_sigma2(), self.a, self.b)

    def _kl_of_log_alpha(self, log_alpha: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        # KL = log(1 + e) / 2 with e = 1 / alpha; dKL/dl = -e / (2 (1 + e)). l is clamped to
        # [-10, 10]: no overflow.
        e = log_alpha.neg_().exp_()
        t = e + 1.0
        grad = e.div_(t).mul_(-0.5) if need_grad else None
        return t.log_().mul_(0.5), grad

    def _kl_sum_and_grads(
        self, theta: Tensor, log_sigma2: Tensor, pruned: Tensor | None, need_grad: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if self.prior == "ard":
            return super()._kl_sum_and_grads(theta, log_sigma2, pruned, need_grad)
        # -R = -s/2 + (a - 1/2) log S - C, S = exp(s) + theta^2 + 2b, s = clamped log sigma^2;
        # d/ds = -1/2 + (a - 1/2) exp(s) / S, d/dtheta = (2a - 1) theta / S.
        half = self.a - 0.5
        ls, ls_clamped = self._clamp_log_sigma2(log_sigma2)
        sigma2 = ls.exp()
        big_s = theta.square().add_(sigma2).add_(2.0 * self.b)
        kl = big_s.log().mul_(half).sub_(ls, alpha=0.5)
        n_kept = theta.numel()
        if pruned is not None:
            kl.masked_fill_(pruned, 0.0)
            n_kept -= int(pruned.sum())
        value = kl.sum() - n_kept * ard_gamma_constant(self.a, self.b)
        if not need_grad:
            return value, None, None
        g_ls = sigma2.div_(big_s).mul_(half).sub_(0.5)
        if ls_clamped is not None:
            g_ls.masked_fill_(ls_clamped, 0.0)
        g_theta = theta.div(big_s).mul_(2.0 * half)
        if pruned is not None:
            g_ls.masked_fill_(pruned, 0.0)
            g_theta.masked_fill_(pruned, 0.0)
        return value, g_theta, g_ls

    def extra_repr(self) -> str:
        head = f"prior={self.prior!r}"
        if self.prior == "gamma":
            head += f", a={self.a}, b={self.b}"
        return f"{head}, {super().extra_repr()}"
