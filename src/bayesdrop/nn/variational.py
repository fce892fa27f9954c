"""Variational dropout (Kingma, Salimans & Welling 2015): Gaussian dropout with learned α."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_positive, check_probability
from ..functional.gaussian import gaussian_dropout
from ..functional.kl import KL_APPROXIMATIONS, KL_LOG_ALPHA_MAX, KL_LOG_ALPHA_MIN, KLApproximation
from ..functional.lrt import layer_options, lrt_sample
from ..functional.variational import clamp_log_alpha, variational_dropout_kl, weight_variance
from ._base import DropoutModule
from .gaussian import NOISE_TYPES, NoiseType, require_lrt_layer
from .wrapped_layers import check_layer, input_weights, mask_shape

__all__ = ["VariationalDropout", "GRANULARITIES", "KL_TERMS", "KLTerms", "Granularity"]

#: How many rates :math:`\alpha` a module learns.
Granularity = Literal["unit", "layer", "weight", "output"]
#: Accepted ``granularity`` values per noise type (the first is the default).
GRANULARITIES: dict[str, tuple[Granularity, ...]] = {
    "A": ("unit", "layer"),
    "B": ("weight", "output", "layer"),
}
#: How the KL counts each rate: once per noise variable, or once per weight it governs.
KLTerms = Literal["noise", "weight"]
#: Accepted ``kl_terms`` values.
KL_TERMS: tuple[KLTerms, ...] = ("noise", "weight")


class VariationalDropout(DropoutModule):
    r"""Gaussian dropout whose noise variances :math:`\alpha` are learned variationally.

    The posterior is a dropout posterior :math:`w = \theta\,\xi` with multiplicative Gaussian
    noise, the prior is the log-uniform :math:`p(\log|w|) \propto 1`, and :math:`\log\alpha` is
    learned by the pathwise gradient of the ELBO (Kingma, Salimans & Welling 2015, §3).

    * ``noise="A"`` (correlated weight noise, §3.2): one :math:`\alpha_i` per input unit (or one
      per layer), noise :math:`\xi_i \sim \mathcal N(1, \alpha_i)` on the inputs, i.e.
      :math:`w_{ji} = \xi_i\theta_{ji}` with the scale variables :math:`\xi_i`. Per feature for the bare form and ``nn.Linear``, per
      channel for ``nn.Conv1d/2d/3d``, per sequence and feature for ``nn.LSTM/GRU/RNN``.
    * ``noise="B"`` (independent weight noise, §3.1): :math:`q(w_{ji}) = \mathcal
      N(\theta_{ji}, \alpha_{ji}\theta_{ji}^2)` with :math:`\alpha` per weight, per output unit
      or per layer, for ``nn.Linear`` and ``nn.Conv1d/2d/3d``, sampled through the local
      reparameterisation trick: :math:`b \sim \mathcal N(\theta x + c, (\alpha\theta^2)x^2)`.

    The KL sums one term per noise variable (Kingma et al. 2015, §3.2: the posterior and the
    log-uniform prior are on the scale variables for type A, on the weights for type B):

    .. math::
        \mathrm{KL} = \sum_k n_k\,\mathrm{KL}(\alpha_k),\qquad
        \mathrm{KL}_{\text{kingma}}(\alpha) = -\bigl(\tfrac12\log\alpha + c_1\alpha
            + c_2\alpha^2 + c_3\alpha^3\bigr) + \text{const},

    with :math:`n_k` the number of noise variables that share :math:`\alpha_k`
    (:meth:`kl_terms_per_alpha`): for type A 1 per input unit (the number of units for
    ``granularity="layer"``), the same in the wrapped and the bare form; for type B the number
    of weights :math:`\alpha_k` governs. ``kl_terms="weight"`` counts each type-A unit once per
    weight leaving it instead (the fan-out), the KL of the weights' marginals, which puts A on
    the scale of B; it is not the paper's objective. For type B both choices agree.

    ``kl="kingma"`` (default) is the paper's cubic fit without its additive constant (so
    ``kl()`` may be negative; gradients are unaffected). It is fitted on :math:`0 < \alpha \le 1`
    and decreases without bound above 1 (-449 at :math:`\alpha = 10`, where the true KL is
    0.049), so it refuses ``max_alpha > 1``. ``kl="molchanov"`` is the approximation of
    Molchanov, Ashukha & Vetrov (2017), accurate for every :math:`\alpha` (within 0.01 nats of
    the integral), and allows ``max_alpha`` up to :math:`e^{20}`.

    :math:`\log\alpha` is clamped to ``[-20, log(max_alpha)]`` in every computation, with a
    gradient that can bring it back from outside (:func:`~bayesdrop.functional.clamp_log_alpha`);
    the paper recommends :math:`\alpha \le 1` (``max_alpha=1``, i.e. :math:`p \le 0.5`) since larger
    values are poor local optima with high-variance gradients. :attr:`p` is
    :math:`\alpha/(1+\alpha)`. Eval mode uses the mean weights :math:`\theta` (the wrapped layer
    as it is; the identity in the bare form).

    Args:
        layer: the wrapped layer, or ``None`` for the bare type A form.
        noise: ``"A"`` (default) or ``"B"``.
        granularity: type A ``"unit"`` (default) or ``"layer"``; type B ``"weight"`` (default),
            ``"output"`` or ``"layer"``.
        init_p: initial drop probability, :math:`\alpha_0 = p/(1-p) \le` ``max_alpha``.
        max_alpha: upper bound on :math:`\alpha`: in ``(0, 1]`` with ``kl="kingma"``, in
            ``(0, e^{20}]`` with ``kl="molchanov"``.
        kl: the KL approximation, ``"kingma"`` (default) or ``"molchanov"``.
        kl_terms: ``"noise"`` (default: one KL term per noise variable, the paper's) or
            ``"weight"`` (type A: one per weight leaving each unit; needs a wrapped layer).
        num_features: number of input units for the bare form.
        generator: optional generator for the noise.

    Shape:
        As the wrapped layer; bare form ``(*, num_features)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = VariationalDropout(nn.Linear(4, 2), noise="B", granularity="output", init_p=0.2)
        >>> m.p
        tensor([0.2000, 0.2000])
        >>> m(torch.ones(3, 4)).shape
        torch.Size([3, 2])
        >>> round(m.kl().item(), 4)  # 8 weights at alpha = 0.25
        3.9
    """

    def __init__(
        self,
        layer: nn.Module | None = None,
        *,
        noise: NoiseType = "A",
        granularity: Granularity | None = None,
        init_p: float = 0.5,
        max_alpha: float = 1.0,
        kl: KLApproximation = "kingma",
        kl_terms: KLTerms = "noise",
        num_features: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.noise: NoiseType = check_choice("noise", noise, NOISE_TYPES)  # type: ignore[assignment]
        if self.noise == "B" and layer is None:
            require_lrt_layer(None, "VariationalDropout")
        self.layer_kind, self.units = check_layer(layer, num_features)
        if self.noise == "B":
            require_lrt_layer(layer, "VariationalDropout")
        choices = GRANULARITIES[self.noise]
        self.granularity = check_choice(
            "granularity", choices[0] if granularity is None else granularity, choices
        )
        self.kl_approximation: KLApproximation = check_choice("kl", kl, KL_APPROXIMATIONS)  # type: ignore[assignment]
        self.kl_terms: KLTerms = check_choice("kl_terms", kl_terms, KL_TERMS)  # type: ignore[assignment]
        if self.kl_terms == "weight" and layer is None:
            raise ValueError(
                "kl_terms='weight' counts the weights leaving each unit and needs a wrapped "
                "layer; the bare form has none (use kl_terms='noise')"
            )
        max_alpha = check_positive("max_alpha", max_alpha)
        if max_alpha > math.exp(KL_LOG_ALPHA_MAX):
            raise ValueError(
                f"max_alpha must be in (0, e^{KL_LOG_ALPHA_MAX:g}], but got {max_alpha}"
            )
        if self.kl_approximation == "kingma" and max_alpha > 1.0:
            raise ValueError(
                f"max_alpha must be <= 1 with kl='kingma' (its cubic fit decreases without bound "
                f"above alpha = 1, so every alpha would run to the cap), but got {max_alpha}; "
                "use kl='molchanov' for larger alpha"
            )
        self.max_alpha = max_alpha
        self.max_log_alpha = math.log(max_alpha)
        init_p = check_probability("init_p", init_p)
        init_log_alpha = math.log(init_p) - math.log1p(-init_p)
        if init_log_alpha > self.max_log_alpha + 1e-12:
            raise ValueError(
                f"init_p must be <= max_alpha / (1 + max_alpha) = "
                f"{max_alpha / (1 + max_alpha):g}, but got {init_p}"
            )
        init_log_alpha = max(init_log_alpha, KL_LOG_ALPHA_MIN)
        self.layer = layer
        self.log_alpha = nn.Parameter(torch.full(self._shape(), init_log_alpha))

    def _shape(self) -> tuple[int, ...]:
        if self.granularity == "layer":
            return (1,)
        if self.granularity == "unit":
            return (self.units,)
        weight = self._weight()
        return tuple(weight.shape) if self.granularity == "weight" else (weight.shape[0],)

    def _weight(self) -> Tensor:
        """The weight of a type-B layer."""
        return self.layer.weight  # type: ignore[union-attr, return-value]

    # ----------------------------------------------------------------------------- rates
    def _log_alpha(self) -> Tensor:
        return clamp_log_alpha(self.log_alpha, self.max_log_alpha)

    @property
    def p(self) -> Tensor:
        return torch.sigmoid(self._log_alpha()).detach()

    def extra_repr(self) -> str:
        form = "" if self.layer is not None else f"num_features={self.units}, "
        return (
            f"{form}noise={self.noise!r}, granularity={self.granularity!r}, "
            f"max_alpha={self.max_alpha}"
            + (f", kl={self.kl_approximation!r}" if self.kl_approximation != "kingma" else "")
            + (f", kl_terms={self.kl_terms!r}" if self.kl_terms != "noise" else "")
        )

    # ----------------------------------------------------------------------------- prior
    def weights_per_alpha(self) -> int:
        """How many weights each entry of ``log_alpha`` governs (1 per unit in the bare form)."""
        if self.layer is None:
            per_unit = 1
        elif self.noise == "A":
            per_unit = sum(w.numel() for w in input_weights(self.layer)) // self.units
        else:
            weight = self._weight()
            return {"weight": 1, "output": weight[0].numel(), "layer": weight.numel()}[
                self.granularity
            ]
        return per_unit * (self.units if self.granularity == "layer" else 1)

    def kl_terms_per_alpha(self) -> int:
        """How many KL terms each entry of ``log_alpha`` contributes (:math:`n_k` of the KL).

        ``kl_terms="noise"``: the noise variables sharing it (type A: 1 per unit, ``units`` per
        layer; type B: the weights it governs). ``kl_terms="weight"``: :meth:`weights_per_alpha`.
        """
        if self.noise == "A" and self.kl_terms == "noise":
            return self.units if self.granularity == "layer" else 1
        return self.weights_per_alpha()

    def kl(self) -> Tensor:
        return variational_dropout_kl(
            self._log_alpha(), self.kl_terms_per_alpha(), self.kl_approximation
        )

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Noise on the inputs (A) or weights (B, via the LRT) when sampling, then the layer.

        A wrapped RNN takes its initial state and PackedSequence inputs as it does alone.
        """
        if self.noise == "B" and self.sampling:
            assert self.layer is not None
            self._check_input(x)
            mask_shape(x, self.layer, self.units)  # shape check only
            log_alpha = self._log_alpha()
            weight = self._weight()
            if self.granularity == "output":
                log_alpha = log_alpha.reshape((-1,) + (1,) * (weight.dim() - 1))
            return lrt_sample(
                x,
                weight,
                weight_variance(log_alpha, weight),
                self.layer.bias,  # type: ignore[arg-type]
                generator=self.generator,
                **layer_options(self.layer),
            )
        return self._forward_wrapped(x, args, kwargs)

    def _drop(self, x: Tensor) -> Tensor:
        shape = mask_shape(x, self.layer, self.units)
        alpha = self._log_alpha().exp().to(x.dtype)
        if self.layer_kind == "conv":
            alpha = alpha.reshape((-1,) + (1,) * (len(shape) - 2))
        return gaussian_dropout(x, alpha, noise_shape=shape, generator=self.generator)
