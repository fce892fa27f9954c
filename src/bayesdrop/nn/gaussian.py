"""Gaussian dropout with a fixed rate (Srivastava et al. 2014; Wang & Manning 2013), types A and B."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_probability
from ..functional.gaussian import alpha_from_p, gaussian_dropout
from ..functional.lrt import lrt_conv, lrt_linear, sample_gaussian
from ._base import DropoutModule
from .wrapped_layers import check_layer, mask_shape

__all__ = ["GaussianDropout", "KINDS"]

#: Accepted ``kind`` values: ``"A"`` (noise on the inputs), ``"B"`` (noise on the pre-activations).
KINDS = ("A", "B")


def _check_lrt_layer(layer: nn.Module | None, kind_of_layer: str | None, owner: str) -> None:
    """Type B needs the weights of an ``nn.Linear`` or ``nn.Conv1d/2d/3d``."""
    if kind_of_layer not in ("linear", "conv"):
        got = "no layer" if layer is None else type(layer).__name__
        raise ValueError(
            f"{owner}(kind='B') must wrap an nn.Linear or nn.Conv1d/2d/3d layer, but got {got}"
        )


def _lrt_weight(layer: nn.Module | None) -> Tensor:
    """The weight of a type-B layer (``nn.Linear`` or ``nn.Conv1d/2d/3d``)."""
    assert isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd))
    return layer.weight


def _lrt_forward(
    layer: nn.Module | None, x: Tensor, weight_var: Tensor, generator: torch.Generator | None
) -> Tensor:
    """Sample the outputs of ``layer`` (Linear/ConvNd) with independent weight noise of variance
    ``weight_var`` around the layer's weights, via the local reparameterisation trick."""
    if isinstance(layer, nn.Linear):
        mean, var = lrt_linear(x, layer.weight, weight_var, layer.bias)
        return sample_gaussian(mean, var, generator=generator)
    assert isinstance(layer, nn.modules.conv._ConvNd)
    padding: str | int | tuple[int, ...] = layer.padding
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    mean, var = lrt_conv(
        x,
        layer.weight,
        weight_var,
        layer.bias,
        stride=layer.stride,
        padding=padding,
        dilation=layer.dilation,
        groups=layer.groups,
    )
    return sample_gaussian(mean, var, generator=generator)


class GaussianDropout(DropoutModule):
    r"""Multiplicative Gaussian noise :math:`\mathcal N(1, \alpha)` with a fixed :math:`\alpha = p/(1-p)`.

    ``p`` is a **drop probability**, as in :class:`torch.nn.Dropout`: the noise has the mean (1)
    and variance (:math:`\alpha`) of inverted Bernoulli dropout with that rate, and the read-only
    property :attr:`p` returns :math:`\alpha/(1+\alpha) = p`.

    * ``kind="A"`` multiplies the inputs, :math:`x \odot \xi`, :math:`\xi \sim \mathcal N(1, \alpha)`
      (Srivastava et al. 2014): per feature for the bare form and ``nn.Linear``, per channel for
      ``nn.Conv1d/2d/3d``, per sequence and feature for ``nn.LSTM/GRU/RNN`` (shared over time),
      followed by the wrapped layer.
    * ``kind="B"`` (needs a wrapped ``nn.Linear`` or ``nn.Conv1d/2d/3d``) samples every
      pre-activation from its Gaussian marginal (Wang & Manning 2013; Kingma et al. 2015, eq. 10):

      .. math::
          b \sim \mathcal N\bigl(Wx + c,\; \alpha\,(W^{\odot 2})(x^{\odot 2})\bigr),

      the local reparameterisation of independent weight noise :math:`\mathcal N(W, \alpha W^2)`.

    In eval mode both are the wrapped layer with its mean weights (the identity in the bare
    form). There is no learned parameter and no prior: :meth:`kl` is zero.

    Args:
        layer: the layer whose inputs (A) or weights (B) carry the noise; ``None`` for the bare
            type A form (then noise is drawn for every element of the input).
        p: drop probability in ``[0, 1)``; ``alpha = p / (1 - p)``.
        kind: ``"A"`` or ``"B"``.
        num_features: optional input size of the bare form, checked against the last dimension.
        generator: optional generator for the noise.

    Shape:
        As the wrapped layer; bare form: any shape (``(*, num_features)`` if given).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = GaussianDropout(nn.Linear(4, 2), p=0.2, kind="B")
        >>> m.p
        tensor([0.2000])
        >>> m(torch.ones(3, 4)).shape
        torch.Size([3, 2])
        >>> x = torch.ones(2, 4)
        >>> torch.equal(GaussianDropout(p=0.5).eval()(x), x)
        True
    """

    def __init__(
        self,
        layer: nn.Module | None = None,
        *,
        p: float = 0.5,
        kind: str = "A",
        num_features: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if layer is not None and not isinstance(layer, nn.Module):
            raise TypeError(
                f"layer must be an nn.Module or None, but got {type(layer).__name__} "
                "(the drop probability is the keyword argument p=)"
            )
        self.kind = check_choice("kind", kind, KINDS)
        self._p_value = check_probability("p", p, low_open=False)
        self.alpha = alpha_from_p(self._p_value)
        if layer is None and num_features is None:
            self.layer_kind, self.units = None, None
        else:
            self.layer_kind, self.units = check_layer(layer, num_features)
        if self.kind == "B":
            _check_lrt_layer(layer, self.layer_kind, "GaussianDropout")
        self.layer = layer

    @property
    def p(self) -> Tensor:
        return torch.tensor([self.alpha / (1.0 + self.alpha)])

    def extra_repr(self) -> str:
        form = f"num_features={self.units}, " if self.layer is None and self.units else ""
        return f"{form}p={self._p_value}, kind={self.kind!r}"

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Noise on the inputs (A) or pre-activations (B) when sampling, then the wrapped layer.

        A wrapped RNN takes its initial state and PackedSequence inputs as it does alone.
        """
        if self.kind == "B" and self.sampling and self.alpha != 0.0:
            assert self.units is not None
            mask_shape(x, self.layer, self.units)  # shape check only
            weight = _lrt_weight(self.layer)
            return _lrt_forward(self.layer, x, self.alpha * weight * weight, self.generator)
        return self._forward_wrapped(x, args, kwargs)

    def _drop(self, x: Tensor) -> Tensor:
        if self.alpha == 0.0:
            return x
        shape = tuple(x.shape) if self.units is None else mask_shape(x, self.layer, self.units)
        return gaussian_dropout(x, self.alpha, noise_shape=shape, generator=self.generator)
