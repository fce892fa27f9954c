"""The local reparameterisation trick (LRT): Gaussian pre-activations instead of sampled weights.

With independent weight noise :math:`w_{ji} \\sim \\mathcal N(\\mu_{ji}, \\sigma^2_{ji})`, the
pre-activation :math:`b_j = \\sum_i x_i w_{ji} + c_j` of one example is exactly Gaussian, with
mean :math:`\\sum_i x_i\\mu_{ji} + c_j` and variance :math:`\\sum_i x_i^2\\sigma^2_{ji}`
(Kingma, Salimans & Welling 2015, §2.3). Sampling ``b`` directly costs two ordinary layer
evaluations instead of one weight matrix per example, and its gradient has lower variance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .noise import standard_normal

__all__ = [
    "VAR_FLOOR",
    "LRT_LAYERS",
    "lrt_linear",
    "lrt_conv",
    "lrt_moments",
    "lrt_sample",
    "layer_options",
    "sample_gaussian",
]

#: The layers whose pre-activations the local reparameterisation trick samples.
LRT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: :func:`.sample_gaussian` takes the square root of ``max(var, VAR_FLOOR)``: the added standard
#: deviation is at most ``1e-8`` (far below float32 resolution of any O(1) activation), and the
#: derivative ``1 / (2 sqrt(var))`` stays below ``5e7`` instead of becoming ``inf`` at ``var = 0``
#: (where the gradient is exactly zero).
VAR_FLOOR = 1e-16

_CONVS: dict[int, Callable[..., Tensor]] = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def lrt_linear(
    x: Tensor, weight: Tensor, weight_var: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Mean and variance of the pre-activations of a linear layer with independent weight noise.

    For :math:`w_{ji} \sim \mathcal N(\mu_{ji}, \sigma^2_{ji})` independent and a deterministic
    bias :math:`c`,

    .. math::
        \mathbb E[b] = x\mu^\top + c,\qquad \mathrm{Var}[b] = x^{\odot 2}(\sigma^2)^\top .

    The bias never enters the variance.

    Args:
        x: input, shape ``(*, in_features)``.
        weight: weight means :math:`\mu`, shape ``(out_features, in_features)``.
        weight_var: weight variances :math:`\sigma^2` (not standard deviations), same shape as
            ``weight`` or broadcastable to it.
        bias: optional bias, shape ``(out_features,)``.

    Returns:
        ``(mean, var)``, each of shape ``(*, out_features)``.

    Example:
        >>> import torch
        >>> m, v = lrt_linear(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 1.0]]),
        ...                   torch.tensor([[0.5, 0.25]]), torch.tensor([3.0]))
        >>> m.tolist(), v.tolist()
        ([[6.0]], [[1.5]])
    """
    if x.dim() == 0 or x.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"x must have shape (*, {weight.shape[-1]}) to match weight {tuple(weight.shape)}, "
            f"but got {tuple(x.shape)}"
        )
    mean = F.linear(x, weight, bias)
    var = F.linear(x * x, weight_var.expand_as(weight))
    return mean, var


def lrt_conv(
    x: Tensor,
    weight: Tensor,
    weight_var: Tensor,
    bias: Tensor | None = None,
    *,
    stride: int | tuple[int, ...] = 1,
    padding: int | str | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> tuple[Tensor, Tensor]:
    r"""Mean and variance of the outputs of a convolution with independent weight noise.

    Every output position is a linear function of one input patch, so, as in
    :func:`lrt_linear`,

    .. math::
        \mathbb E[b] = \mathrm{conv}(x, \mu) + c,\qquad
        \mathrm{Var}[b] = \mathrm{conv}(x^{\odot 2}, \sigma^2).

    The marginal of each output position is exact; the covariance between positions sharing
    weights is not represented (each position is then sampled independently, as in the paper).
    The dimension (1d/2d/3d) is chosen from ``x.dim()`` (3, 4 or 5: batched input only).

    Args:
        x: input, shape ``(batch, in_channels, *spatial)``.
        weight: weight means, shape ``(out_channels, in_channels / groups, *kernel)``.
        weight_var: weight variances, same shape as ``weight`` or broadcastable to it.
        bias: optional bias, shape ``(out_channels,)``.
        stride, padding, dilation, groups: as in :func:`torch.nn.functional.conv2d`.
        padding_mode: ``"zeros"`` or a mode of :func:`torch.nn.functional.pad` (``"reflect"``,
            ``"replicate"``, ``"circular"``), applied as ``nn.Conv2d`` applies it.

    Returns:
        ``(mean, var)``, each of shape ``(batch, out_channels, *out_spatial)``.
    """
    conv = _CONVS.get(x.dim())
    if conv is None:
        raise ValueError(
            f"x must be a batched 1d/2d/3d input with 3, 4 or 5 dims, but got shape {tuple(x.shape)}"
        )
    if weight.dim() != x.dim():
        raise ValueError(
            f"weight must have {x.dim()} dims for a {x.dim() - 2}d convolution, "
            f"but got shape {tuple(weight.shape)}"
        )
    if padding_mode != "zeros":
        # As nn.ConvNd does: pad explicitly with the mode, then convolve without padding.
        pad = _explicit_padding(padding, tuple(weight.shape[2:]), dilation)
        x = F.pad(x, pad, mode=padding_mode)
        padding = 0
    opts = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    mean = conv(x, weight, bias, **opts)
    var = conv(x * x, weight_var.expand_as(weight), None, **opts)
    return mean, var


def _explicit_padding(
    padding: int | str | tuple[int, ...], kernel: tuple[int, ...], dilation: int | tuple[int, ...]
) -> list[int]:
    """``F.pad`` amounts (last dimension first) equivalent to a convolution's ``padding``."""
    d = len(kernel)
    dil = (dilation,) * d if isinstance(dilation, int) else tuple(dilation)
    pairs: list[tuple[int, int]]
    if padding == "valid":
        pairs = [(0, 0)] * d
    elif padding == "same":
        total = [di * (k - 1) for di, k in zip(dil, kernel)]
        pairs = [(t // 2, t - t // 2) for t in total]
    else:
        amounts: tuple[int, ...] = (padding,) * d if isinstance(padding, int) else tuple(padding)  # type: ignore[arg-type]
        pairs = [(a, a) for a in amounts]
    return [a for pair in reversed(pairs) for a in pair]


def layer_options(layer: nn.Module) -> dict[str, Any]:
    """The keyword arguments of :func:`lrt_moments` that describe ``layer`` besides its weights.

    ``{}`` for ``nn.Linear``; ``stride``, ``padding``, ``dilation``, ``groups`` and
    ``padding_mode`` for ``nn.Conv1d/2d/3d``.

    Example:
        >>> from torch import nn
        >>> layer_options(nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect"))
        {'stride': (1,), 'padding': (1,), 'dilation': (1,), 'groups': 1, 'padding_mode': 'reflect'}
    """
    if isinstance(layer, nn.Linear):
        return {}
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return {
            "stride": layer.stride,
            "padding": layer.padding,
            "dilation": layer.dilation,
            "groups": layer.groups,
            "padding_mode": layer.padding_mode,
        }
    raise TypeError(
        f"layer must be an nn.Linear or nn.Conv1d/Conv2d/Conv3d, but got {type(layer).__name__}"
    )


def lrt_moments(
    x: Tensor,
    weight: Tensor,
    weight_var: Tensor,
    bias: Tensor | None = None,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """:func:`lrt_linear` for a 2-d ``weight``, otherwise :func:`lrt_conv` with ``options``.

    ``options`` are those of :func:`layer_options` (empty for a linear layer).
    """
    if weight.dim() == 2:
        if options:
            raise TypeError(f"a linear layer takes no options, but got {sorted(options)}")
        return lrt_linear(x, weight, weight_var, bias)
    return lrt_conv(x, weight, weight_var, bias, **options)


def lrt_sample(
    x: Tensor,
    weight: Tensor,
    weight_var: Tensor,
    bias: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
    **options: Any,
) -> Tensor:
    r"""One draw of the pre-activations of a layer with independent weight noise.

    .. math::
        b = \mathbb E[b] + \sqrt{\mathrm{Var}[b]}\,\varepsilon,\qquad
        \varepsilon \sim \mathcal N(0, 1)\ \text{per example and output},

    with the moments of :func:`lrt_moments` (:func:`.sample_gaussian` draws it).

    Args:
        x: layer input.
        weight: weight means; 2-d for a linear layer, 3/4/5-d for a convolution.
        weight_var: weight variances, broadcastable against ``weight``.
        bias: optional deterministic bias.
        generator: optional generator for :math:`\varepsilon`.
        eps: explicit standard normal noise shaped like the output.
        **options: convolution options (:func:`layer_options`).

    Example:
        >>> import torch
        >>> lrt_sample(torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 2.0]]),
        ...            torch.tensor([[1.0, 7.0]]), eps=torch.tensor([[1.0]])).tolist()  # 5 + sqrt(16)
        [[9.0]]
    """
    mean, var = lrt_moments(x, weight, weight_var, bias, **options)
    return sample_gaussian(mean, var, generator=generator, eps=eps)


def sample_gaussian(
    mean: Tensor,
    var: Tensor,
    *,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
) -> Tensor:
    r"""Reparameterised draw :math:`\mu + \sqrt{\max(\sigma^2, 10^{-16})}\,\varepsilon`.

    :math:`\varepsilon \sim \mathcal N(0, 1)` has the shape of ``mean`` unless given. The floor
    :data:`.VAR_FLOOR` keeps the gradient finite where the variance is zero (e.g. all inputs zero,
    or all weight means zero); below it the gradient with respect to ``var`` is exactly zero.

    Args:
        mean: means.
        var: variances (not standard deviations), broadcastable against ``mean``; must be >= 0.
        generator: optional generator for :math:`\varepsilon`.
        eps: explicit standard normal noise, broadcastable against ``mean`` (then ``generator``
            is unused).

    Example:
        >>> import torch
        >>> sample_gaussian(torch.tensor([1.0, 2.0]), torch.tensor([4.0, 0.0]),
        ...                 eps=torch.tensor([0.5, 3.0])).tolist()
        [2.0, 2.0]
    """
    if eps is None:
        eps = standard_normal(
            torch.broadcast_shapes(mean.shape, var.shape),
            dtype=mean.dtype,
            device=mean.device,
            generator=generator,
        )
    return mean + var.clamp_min(VAR_FLOOR).sqrt() * eps
