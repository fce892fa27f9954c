"""Gaussian dropout with a fixed rate: multiplicative N(1, α) noise, type A (inputs) and B (LRT).

Bernoulli dropout with drop probability :math:`p` and inverted scaling multiplies each input by
:math:`z/(1-p)`, which has mean 1 and variance :math:`\\alpha = p/(1-p)`. Gaussian dropout keeps
those two moments with :math:`\\xi \\sim \\mathcal N(1, \\alpha)` (Srivastava et al. 2014). Two
placements (Kingma, Salimans & Welling 2015, §5):

* type A multiplies the inputs of a layer, :math:`b = W(x \\odot \\xi) + c`;
* type B samples each pre-activation from the Gaussian that Bernoulli dropout tends to
  (Wang & Manning 2013, fast dropout), :math:`b_j \\sim \\mathcal N\\bigl((Wx)_j + c_j,\\;
  \\alpha\\sum_i W_{ji}^2 x_i^2\\bigr)`, i.e. independent weight noise
  :math:`w_{ji} \\sim \\mathcal N(W_{ji}, \\alpha W_{ji}^2)` through the local reparameterisation
  trick. Per pre-activation, A and B have the same mean and variance; A correlates the outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lrt import lrt_conv, lrt_linear, sample_gaussian
from .noise import standard_normal

__all__ = ["alpha_from_p", "gaussian_dropout", "gaussian_dropout_lrt"]


def alpha_from_p(p: float) -> float:
    r"""Noise variance :math:`\alpha = p/(1-p)` matching Bernoulli dropout with drop probability ``p``.

    The inverse is :math:`p = \alpha/(1+\alpha) = \sigma(\log\alpha)`.

    Example:
        >>> alpha_from_p(0.5), alpha_from_p(0.2)
        (1.0, 0.25)
    """
    return p / (1.0 - p)


def gaussian_dropout(
    x: Tensor,
    alpha: float | Tensor,
    *,
    noise_shape: tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
) -> Tensor:
    r"""Type A Gaussian dropout: :math:`x \odot (1 + \sqrt\alpha\,\varepsilon)`, :math:`\varepsilon \sim \mathcal N(0, 1)`.

    Args:
        x: input.
        alpha: noise variance :math:`\alpha \ge 0` (a float, or a tensor broadcastable against
            the noise, e.g. one value per unit); a tensor is differentiated pathwise.
        noise_shape: shape of the noise, broadcastable against ``x`` (e.g. ``(B, C, 1, 1)`` to
            share one draw over a channel); default ``x.shape``.
        generator: optional generator for :math:`\varepsilon`.
        eps: explicit standard normal noise (then ``noise_shape`` and ``generator`` are unused).

    Example:
        >>> import torch
        >>> gaussian_dropout(torch.tensor([2.0, 2.0]), 0.25, eps=torch.tensor([2.0, -2.0])).tolist()
        [4.0, 0.0]
    """
    if eps is None:
        shape = tuple(x.shape) if noise_shape is None else noise_shape
        eps = standard_normal(shape, dtype=x.dtype, device=x.device, generator=generator)
    std = alpha.sqrt() if isinstance(alpha, Tensor) else alpha**0.5
    return x * (1.0 + std * eps)


def gaussian_dropout_lrt(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    alpha: float | Tensor,
    *,
    stride: int | tuple[int, ...] = 1,
    padding: int | str | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
) -> Tensor:
    r"""Type B Gaussian dropout: a draw of the pre-activations of a layer with weights :math:`\mathcal N(W, \alpha W^2)`.

    .. math::
        b \sim \mathcal N\bigl(Wx + c,\; \alpha\,(W^{\odot 2})(x^{\odot 2})\bigr)

    sampled independently per example and output (the local reparameterisation trick; never a
    weight matrix per example). A linear layer when ``weight`` is 2-d, otherwise a 1d/2d/3d
    convolution with the given options.

    Args:
        x: input, ``(*, in_features)`` or ``(batch, in_channels, *spatial)``.
        weight: weights :math:`W` (the means).
        bias: optional bias :math:`c` (deterministic; not in the variance).
        alpha: noise variance, a float or a tensor broadcastable against ``weight`` (one per
            weight, per output unit as ``(out, 1, ...)``, or per layer).
        stride, padding, dilation, groups: convolution options (ignored for a linear layer).
        generator: optional generator for the standard normal draw.
        eps: explicit standard normal noise shaped like the output.

    Example:
        >>> import torch
        >>> w = torch.tensor([[1.0, 2.0]])
        >>> out = gaussian_dropout_lrt(torch.tensor([[3.0, 1.0]]), w, None, 1.0,
        ...                            eps=torch.tensor([[1.0]]))
        >>> round(out.item(), 5)  # 5 + sqrt(9 + 4)
        8.60555
    """
    weight_var = alpha * weight * weight
    if weight.dim() == 2:
        mean, var = lrt_linear(x, weight, weight_var, bias)
    else:
        mean, var = lrt_conv(
            x, weight, weight_var, bias, stride=stride, padding=padding, dilation=dilation,
            groups=groups,
        )  # fmt: skip
    return sample_gaussian(mean, var, generator=generator, eps=eps)
