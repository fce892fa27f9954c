r"""Private base of the per-weight Gaussian families with the additive parameterisation.

:class:`~bayesdrop.nn.SparseVariationalDropout` and :class:`~bayesdrop.nn.ARDDropout` share
everything but their KL: a fully factorised posterior :math:`q(w_{ij}) = \mathcal N(\theta_{ij},
\sigma^2_{ij})` over the weights of a wrapped ``nn.Linear`` or ``nn.Conv1d/2d/3d``, parameterised
additively (Molchanov et al. 2017) by the layer's own weight :math:`\theta` and a free
``log_sigma2`` of the same shape, with

.. math::
    \log\alpha = \mathrm{clamp}\bigl(\log\sigma^2 - \log(\theta^2 + \epsilon),\
    \text{LOG\_ALPHA\_MIN}, \text{LOG\_ALPHA\_MAX}\bigr),
    \qquad p = \frac{\alpha}{1 + \alpha}.

Training (and MC sampling) uses the local reparameterisation trick: pre-activations are drawn
from :math:`\mathcal N(x\theta^\top + b,\ x^{2}\sigma^{2\top})` (the bias only shifts the mean).
Eval mode is deterministic: the mean weights with every weight whose :math:`\log\alpha` exceeds
``threshold`` set to zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.lrt import lrt_conv, lrt_linear, sample_gaussian
from ._base import DropoutModule

__all__ = [
    "AdditiveGaussianDropout",
    "LOG_ALPHA_MIN",
    "LOG_ALPHA_MAX",
    "LOG_SIGMA2_MIN",
    "LOG_SIGMA2_MAX",
    "THETA_SQ_EPS",
]

#: :math:`\log\alpha` is clamped to ``[LOG_ALPHA_MIN, LOG_ALPHA_MAX]`` (as in Molchanov et al.'s
#: code) wherever it is used (KL, ``p``, the pruning threshold); outside that range the KL gives
#: no gradient, which also keeps it finite at :math:`\theta = 0`.
LOG_ALPHA_MIN = -10.0
LOG_ALPHA_MAX = 10.0
#: ``log_sigma2`` is clamped to ``[LOG_SIGMA2_MIN, LOG_SIGMA2_MAX]`` before use, so
#: :math:`\sigma^2` stays a finite, normal float32 number. Pruned weights get ``LOG_SIGMA2_MIN``.
LOG_SIGMA2_MIN = -40.0
LOG_SIGMA2_MAX = 20.0
#: Added to :math:`\theta^2` inside the logarithm so :math:`\theta = 0` gives a finite
#: :math:`\log\alpha` (then clamped to ``LOG_ALPHA_MAX``) and a zero, not NaN, gradient.
THETA_SQ_EPS = 1e-16

_CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_real(name: str, value: float, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, but got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and low <= v <= high):
        rng = f"in [{low}, {high}]" if math.isfinite(low) or math.isfinite(high) else "finite"
        raise ValueError(f"{name} must be {rng}, but got {value}")
    return v


class AdditiveGaussianDropout(DropoutModule):
    """Per-weight Gaussian weight noise on a wrapped layer; subclasses supply the KL per weight.

    Args:
        layer: ``nn.Linear`` or ``nn.Conv1d/2d/3d`` whose weight is the posterior mean
            :math:`\\theta`.
        threshold: eval mode zeroes the weights with :math:`\\log\\alpha` above it.
        init_log_sigma2: initial :math:`\\log\\sigma^2` of every weight.
        max_log_sigma2: optional upper clip of :math:`\\log\\sigma^2` (below ``LOG_SIGMA2_MAX``).
        generator: optional generator for the Gaussian noise.

    Attributes:
        log_sigma2: the posterior log-variances, a parameter shaped like ``layer.weight``.
        weight_mask: boolean buffer (saved in ``state_dict``); ``False`` marks weights removed
            for good by :meth:`prune`, which every forward pass and the KL ignore.
    """

    def __init__(
        self,
        layer: nn.Module,
        *,
        threshold: float = 3.0,
        init_log_sigma2: float = -10.0,
        max_log_sigma2: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if not isinstance(layer, (nn.Linear, *_CONV_LAYERS)):
            raise TypeError(
                "layer must be an nn.Linear or nn.Conv1d/Conv2d/Conv3d, but got "
                f"{type(layer).__name__}"
            )
        self.layer = layer
        self.threshold = _check_real("threshold", threshold, LOG_ALPHA_MIN, LOG_ALPHA_MAX)
        if max_log_sigma2 is None:
            self.max_log_sigma2 = LOG_SIGMA2_MAX
        else:
            self.max_log_sigma2 = _check_real(
                "max_log_sigma2", max_log_sigma2, LOG_SIGMA2_MIN, LOG_SIGMA2_MAX
            )
        init = _check_real("init_log_sigma2", init_log_sigma2, LOG_SIGMA2_MIN, self.max_log_sigma2)
        weight = layer.weight
        self.log_sigma2 = nn.Parameter(torch.full_like(weight.detach(), init))
        self.register_buffer("weight_mask", torch.ones_like(weight.detach(), dtype=torch.bool))

    # ------------------------------------------------------------------ posterior quantities
    @property
    def theta(self) -> Tensor:
        """Posterior means :math:`\\theta` (the wrapped layer's weight, with gradient)."""
        return self.layer.weight  # type: ignore[return-value]

    def _log_sigma2(self) -> Tensor:
        return self.log_sigma2.clamp(LOG_SIGMA2_MIN, self.max_log_sigma2)

    @property
    def log_alpha(self) -> Tensor:
        """Clamped :math:`\\log\\alpha = \\log\\sigma^2 - \\log(\\theta^2 + \\epsilon)` per weight.

        Pruned weights (``weight_mask`` false) read ``LOG_ALPHA_MAX``. Differentiable.
        """
        la = self._log_sigma2() - torch.log(self.theta.square() + THETA_SQ_EPS)
        la = la.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
        return la.masked_fill(~self.weight_mask, LOG_ALPHA_MAX)

    @property
    def p(self) -> Tensor:
        """Drop probabilities :math:`\\alpha/(1+\\alpha)`, one per weight (detached)."""
        return torch.sigmoid(self.log_alpha).detach()

    def keep_mask(self) -> Tensor:
        """Boolean mask of the weights eval mode keeps: :math:`\\log\\alpha \\le` ``threshold``."""
        with torch.no_grad():
            return (self.log_alpha <= self.threshold) & self.weight_mask

    def sparse_weight(self) -> Tensor:
        """The weight eval mode uses: :math:`\\theta` with the dropped weights zeroed (detached)."""
        with torch.no_grad():
            return self.theta * self.keep_mask()

    # ------------------------------------------------------------------ prior
    def kl_per_weight(self) -> Tensor:
        """KL (or negated regulariser) of every weight, shaped like the weight."""
        raise NotImplementedError

    def kl(self) -> Tensor:
        """Sum of :meth:`kl_per_weight` over the weights not removed by :meth:`prune` (0-dim)."""
        return torch.where(self.weight_mask, self.kl_per_weight(), 0.0).sum()

    # ------------------------------------------------------------------ pruning
    @torch.no_grad()
    def prune(self) -> int:
        """Remove the weights eval mode drops for good; return how many are removed in total.

        Sets their :math:`\\theta` to 0, their ``log_sigma2`` to ``LOG_SIGMA2_MIN`` and clears
        them in ``weight_mask``, so they stay zero in training, MC sampling and eval.
        """
        keep = self.keep_mask()
        self.theta.masked_fill_(~keep, 0.0)
        self.log_sigma2.masked_fill_(~keep, LOG_SIGMA2_MIN)
        self.weight_mask.copy_(keep)
        return int((~keep).sum())

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        if not self.sampling:
            return self._apply_layer(x, self.theta * self.keep_mask())
        mask = self.weight_mask
        theta = self.theta * mask
        var = torch.exp(self._log_sigma2()) * mask
        mean, out_var = self._moments(x, theta, var)
        return sample_gaussian(mean, out_var, generator=self.generator)

    def _moments(self, x: Tensor, theta: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return lrt_linear(x, theta, var, layer.bias)
        x, padding = self._conv_input(x)
        return lrt_conv(
            x,
            theta,
            var,
            layer.bias,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=padding,  # type: ignore[arg-type]
            dilation=layer.dilation,  # type: ignore[arg-type]
            groups=layer.groups,  # type: ignore[arg-type]
        )

    def _conv_input(self, x: Tensor) -> tuple[Tensor, object]:
        """Apply a non-zero ``padding_mode`` explicitly, as ``nn.ConvNd`` does internally."""
        layer = self.layer
        if layer.padding_mode != "zeros":  # type: ignore[union-attr]
            pad = layer._reversed_padding_repeated_twice  # type: ignore[union-attr]
            return F.pad(x, pad, mode=layer.padding_mode), 0  # type: ignore[arg-type, union-attr]
        return x, layer.padding  # type: ignore[union-attr]

    def _apply_layer(self, x: Tensor, weight: Tensor) -> Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)  # type: ignore[union-attr, operator]

    def extra_repr(self) -> str:
        s = f"threshold={self.threshold}"
        if self.max_log_sigma2 != LOG_SIGMA2_MAX:
            s += f", max_log_sigma2={self.max_log_sigma2}"
        return s
