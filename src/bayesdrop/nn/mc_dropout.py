"""MC dropout (Gal & Ghahramani, 2016): fixed-rate Bernoulli dropout that stays on for MC prediction."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_bool, check_probability
from ..functional.noise import uniform
from ._base import DropoutModule

__all__ = ["MCDropout"]


class MCDropout(DropoutModule):
    r"""Inverted Bernoulli dropout with a fixed drop probability ``p``.

    .. math::
        y = x \odot z / (1 - p), \qquad z \sim \mathrm{Ber}(1 - p)

    Unlike :class:`torch.nn.Dropout` it keeps sampling under MC prediction
    (:func:`bayesdrop.mc_predict` or :func:`bayesdrop.mc_sampling`) while every other
    module is in eval mode. In plain eval mode it is the identity. It has no parameters and no KL
    (Gal's weight-decay reading of the prior is left to the optimiser).

    Args:
        p: drop probability in [0, 1).
        channelwise: drop whole channels (dimension 1 of a ``(N, C, *)`` input) instead of
            single elements.
        generator: optional generator for the masks.

    Shape:
        Input ``(*)``; output the same shape.

    Example:
        >>> import torch
        >>> m = MCDropout(0.5).eval()
        >>> bool((m(torch.ones(3)) == 1).all())
        True
    """

    def __init__(
        self, p: float = 0.5, *, channelwise: bool = False, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(generator)
        self._p = check_probability("p", p, low_open=False)
        self.channelwise = check_bool("channelwise", channelwise)

    @property
    def p(self) -> Tensor:
        return torch.tensor([self._p])

    def extra_repr(self) -> str:
        return f"p={self._p}" + (", channelwise=True" if self.channelwise else "")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.sampling or self._p == 0.0:
            return x
        if self.channelwise:
            if x.dim() < 2:
                raise ValueError(f"channelwise dropout needs (N, C, *) input, got {tuple(x.shape)}")
            shape = tuple(x.shape[:2]) + (1,) * (x.dim() - 2)
        else:
            shape = tuple(x.shape)
        u = uniform(shape, dtype=x.dtype, device=x.device, generator=self.generator)
        return x * ((u >= self._p).to(x.dtype) / (1.0 - self._p))
