r"""Independent Gaussian weight noise sampled four ways, for the estimator comparisons of
Kingma, Salimans & Welling (2015), Table 1 and the speed comparison of §5.

The posterior is :math:`q(w_{ji}) = \mathcal N(\theta_{ji}, \alpha\theta_{ji}^2)` with one
:math:`\alpha \le 1` per layer (variational dropout with independent weight noise, type B). The
pre-activations of a minibatch :math:`x_{1..M}` are then sampled by

* ``"lrt"`` — the local reparameterisation trick: draw the pre-activations directly,
  :math:`b_m \sim \mathcal N(\theta x_m + c,\ \alpha\theta^{\odot 2}x_m^{\odot 2})`
  (:func:`bayesdrop.functional.lrt_linear`; what :class:`bayesdrop.nn.VariationalDropout`
  ``(noise="B")`` does): :math:`M \times \text{out}` normal draws;
* ``"per-example"`` — a separate weight matrix
  :math:`W_m = \theta + \sqrt\alpha\,|\theta|\odot\varepsilon_m` for every example (the slow,
  naive estimator with independent examples): :math:`M \times \text{out} \times \text{in}` draws;
* ``"per-batch"`` — one weight matrix shared by the whole minibatch (the standard SGVB estimator,
  whose examples are correlated): :math:`\text{out} \times \text{in}` draws;
* ``"none"`` — no noise (the mean network; the minimal variance).

The first three have the same per-example marginal distribution of :math:`b_m`, hence the same
expected loss and gradient; they differ in variance and cost. Only the experiments use this
module; the library's layer is :class:`~bayesdrop.nn.VariationalDropout`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesdrop.functional.lrt import lrt_linear, sample_gaussian
from bayesdrop.functional.variational import clamp_log_alpha, variational_dropout_kl
from bayesdrop.nn import DropoutModule

__all__ = ["MODES", "WeightNoiseLinear", "noise_draws"]

MODES = ("lrt", "per-example", "per-batch", "none")


def noise_draws(mode: str, batch: int, in_features: int, out_features: int) -> int:
    r"""Standard normal numbers one forward pass of a :class:`WeightNoiseLinear` draws.

    .. math::
        \text{lrt}: M\,n_{out},\quad \text{per-example}: M\,n_{out}\,n_{in},\quad
        \text{per-batch}: n_{out}\,n_{in},\quad \text{none}: 0

    Example:
        >>> noise_draws("per-example", 100, 784, 256) // noise_draws("lrt", 100, 784, 256)
        784
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, but got {mode!r}")
    for name, value in (
        ("batch", batch),
        ("in_features", in_features),
        ("out_features", out_features),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, but got {value!r}")
    return {
        "lrt": batch * out_features,
        "per-example": batch * out_features * in_features,
        "per-batch": out_features * in_features,
        "none": 0,
    }[mode]


class WeightNoiseLinear(DropoutModule):
    r"""``nn.Linear`` with weights :math:`\mathcal N(\theta, \alpha\theta^2)`, sampled by ``mode``.

    .. math::
        b_m = W_m x_m + c,\qquad W_m = \theta + \sqrt\alpha\,|\theta|\odot\varepsilon_m,
        \qquad \alpha = \min(e^{\log\alpha}, 1)

    with :math:`\varepsilon_m` per example (``"per-example"``), shared by the batch
    (``"per-batch"``), zero (``"none"``), or :math:`b_m` drawn from its exact Gaussian marginal
    (``"lrt"``). Eval mode (without MC sampling) is the mean network. The KL is the one of
    :class:`~bayesdrop.nn.VariationalDropout` type B with one α per layer.

    Args:
        layer: the wrapped ``nn.Linear`` (its weight is :math:`\theta`).
        init_p: initial drop probability in ``(0, 0.5]``, :math:`\alpha = p/(1-p) \le 1`.
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
        """:math:`\\alpha = e^{\\log\\alpha}`, clamped to at most 1."""
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
        if x.dim() != 2:
            raise ValueError(f"x must have shape (batch, in_features), but got {tuple(x.shape)}")
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
