r"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017): a learned α per weight.

The KL approximation is restated as eq. (4) of Kharitonov, Molchanov & Vetrov (2018). The math
lives in :mod:`bayesdrop.functional.sparse_variational`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional.kl import kl_log_uniform
from ..functional.sparse_variational import sparse_variational_kl
from .additive_gaussian import AdditiveGaussianDropout, PruneRule

__all__ = ["SparseVariationalDropout"]


class SparseVariationalDropout(AdditiveGaussianDropout):
    r"""Sparse variational dropout on the weights of a wrapped ``nn.Linear`` or ``nn.Conv1d/2d/3d``.

    Each weight has its own Gaussian posterior :math:`q(w) = \mathcal N(\theta, \sigma^2)` in the
    additive parameterisation: :math:`\theta` is the wrapped layer's weight and ``log_sigma2`` a
    parameter of the same shape, so :math:`\alpha = \sigma^2/\theta^2` and the drop probability
    is :math:`p = \alpha/(1+\alpha)`. The prior is log-uniform and the KL is the approximation
    of Molchanov et al. (2017), eq. (4) of the ARD paper
    (:func:`~bayesdrop.functional.kl_log_uniform` with ``approximation="molchanov"``):

    .. math::
        \mathrm{KL} \approx \sum_{ij} k_1 - k_1\,\sigma(k_2 + k_3\log\alpha_{ij})
        + \tfrac12\log\bigl(1 + \alpha_{ij}^{-1}\bigr),
        \quad k_1 = 0.63576,\ k_2 = 1.87320,\ k_3 = 1.48695.

    Training and MC sampling draw pre-activations with the local reparameterisation trick,
    :math:`y \sim \mathcal N(x\theta^\top + b,\ x^2 \sigma^{2\top})` (convolutions likewise); the
    bias shifts the mean only, never the standard deviation. Eval mode is deterministic: the mean
    weights, with every weight whose :math:`\log\alpha` exceeds ``threshold`` set to zero
    (the paper's rule; ``prune_rule="magnitude"`` drops :math:`|\theta| <`
    ``magnitude_threshold`` instead, see :class:`~bayesdrop.nn.additive_gaussian.AdditiveGaussianDropout`;
    :func:`bayesdrop.sparsity.prune` makes it permanent). :math:`\log\alpha` is computed as
    :math:`\log\sigma^2 - \log(\theta^2 + 10^{-16})` and clamped to :math:`[-10, 10]`, so
    :math:`\theta = 0` gives neither NaN values nor NaN gradients.

    The data-set size enters once, in :func:`bayesdrop.objective`, never in :meth:`kl`.

    Args:
        layer: ``nn.Linear`` or ``nn.Conv1d/2d/3d``; its weight becomes :math:`\theta`.
        threshold: :math:`\log\alpha` above which eval mode drops a weight, in [-10, 10]
            (default 3, i.e. :math:`p > 0.95`, as in the paper).
        prune_rule: ``"log_alpha"`` (default, by ``threshold``) or ``"magnitude"`` (by
            ``magnitude_threshold``).
        magnitude_threshold: with ``prune_rule="magnitude"``, eval mode drops the weights with
            :math:`|\theta|` below it (default :math:`10^{-2}`).
        init_log_sigma2: initial :math:`\log\sigma^2` of every weight, in [-40, 20].
        max_log_sigma2: optional upper clip of :math:`\log\sigma^2`, in [-40, 20].
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
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> m = SparseVariationalDropout(nn.Linear(4, 2))
        >>> m.p.shape
        torch.Size([2, 4])
        >>> with torch.no_grad():
        ...     m.log_sigma2[0, 0] = 10.0  # alpha = sigma^2 / theta^2 is huge: dropped in eval
        >>> m.keep_mask()[0].tolist()
        [False, True, True, True]
    """

    def __init__(
        self,
        layer: nn.Module,
        *,
        threshold: float = 3.0,
        prune_rule: PruneRule = "log_alpha",
        magnitude_threshold: float = 1e-2,
        init_log_sigma2: float = -10.0,
        max_log_sigma2: float | None = None,
        init_max_log_alpha: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
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

    def kl_per_weight(self) -> Tensor:
        return kl_log_uniform(self.log_alpha, approximation="molchanov")

    def kl(self) -> Tensor:
        return sparse_variational_kl(
            self.theta, self.log_sigma2, pruned=self._pruned(), max_log_sigma2=self.max_log_sigma2
        )
