r"""Independent Gaussian weight noise sampled four ways, for the estimator comparisons of
Kingma, Salimans & Welling (2015), Table 1 and the speed comparison of §5.

The posterior is :math:`q(w_{ji}) = \mathcal N(\theta_{ji}, \alpha\theta_{ji}^2)` with one
:math:`\alpha` per layer (variational dropout with independent weight noise, type B). Its
minibatch gradient can be estimated by

* ``"lrt"`` — the local reparameterisation trick: sample the pre-activations
  :math:`b \sim \mathcal N(\theta x + c, \alpha\theta^{\odot 2}x^{\odot 2})`
  (:func:`bayesdrop.functional.lrt_linear`; this is what
  :class:`bayesdrop.nn.VariationalDropout` ``(kind="B")`` does);
* ``"per-example"`` — a separate weight matrix :math:`\theta + \sqrt\alpha|\theta|\odot\varepsilon_m`
  for every example (the slow, naive estimator);
* ``"per-batch"`` — one weight matrix shared by the whole minibatch (the standard SGVB estimator);
* ``"none"`` — no noise (the mean network; the minimal variance).

Only the experiments use this module; the library's layer is
:class:`~bayesdrop.nn.VariationalDropout`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.lrt import lrt_linear, sample_gaussian
from ..functional.variational import clamp_log_alpha, variational_dropout_kl
from ..nn._base import DropoutModule

__all__ = ["MODES", "WeightNoiseLinear"]

MODES = ("lrt", "per-example", "per-batch", "none")


class WeightNoiseLinear(DropoutModule):
    r"""``nn.Linear`` with weights :math:`\mathcal N(\theta, \alpha\theta^2)`, sampled by ``mode``.

    Args:
        layer: the wrapped ``nn.Linear`` (its weight is :math:`\theta`).
        init_p: initial drop probability, :math:`\alpha = p/(1-p) \le 1`.
        mode: one of :data:`MODES`.
        generator: optional generator for the noise.
    """

    def __init__(
        self,
        layer: nn.Linear,
        *,
        init_p: float = 0.5,
        mode: str = "lrt",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, but got {type(layer).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, but got {mode!r}")
        if not 0.0 < init_p <= 0.5:
            raise ValueError(f"init_p must be in (0, 0.5], but got {init_p}")
        self.layer = layer
        self.mode = mode
        self.log_alpha = nn.Parameter(torch.tensor([math.log(init_p) - math.log1p(-init_p)]))

    @property
    def alpha(self) -> Tensor:
        return clamp_log_alpha(self.log_alpha, 0.0).exp()

    @property
    def p(self) -> Tensor:
        return torch.sigmoid(clamp_log_alpha(self.log_alpha, 0.0)).detach()

    def kl(self) -> Tensor:
        return variational_dropout_kl(
            clamp_log_alpha(self.log_alpha, 0.0), self.layer.weight.numel()
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.sampling or self.mode == "none":
            return self.layer(x)
        w, b = self.layer.weight, self.layer.bias
        alpha = self.alpha.to(x.dtype)
        if self.mode == "lrt":
            mean, var = lrt_linear(x, w, alpha * w * w, b)
            return sample_gaussian(mean, var, generator=self.generator)
        std = alpha.sqrt() * w.abs()  # standard deviation of each weight
        if self.mode == "per-batch":
            eps = torch.randn(w.shape, dtype=x.dtype, device=x.device, generator=self.generator)
            return F.linear(x, w + std * eps, b)
        eps = torch.randn(
            (x.shape[0], *w.shape), dtype=x.dtype, device=x.device, generator=self.generator
        )
        return F.linear(x, w, b) + torch.einsum("bi,boi->bo", x, std * eps)
