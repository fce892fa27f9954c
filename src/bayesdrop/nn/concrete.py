r"""Concrete dropout (Gal, Hron & Kendall 2017): relaxed Bernoulli masks, pathwise-learned rates.

Conv layers: the regulariser per input channel
-----------------------------------------------
Spatial Concrete dropout draws one mask value :math:`z_k` per example and input channel :math:`k`
and multiplies the whole channel by it. Writing the convolution as a linear map on image patches,
:math:`z_k` multiplies the block :math:`W_{:,k,\dots}` of all weights that read channel :math:`k`
(every output channel and kernel position), i.e. the variational distribution is
:math:`W = M\,\mathrm{diag}(z)` with *one* Bernoulli variable per block. Gal's quantised-Gaussian
KL then has one weight term and one entropy term per block:

.. math::
    \sum_{k=1}^{C_\text{in}} \lambda_w\,\frac{\|W_{:,k,\dots}\|^2}{1-p_k} - \lambda_d\,H(p_k),

so :math:`K` is the number of input channels (not channels × kernel size, nor × spatial
positions) and :math:`\|W_{\cdot k}\|^2` sums over output channels and kernel positions (with
``groups``, over the output channels of the group that reads channel :math:`k`). The reference
notebooks' spatial layer is stochastic at test time and flags its conv weighting as possibly
wrong; this module is deterministic in eval mode and uses the weighting above.

LSTM/GRU/RNN input dropout: one mask per sequence, shared over time steps; only the
input-to-hidden matrices (``weight_ih_l0`` and its reverse direction) enter the weight term,
since dropping input feature :math:`k` zeroes exactly column :math:`k` of those matrices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_positive, check_probability
from ..functional.bernoulli import LOGIT_BOUND
from ..functional.concrete import concrete_dropout_from_uniforms, layer_regularizer
from ..functional.noise import uniform
from ._base import DropoutModule
from .wrapped_layers import check_layer, input_weights, mask_shape

__all__ = ["ConcreteDropout"]


class ConcreteDropout(DropoutModule):
    r"""Dropout with relaxed Bernoulli masks whose drop probabilities are learned pathwise.

    In training mode (or under MC sampling) it returns ``layer(x ⊙ z̃ / (1 - p))`` with the
    Concrete keep mask (:func:`~bayesdrop.functional.concrete_keep_mask`)

    .. math::
        \tilde z = \sigma\!\bigl(-(\mathrm{logit}\,p + \mathrm{logit}\,u)/t\bigr),\qquad
        u \sim \mathcal U(0, 1),

    one mask value per example and input unit (feature of ``nn.Linear``, whole channel of
    ``nn.Conv1d/2d/3d``, feature of ``nn.LSTM/GRU/RNN`` shared over time). In eval mode it is
    ``layer(x)``: deterministic, the identity on the mask (inverted-dropout scaling), unlike the
    reference implementation, which keeps sampling at test time. The bare form
    (``num_features=``) returns the dropped input and regularises the rates only.

    ``kl()`` is Gal's regulariser (:func:`~bayesdrop.functional.concrete_regularizer`), a
    data-set level sum:

    .. math::
        \mathrm{kl} = \sum_{k=1}^{K} \lambda_w \frac{\|W_{\cdot k}\|^2}{1-p_k} - \lambda_d H(p_k)
        \quad\bigl(= \lambda_w\|W\|^2/(1-p) - \lambda_d K H(p)\ \text{for one rate}\bigr).

    :func:`bayesdrop.objective` divides it by ``n_data``; ``weight_regularizer`` and
    ``dropout_regularizer`` are therefore Gal's per-example ``wd = l²/(τN)`` and
    ``dd = 2/(τN)`` multiplied by :math:`N` (:func:`~bayesdrop.functional.concrete_regularizers`
    gives :math:`l^2/\tau` and :math:`2/\tau`). The defaults (``0.5``, ``1.0``) are the exact
    variational KL for length-scale 1 under a proper negative log likelihood, as for
    :class:`~bayesdrop.nn.LearnableBernoulliDropout`. Only the input weights are regularised
    (not the bias), as in the reference implementation.

    Args:
        layer: ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.LSTM/GRU/RNN`` whose inputs are dropped,
            or ``None`` for the bare form.
        num_features: number of input units of the bare form (last dimension of the input).
        init_p: initial drop probability, in (0, 1).
        temperature: relaxation temperature :math:`t > 0`.
        granularity: ``"layer"`` (one rate shared by the layer's inputs, as in the paper) or
            ``"unit"`` (one rate per input feature/channel).
        weight_regularizer: :math:`\lambda_w \ge 0` (data-set level).
        dropout_regularizer: :math:`\lambda_d \ge 0` (data-set level).
        generator: optional generator for the uniforms.

    Shape:
        As the wrapped layer; bare form ``(*, num_features)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = ConcreteDropout(nn.Linear(4, 2), init_p=0.25)
        >>> m.p
        tensor([0.2500])
        >>> m.eval()(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
        >>> from bayesdrop.functional import concrete_regularizers
        >>> regs = concrete_regularizers(length_scale=1e-2, precision=1.0)  # Gal's wd·N, dd·N
        >>> m = ConcreteDropout(nn.Linear(4, 2), **regs._asdict())
        >>> m.weight_regularizer, m.dropout_regularizer
        (0.0001, 2.0)

        Train with ``bayesdrop.objective(model, x, y, nll, n_data=N)``: it divides ``kl()`` by
        ``N`` once, giving Gal's per-example loss.
    """

    def __init__(
        self,
        layer: nn.Module | None = None,
        *,
        num_features: int | None = None,
        init_p: float = 0.1,
        temperature: float = 0.1,
        granularity: str = "layer",
        weight_regularizer: float = 0.5,
        dropout_regularizer: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.layer_kind, self.units = check_layer(layer, num_features)
        self.layer = layer
        init_p = check_probability("init_p", init_p)
        self.temperature = check_positive("temperature", temperature)
        self.granularity = check_choice("granularity", granularity, ("layer", "unit"))
        self.weight_regularizer = check_positive(
            "weight_regularizer", weight_regularizer, allow_zero=True
        )
        self.dropout_regularizer = check_positive(
            "dropout_regularizer", dropout_regularizer, allow_zero=True
        )
        n = self.units if self.granularity == "unit" else 1
        logit = torch.logit(torch.tensor(init_p, dtype=torch.float64))
        self.logit_p = nn.Parameter(torch.full((n,), float(logit)))

    @property
    def p(self) -> Tensor:
        return torch.sigmoid(self.logit_p.clamp(-LOGIT_BOUND, LOGIT_BOUND)).detach()

    def extra_repr(self) -> str:
        form = "" if self.layer is not None else f"num_features={self.units}, "
        return (
            f"{form}granularity={self.granularity!r}, temperature={self.temperature}, "
            f"weight_regularizer={self.weight_regularizer}, "
            f"dropout_regularizer={self.dropout_regularizer}"
        )

    def kl(self) -> Tensor:
        weights = input_weights(self.layer) if self.layer is not None else []
        groups = int(getattr(self.layer, "groups", 1)) if self.layer_kind == "conv" else 1
        return layer_regularizer(
            self.logit_p,
            weights,
            groups,
            self.weight_regularizer,
            self.dropout_regularizer,
            self.units,
        )

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Drop the inputs ``x`` (when sampling), then call the wrapped layer with ``*args``.

        A wrapped RNN takes its initial state and :class:`~torch.nn.utils.rnn.PackedSequence`
        inputs as it does alone.
        """
        return self._forward_wrapped(x, args, kwargs)

    def _drop(self, x: Tensor) -> Tensor:
        shape = mask_shape(x, self.layer, self.units)
        logit_p = self.logit_p.to(x.dtype)
        if self.layer_kind == "conv" and self.granularity == "unit":
            logit_p = logit_p.reshape((-1,) + (1,) * (len(shape) - 2))
        u = uniform(shape, dtype=x.dtype, device=x.device, generator=self.generator)
        return concrete_dropout_from_uniforms(x, logit_p, self.temperature, u, overwrite_u=True)
