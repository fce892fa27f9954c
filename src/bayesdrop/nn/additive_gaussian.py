r"""Base of the per-weight Gaussian families with the additive parameterisation.

:class:`~bayesdrop.nn.SparseVariationalDropout` and :class:`~bayesdrop.nn.ARDDropout` share
everything but their KL: a fully factorised posterior :math:`q(w_{ij}) = \mathcal N(\theta_{ij},
\sigma^2_{ij})` over the weights of a wrapped ``nn.Linear`` or ``nn.Conv1d/2d/3d``, parameterised
additively (Molchanov et al. 2017) by the layer's own weight :math:`\theta` and a free
``log_sigma2`` of the same shape, with

.. math::
    \log\alpha = \mathrm{clamp}\bigl(\log\sigma^2 - \log(\theta^2 + \epsilon),\
    \text{ADDITIVE\_LOG\_ALPHA\_MIN}, \text{ADDITIVE\_LOG\_ALPHA\_MAX}\bigr),
    \qquad p = \frac{\alpha}{1 + \alpha}.

Training (and MC sampling) uses the local reparameterisation trick: pre-activations are drawn
from :math:`\mathcal N(x\theta^\top + b,\ x^{2}\sigma^{2\top})` (the bias only shifts the mean).
Eval mode is deterministic: the mean weights with the weights the pruning rule drops set to zero.
The math lives in ``bayesdrop.functional.additive_gaussian`` (:func:`bayesdrop.functional.fused_kl_sum`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice
from ..functional.additive_gaussian import (
    ADDITIVE_LOG_ALPHA_MAX,
    ADDITIVE_LOG_ALPHA_MIN,
    LOG_SIGMA2_MAX,
    LOG_SIGMA2_MIN,
    THETA_SQ_EPS,
    additive_log_alpha,
    additive_variance,
)
from ..functional.lrt import LRT_LAYERS, layer_options, lrt_sample
from ._base import DropoutModule

__all__ = ["AdditiveGaussianDropout", "PruneRule", "PRUNE_RULES"]

#: How eval mode and :func:`bayesdrop.sparsity.prune` decide which weights to drop.
PruneRule = Literal["log_alpha", "magnitude"]
#: Accepted values of ``prune_rule``.
PRUNE_RULES: tuple[PruneRule, ...] = ("log_alpha", "magnitude")


def _check_real(name: str, value: float, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, but got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and low <= v <= high):
        rng = f"in [{low}, {high}]" if math.isfinite(low) or math.isfinite(high) else "finite"
        raise ValueError(f"{name} must be {rng}, but got {value}")
    return v


class AdditiveGaussianDropout(DropoutModule):
    r"""Per-weight Gaussian weight noise on a wrapped layer; subclasses supply the KL.

    Pruning rules (``prune_rule``), applied in eval mode and made permanent by :meth:`prune`:

    * ``"log_alpha"`` (default): drop the weights with :math:`\log\alpha >` ``threshold``
      (default 3, i.e. :math:`p > 0.95`), the rule of Molchanov, Ashukha & Vetrov (2017);
    * ``"magnitude"``: drop the weights with :math:`|\theta| <` ``magnitude_threshold``
      (default :math:`10^{-2}`), the rule of Kharitonov, Molchanov & Vetrov (2018), who trim
      :math:`|\mu_i| < 10^{-2}` after training.

    Args:
        layer: ``nn.Linear`` or ``nn.Conv1d/2d/3d`` whose weight is the posterior mean
            :math:`\theta`.
        threshold: ``prune_rule="log_alpha"``: eval mode zeroes the weights with
            :math:`\log\alpha` above it, in [-10, 10].
        prune_rule: ``"log_alpha"`` or ``"magnitude"``.
        magnitude_threshold: ``prune_rule="magnitude"``: eval mode zeroes the weights with
            :math:`|\theta|` below it (> 0).
        init_log_sigma2: initial :math:`\log\sigma^2` of every weight.
        max_log_sigma2: optional upper clip of :math:`\log\sigma^2` (below ``LOG_SIGMA2_MAX``).
        init_max_log_alpha: optional cap on every weight's initial :math:`\log\alpha`:
            :math:`\log\sigma^2_{ij}` starts at
            :math:`\min(\text{init\_log\sigma2},\ \log(\theta_{ij}^2 + \epsilon) +
            \text{init\_max\_log\alpha})` (not below ``LOG_SIGMA2_MIN``), so that no weight of
            a trained layer starts out as noise only because it is small. ``None`` (default):
            every weight starts at ``init_log_sigma2``, as in the papers.
        generator: optional generator for the Gaussian noise.

    **Dense until trained.** :meth:`keep_dense_until_trained` (which :func:`bayesdrop.convert`
    calls on the modules it creates) makes eval mode, :meth:`keep_mask` and :meth:`prune` keep
    every weight not already removed until the module has run one forward pass in training mode
    with gradients enabled, so that wrapping a trained layer leaves the model's eval outputs
    exactly as they were until it is trained (the magnitude rule would otherwise drop every
    small weight of the trained layer at once, and the :math:`\log\alpha` rule every weight
    below :math:`e^{(\text{init\_log\sigma2} - \text{threshold})/2}`). The state is the
    boolean buffer ``dense_until_trained``, saved in ``state_dict``.

    Attributes:
        log_sigma2: the posterior log-variances, a parameter shaped like ``layer.weight``.
        weight_mask: boolean buffer (saved in ``state_dict``); ``False`` marks weights removed
            for good by :meth:`prune`, which every forward pass and the KL ignore.
    """

    weight_mask: Tensor

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
        super().__init__(generator)
        if not isinstance(layer, LRT_LAYERS):
            raise TypeError(
                "layer must be an nn.Linear or nn.Conv1d/Conv2d/Conv3d, but got "
                f"{type(layer).__name__}"
            )
        self.layer = layer
        self.threshold = _check_real(
            "threshold", threshold, ADDITIVE_LOG_ALPHA_MIN, ADDITIVE_LOG_ALPHA_MAX
        )
        self.prune_rule: PruneRule = check_choice("prune_rule", prune_rule, PRUNE_RULES)  # type: ignore[assignment]
        self.magnitude_threshold = _check_real("magnitude_threshold", magnitude_threshold, 0.0)
        if self.magnitude_threshold <= 0.0:
            raise ValueError(f"magnitude_threshold must be > 0, but got {magnitude_threshold}")
        if max_log_sigma2 is None:
            self.max_log_sigma2 = LOG_SIGMA2_MAX
        else:
            self.max_log_sigma2 = _check_real(
                "max_log_sigma2", max_log_sigma2, LOG_SIGMA2_MIN, LOG_SIGMA2_MAX
            )
        init = _check_real("init_log_sigma2", init_log_sigma2, LOG_SIGMA2_MIN, self.max_log_sigma2)
        weight: Tensor = layer.weight  # type: ignore[assignment]
        log_sigma2 = torch.full_like(weight.detach(), init)
        if init_max_log_alpha is not None:
            cap = _check_real(
                "init_max_log_alpha",
                init_max_log_alpha,
                ADDITIVE_LOG_ALPHA_MIN,
                ADDITIVE_LOG_ALPHA_MAX,
            )
            small = torch.log(weight.detach().square() + THETA_SQ_EPS) + cap
            log_sigma2 = torch.minimum(log_sigma2, small).clamp(min=LOG_SIGMA2_MIN)
        self.log_sigma2 = nn.Parameter(log_sigma2)
        self.register_buffer("weight_mask", torch.ones_like(weight.detach(), dtype=torch.bool))
        self._pruned_key: tuple[int, int, int] | None = None
        self._pruned_cache: Tensor | None = None

    # ------------------------------------------------------------------ posterior quantities
    @property
    def theta(self) -> Tensor:
        r"""Posterior means :math:`\theta` (the wrapped layer's weight, with gradient)."""
        return self.layer.weight  # type: ignore[return-value]

    @property
    def log_alpha(self) -> Tensor:
        r"""Clamped :math:`\log\alpha = \log\sigma^2 - \log(\theta^2 + \epsilon)` per weight.

        Pruned weights (``weight_mask`` false) read ``ADDITIVE_LOG_ALPHA_MAX``. Differentiable.
        """
        la = additive_log_alpha(self.theta, self.log_sigma2, self.max_log_sigma2)
        return la.masked_fill(~self.weight_mask, ADDITIVE_LOG_ALPHA_MAX)

    @property
    def p(self) -> Tensor:
        r"""Drop probabilities :math:`\alpha/(1+\alpha)`, one per weight (detached)."""
        return torch.sigmoid(self.log_alpha).detach()

    def keep_dense_until_trained(self) -> None:
        """Keep every weight in eval mode until the module is trained (see the class docstring)."""
        self.register_buffer(
            "dense_until_trained", torch.ones((), dtype=torch.bool, device=self.weight_mask.device)
        )

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        key = prefix + "dense_until_trained"
        if hasattr(self, "dense_until_trained") and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.bool)  # saved before: trained
        super()._load_from_state_dict(state_dict, prefix, *args)

    def keep_mask(self) -> Tensor:
        r"""Boolean mask of the weights eval mode keeps (by ``prune_rule``), pruned ones excluded.

        Every weight not removed by :meth:`prune` while ``dense_until_trained`` holds.
        """
        with torch.no_grad():
            if self.prune_rule == "magnitude":
                keep = self.theta.abs() >= self.magnitude_threshold
            else:
                keep = self.log_alpha <= self.threshold
            dense = self.__dict__["_buffers"].get("dense_until_trained")
            if dense is not None:
                keep = keep | dense
            return keep & self.weight_mask

    def sparse_weight(self) -> Tensor:
        r"""The weight eval mode uses: :math:`\theta` with the dropped weights zeroed (detached)."""
        with torch.no_grad():
            return self.theta * self.keep_mask()

    # ------------------------------------------------------------------ prior
    def kl_per_weight(self) -> Tensor:
        """KL (or negated regulariser) of every weight, shaped like the weight.

        The reference implementation, through the public functional KL; differentiable to any
        order. Pruned weights are included (``kl()`` leaves them out).
        """
        raise NotImplementedError

    def kl(self) -> Tensor:
        """Sum of :meth:`kl_per_weight` over the weights not removed by :meth:`prune` (0-dim).

        Computed by a fused function with the per-weight gradient in closed form (see
        :func:`~bayesdrop.functional.fused_kl_sum`); its value and first derivatives equal those
        of ``kl_per_weight()`` summed over the kept weights (tested); no double backward.
        """
        raise NotImplementedError

    def _pruned(self) -> Tensor | None:
        """``~weight_mask``, or ``None`` when nothing is pruned (cached per mask version)."""
        mask = self.weight_mask
        if torch.compiler.is_compiling():
            # No data-dependent branch under torch.compile: always apply the (possibly empty) mask.
            return ~mask
        key = (id(mask), mask._version, mask.data_ptr())
        if key != self._pruned_key:
            self._pruned_cache = None if bool(mask.all()) else ~mask
            self._pruned_key = key
        return self._pruned_cache

    # ------------------------------------------------------------------ pruning
    @torch.no_grad()
    def prune(self) -> int:
        """Remove the weights eval mode drops for good; return how many are removed in total.

        Sets their :math:`\\theta` to 0, their ``log_sigma2`` to ``LOG_SIGMA2_MIN`` and clears
        them in ``weight_mask``, so they stay zero in training, MC sampling and eval.

        Raises:
            ValueError: if :math:`\\theta` or ``log_sigma2`` has a NaN or infinite entry (such a
                weight is neither kept nor compressed), before anything is changed.
        """
        for name, t in (("weight", self.theta), ("log_sigma2", self.log_sigma2)):
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(
                    f"cannot prune {type(self).__name__}: its {name} has {bad} NaN or infinite "
                    "entries (a diverged model is not compressed)"
                )
        keep = self.keep_mask()
        self.theta.masked_fill_(~keep, 0.0)
        self.log_sigma2.masked_fill_(~keep, LOG_SIGMA2_MIN)
        self.weight_mask.copy_(keep)
        return int((~keep).sum())

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        layer = self.layer
        dense = self.__dict__["_buffers"].get("dense_until_trained")
        if dense is not None and self.training and torch.is_grad_enabled():
            dense.fill_(False)  # trained from now on
        if not self.sampling:
            weight = self.theta * self.keep_mask()
            if isinstance(layer, nn.Linear):
                return F.linear(x, weight, layer.bias)
            return layer._conv_forward(x, weight, layer.bias)  # type: ignore[union-attr, operator]
        theta = self.theta
        pruned = self._pruned()
        if pruned is not None:
            theta = theta.masked_fill(pruned, 0.0)
        var = additive_variance(self.log_sigma2, self.max_log_sigma2, pruned)
        return lrt_sample(
            x,
            theta,
            var,
            layer.bias,  # type: ignore[arg-type]
            generator=self.generator,
            **layer_options(layer),
        )

    def extra_repr(self) -> str:
        if self.prune_rule == "magnitude":
            s = f"prune_rule='magnitude', magnitude_threshold={self.magnitude_threshold}"
        else:
            s = f"threshold={self.threshold}"
        if self.max_log_sigma2 != LOG_SIGMA2_MAX:
            s += f", max_log_sigma2={self.max_log_sigma2}"
        return s
