"""Variational dropout (Kingma, Salimans & Welling 2015): Gaussian dropout with learned α."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_positive, check_probability
from ..functional.gaussian import gaussian_dropout
from ..functional.kl import LOG_ALPHA_MAX, LOG_ALPHA_MIN
from ..functional.variational import clamp_log_alpha, variational_dropout_kl, weight_variance
from ._base import DropoutModule
from .gaussian import KINDS, _check_lrt_layer, _lrt_forward, _lrt_weight
from .wrapped_layers import check_layer, input_weights, mask_shape

__all__ = ["VariationalDropout", "GRANULARITIES"]

#: Accepted ``granularity`` values per ``kind`` (the first is the default).
GRANULARITIES = {"A": ("unit", "layer"), "B": ("weight", "output", "layer")}


class VariationalDropout(DropoutModule):
    r"""Gaussian dropout whose noise variances :math:`\alpha` are learned variationally.

    The posterior is a dropout posterior :math:`w = \theta\,\xi` with multiplicative Gaussian
    noise, the prior is the log-uniform :math:`p(\log|w|) \propto 1`, and :math:`\log\alpha` is
    learned by the pathwise gradient of the ELBO (Kingma, Salimans & Welling 2015, §3).

    * ``kind="A"`` (correlated weight noise, §3.2): one :math:`\alpha_i` per input unit (or one
      per layer), noise :math:`\xi_i \sim \mathcal N(1, \alpha_i)` on the inputs, i.e.
      :math:`w_{ji} = \xi_i\theta_{ji}`. Per feature for the bare form and ``nn.Linear``, per
      channel for ``nn.Conv1d/2d/3d``, per sequence and feature for ``nn.LSTM/GRU/RNN``.
    * ``kind="B"`` (independent weight noise, §3.1): :math:`q(w_{ji}) = \mathcal
      N(\theta_{ji}, \alpha_{ji}\theta_{ji}^2)` with :math:`\alpha` per weight, per output unit
      or per layer, for ``nn.Linear`` and ``nn.Conv1d/2d/3d``, sampled through the local
      reparameterisation trick: :math:`b \sim \mathcal N(\theta x + c, (\alpha\theta^2)x^2)`.

    The KL is the paper's cubic approximation summed over the weights
    (:func:`~bayesdrop.functional.variational_dropout_kl`): each :math:`\alpha` counts once per
    weight it governs; for type A that is the fan-out of the input unit (the bare form, which
    knows no weights, counts each unit once), so A and B are on the same scale:

    .. math::
        \mathrm{KL} = -\sum_k n_k\bigl(\tfrac12\log\alpha_k + c_1\alpha_k + c_2\alpha_k^2
            + c_3\alpha_k^3\bigr) + \text{const}.

    The additive constant is dropped (so ``kl()`` may be negative; gradients are unaffected).
    :math:`\log\alpha` is clamped to ``[-20, log(max_alpha)]`` in every computation, with a
    gradient that can bring it back from outside (:func:`~bayesdrop.functional.clamp_log_alpha`);
    the paper recommends :math:`\alpha \le 1` (``max_alpha=1``, i.e. :math:`p \le 0.5`) since larger
    values are poor local optima with high-variance gradients. :attr:`p` is
    :math:`\alpha/(1+\alpha)`. Eval mode uses the mean weights :math:`\theta` (the wrapped layer
    as it is; the identity in the bare form).

    Args:
        layer: the wrapped layer, or ``None`` for the bare type A form.
        kind: ``"A"`` or ``"B"``.
        granularity: type A ``"unit"`` (default) or ``"layer"``; type B ``"weight"`` (default),
            ``"output"`` or ``"layer"``.
        init_p: initial drop probability, :math:`\alpha_0 = p/(1-p) \le` ``max_alpha``.
        max_alpha: upper bound on :math:`\alpha`, in ``(0, e^{20}]``.
        num_features: number of input units for the bare form.
        generator: optional generator for the noise.

    Shape:
        As the wrapped layer; bare form ``(*, num_features)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = VariationalDropout(nn.Linear(4, 2), kind="B", granularity="output", init_p=0.2)
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
        kind: str = "A",
        granularity: str | None = None,
        init_p: float = 0.5,
        max_alpha: float = 1.0,
        num_features: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.kind = check_choice("kind", kind, KINDS)
        if self.kind == "B" and layer is None:
            _check_lrt_layer(None, None, "VariationalDropout")
        self.layer_kind, self.units = check_layer(layer, num_features)
        if self.kind == "B":
            _check_lrt_layer(layer, self.layer_kind, "VariationalDropout")
        choices = GRANULARITIES[self.kind]
        self.granularity = check_choice(
            "granularity", choices[0] if granularity is None else granularity, choices
        )
        max_alpha = check_positive("max_alpha", max_alpha)
        if max_alpha > math.exp(LOG_ALPHA_MAX):
            raise ValueError(f"max_alpha must be in (0, e^{LOG_ALPHA_MAX:g}], but got {max_alpha}")
        self.max_alpha = max_alpha
        self.max_log_alpha = math.log(max_alpha)
        init_p = check_probability("init_p", init_p)
        init_log_alpha = math.log(init_p) - math.log1p(-init_p)
        if init_log_alpha > self.max_log_alpha + 1e-12:
            raise ValueError(
                f"init_p must be <= max_alpha / (1 + max_alpha) = "
                f"{max_alpha / (1 + max_alpha):g}, but got {init_p}"
            )
        init_log_alpha = max(init_log_alpha, LOG_ALPHA_MIN)
        self.layer = layer
        self.log_alpha = nn.Parameter(torch.full(self._shape(), init_log_alpha))

    def _shape(self) -> tuple[int, ...]:
        if self.granularity == "layer":
            return (1,)
        if self.granularity == "unit":
            return (self.units,)
        weight = _lrt_weight(self.layer)
        return tuple(weight.shape) if self.granularity == "weight" else (weight.shape[0],)

    # ----------------------------------------------------------------------------- rates
    def _log_alpha(self) -> Tensor:
        return clamp_log_alpha(self.log_alpha, self.max_log_alpha)

    @property
    def p(self) -> Tensor:
        return torch.sigmoid(self._log_alpha()).detach()

    def extra_repr(self) -> str:
        form = "" if self.layer is not None else f"num_features={self.units}, "
        return (
            f"{form}kind={self.kind!r}, granularity={self.granularity!r}, "
            f"max_alpha={self.max_alpha}"
        )

    # ----------------------------------------------------------------------------- prior
    def weights_per_alpha(self) -> int:
        """How many weights each entry of ``log_alpha`` governs (its multiplicity in the KL)."""
        if self.layer is None:
            per_unit = 1
        elif self.kind == "A":
            per_unit = sum(w.numel() for w in input_weights(self.layer)) // self.units
        else:
            weight = _lrt_weight(self.layer)
            return {"weight": 1, "output": weight[0].numel(), "layer": weight.numel()}[
                self.granularity
            ]
        return per_unit * (self.units if self.granularity == "layer" else 1)

    def kl(self) -> Tensor:
        return variational_dropout_kl(self._log_alpha(), self.weights_per_alpha())

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Noise on the inputs (A) or weights (B, via the LRT) when sampling, then the layer.

        A wrapped RNN takes its initial state and PackedSequence inputs as it does alone.
        """
        if self.kind == "B" and self.sampling:
            mask_shape(x, self.layer, self.units)  # shape check only
            log_alpha = self._log_alpha()
            weight = _lrt_weight(self.layer)
            if self.granularity == "output":
                log_alpha = log_alpha.reshape((-1,) + (1,) * (weight.dim() - 1))
            weight_var = weight_variance(log_alpha, weight)
            return _lrt_forward(self.layer, x, weight_var, self.generator)
        return self._forward_wrapped(x, args, kwargs)

    def _drop(self, x: Tensor) -> Tensor:
        shape = mask_shape(x, self.layer, self.units)
        alpha = self._log_alpha().exp().to(x.dtype)
        if self.layer_kind == "conv":
            alpha = alpha.reshape((-1,) + (1,) * (len(shape) - 2))
        return gaussian_dropout(x, alpha, noise_shape=shape, generator=self.generator)
