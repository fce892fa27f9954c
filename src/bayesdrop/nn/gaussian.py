"""Gaussian dropout with a fixed rate (Srivastava et al. 2014; Wang & Manning 2013), types A and B."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_probability
from ..functional.gaussian import alpha_from_p, gaussian_dropout
from ..functional.lrt import LRT_LAYERS, layer_options, lrt_sample
from ._base import DropoutModule
from .wrapped_layers import check_layer, mask_shape

__all__ = ["GaussianDropout", "NOISE_TYPES", "NoiseType"]

#: Where the Gaussian noise enters: ``"A"`` on the inputs, ``"B"`` on the weights (sampled
#: through the pre-activations).
NoiseType = Literal["A", "B"]
#: Accepted ``noise`` values: ``"A"`` (noise on the inputs), ``"B"`` (independent weight noise).
NOISE_TYPES: tuple[NoiseType, ...] = ("A", "B")


def require_lrt_layer(layer: nn.Module | None, owner: str) -> nn.Module:
    """Type B needs the weights of an ``nn.Linear`` or ``nn.Conv1d/2d/3d``."""
    if not isinstance(layer, LRT_LAYERS):
        got = "no layer" if layer is None else type(layer).__name__
        raise ValueError(
            f"{owner}(noise='B') must wrap an nn.Linear or nn.Conv1d/2d/3d layer, but got {got}"
        )
    return layer


class GaussianDropout(DropoutModule):
    r"""Multiplicative Gaussian noise :math:`\mathcal N(1, \alpha)` with a fixed :math:`\alpha = p/(1-p)`.

    ``p`` is a **drop probability**, as in :class:`torch.nn.Dropout`: the noise has the mean (1)
    and variance (:math:`\alpha`) of inverted Bernoulli dropout with that rate, and the read-only
    property :attr:`p` returns :math:`\alpha/(1+\alpha) = p`.

    * ``noise="A"`` multiplies the inputs, :math:`x \odot \xi`, :math:`\xi \sim \mathcal N(1, \alpha)`
      (Srivastava et al. 2014): per feature for the bare form and ``nn.Linear``, per channel for
      ``nn.Conv1d/2d/3d``, per sequence and feature for ``nn.LSTM/GRU/RNN`` (shared over time),
      followed by the wrapped layer.
    * ``noise="B"`` (needs a wrapped ``nn.Linear`` or ``nn.Conv1d/2d/3d``) samples every
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
        noise: ``"A"`` (default) or ``"B"``.
        num_features: optional input size of the bare form, checked against the last dimension.
        generator: optional generator for the noise.

    Shape:
        As the wrapped layer; bare form: any shape (``(*, num_features)`` if given).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = GaussianDropout(nn.Linear(4, 2), p=0.2, noise="B")
        >>> m.p
        tensor([0.2000])
        >>> m(torch.ones(3, 4)).shape
        torch.Size([3, 2])
        >>> x = torch.ones(2, 4)
        >>> torch.equal(GaussianDropout(p=0.5).eval()(x), x)
        True
    """

    _p: Tensor

    def __init__(
        self,
        layer: nn.Module | None = None,
        *,
        p: float = 0.5,
        noise: NoiseType = "A",
        num_features: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if layer is not None and not isinstance(layer, nn.Module):
            raise TypeError(
                f"layer must be an nn.Module or None, but got {type(layer).__name__} "
                "(the drop probability is the keyword argument p=)"
            )
        self.noise: NoiseType = check_choice("noise", noise, NOISE_TYPES)  # type: ignore[assignment]
        self._p_value = check_probability("p", p, low_open=False)
        self.alpha = alpha_from_p(self._p_value)
        if layer is None and num_features is None:
            self.layer_kind, self.units = None, None
        else:
            self.layer_kind, self.units = check_layer(layer, num_features)
        if self.noise == "B":
            require_lrt_layer(layer, "GaussianDropout")
        self.layer = layer
        # A buffer (not saved in state_dict) so that p follows the module's device and dtype.
        self.register_buffer(
            "_p", torch.tensor([self.alpha / (1.0 + self.alpha)]), persistent=False
        )

    @property
    def p(self) -> Tensor:
        return self._p.clone()

    def extra_repr(self) -> str:
        form = f"num_features={self.units}, " if self.layer is None and self.units else ""
        return f"{form}p={self._p_value}, noise={self.noise!r}"

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Noise on the inputs (A) or pre-activations (B) when sampling, then the wrapped layer.

        A wrapped RNN takes its initial state and PackedSequence inputs as it does alone.
        """
        if self.noise == "B" and self.sampling and self.alpha != 0.0:
            assert self.units is not None and self.layer is not None
            self._check_input(x)
            mask_shape(x, self.layer, self.units)  # shape check only
            weight: Tensor = self.layer.weight  # type: ignore[assignment]
            return lrt_sample(
                x,
                weight,
                self.alpha * weight * weight,
                self.layer.bias,  # type: ignore[arg-type]
                generator=self.generator,
                **layer_options(self.layer),
            )
        return self._forward_wrapped(x, args, kwargs)

    def _drop(self, x: Tensor) -> Tensor:
        if self.alpha == 0.0:
            return x
        shape = tuple(x.shape) if self.units is None else mask_shape(x, self.layer, self.units)
        return gaussian_dropout(x, self.alpha, noise_shape=shape, generator=self.generator)
