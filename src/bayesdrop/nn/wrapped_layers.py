"""What the wrapper form needs to know about the layer whose inputs it drops.

Every wrapper family (``ConcreteDropout(nn.Linear(...))`` etc.) drops the *inputs* of one layer:
the input features of ``nn.Linear``, whole input channels of ``nn.Conv1d/2d/3d`` and the input
features of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (one mask per sequence, shared over time steps, as in
Gal & Ghahramani's variational RNN dropout). These helpers give, for each supported layer, the
number of droppable units, the per-example mask shape for a given input, the batch dimension, and
the squared norm of the weights fed by each input unit (what Gal's prior regularises).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = [
    "SUPPORTED_LAYERS",
    "layer_kind",
    "num_input_units",
    "mask_shape",
    "batch_dim",
    "input_weights",
    "input_weight_sq_norms",
    "check_layer",
    "drop_packed",
    "check_not_lazy",
]

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.LSTM,
    nn.GRU,
    nn.RNN,
)


def layer_kind(layer: nn.Module) -> str:
    """``"linear"``, ``"conv"`` or ``"rnn"``; raises ``TypeError`` for anything else."""
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(layer, (nn.LSTM, nn.GRU, nn.RNN)):
        return "rnn"
    names = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
    raise TypeError(f"layer must be one of nn.{{{names}}}, but got {type(layer).__name__}")


def check_layer(layer: nn.Module | None, num_features: int | None) -> tuple[str | None, int]:
    """Validate the wrapper/bare arguments and return ``(kind, units)``.

    Exactly one of ``layer`` (wrapper form) and ``num_features`` (bare form) may be given; in the
    wrapper form ``num_features`` may also be given if it equals the layer's input size.
    """
    if layer is None:
        if num_features is None:
            raise ValueError("give either a layer to wrap or num_features for the bare form")
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int, but got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, but got {num_features}")
        return None, num_features
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be an nn.Module, but got {type(layer).__name__}")
    check_not_lazy(layer)
    kind = layer_kind(layer)
    units = num_input_units(layer)
    if num_features is not None and num_features != units:
        raise ValueError(
            f"num_features={num_features} does not match the wrapped layer's input size {units}"
        )
    return kind, units


def num_input_units(layer: nn.Module) -> int:
    """Number of droppable input units (features or channels) of ``layer``."""
    if isinstance(layer, nn.Linear):
        return int(layer.in_features)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return int(layer.in_channels)
    if isinstance(layer, nn.RNNBase):
        return int(layer.input_size)
    layer_kind(layer)  # raises the TypeError naming the supported layers
    raise AssertionError("unreachable")


def batch_dim(layer: nn.Module | None) -> int:
    """Index of the batch dimension of the layer's input (1 only for sequence-first RNNs)."""
    if isinstance(layer, nn.RNNBase) and not layer.batch_first:
        return 1
    return 0


def mask_shape(
    x: Tensor, layer: nn.Module | None, units: int, name: str = "input"
) -> tuple[int, ...]:
    """Shape of one mask value per example and unit, broadcastable against ``x``.

    * bare form and ``nn.Linear``: ``x.shape`` (every position of ``(*, units)`` is its own unit
      instance);
    * ConvNd: ``(B, C, 1, ..., 1)`` (whole channels);
    * RNN: ``(B, 1, F)`` if ``batch_first`` else ``(1, B, F)`` (one mask per sequence).
    """
    if layer is not None:
        layer_kind(layer)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        spatial = len(layer.kernel_size)
        if x.dim() != spatial + 2:
            raise ValueError(
                f"{name} must have shape (batch, {units}, *{spatial} spatial dims), "
                f"but got {tuple(x.shape)}"
            )
        if x.shape[1] != units:
            raise ValueError(f"{name} has {x.shape[1]} channels, expected {units}")
        return (x.shape[0], units) + (1,) * spatial
    if x.dim() == 0 or x.shape[-1] != units:
        raise ValueError(f"{name} must have shape (*, {units}), but got {tuple(x.shape)}")
    if isinstance(layer, nn.RNNBase):
        if x.dim() != 3:
            raise ValueError(
                f"{name} of a wrapped RNN must be a batched (3-d) tensor, got {tuple(x.shape)}"
            )
        if layer.batch_first:
            return (x.shape[0], 1, units)
        return (1, x.shape[1], units)
    return tuple(x.shape)


def input_weights(layer: nn.Module) -> list[Tensor]:
    """The weight tensors fed by the layer's inputs (for RNNs: only input-to-hidden matrices)."""
    layer_kind(layer)
    if isinstance(layer, nn.RNNBase):
        names = ["weight_ih_l0"] + (["weight_ih_l0_reverse"] if layer.bidirectional else [])
        return [getattr(layer, n) for n in names]
    weight = layer.weight
    assert isinstance(weight, Tensor)
    return [weight]


def input_weight_sq_norms(layer: nn.Module) -> Tensor:
    """Squared L2 norm of the weights leaving each input unit, shape ``(units,)``.

    ``nn.Linear``: ``||W[:, k]||²``. ConvNd (weight ``(out, in/groups, *k)``): the sum over the
    output channels and kernel positions that read input channel ``k``. RNN: the columns of
    ``weight_ih_l0`` (and its reverse direction), i.e. only input-to-hidden weights.
    """
    layer_kind(layer)
    if isinstance(layer, nn.Linear):
        return layer.weight.pow(2).sum(0)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        w = layer.weight
        g = layer.groups
        out_c, in_per_group = w.shape[0], w.shape[1]
        w = w.reshape(g, out_c // g, in_per_group, -1)
        return w.pow(2).sum(dim=(1, 3)).reshape(-1)
    total = None
    for w in input_weights(layer):
        s = w.pow(2).sum(0)
        total = s if total is None else total + s
    assert total is not None
    return total


def check_not_lazy(layer: nn.Module) -> None:
    """Refuse a lazy layer (``nn.LazyLinear`` etc.) whose sizes are not known yet."""
    if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():  # type: ignore[misc]
        raise TypeError(
            f"layer is a lazy module ({type(layer).__name__}) whose input size is not known until "
            "its first forward pass; run one batch through it first, or use the non-lazy layer "
            "(e.g. nn.Linear(in_features, out_features))"
        )


def drop_packed(
    x: PackedSequence, layer: nn.RNNBase, drop: Callable[[Tensor], Tensor]
) -> PackedSequence:
    """Drop the inputs of a packed batch with one mask per sequence and feature, shared over time.

    ``drop`` is a family's input dropout; applied to ones of the layer's per-sequence mask shape
    (``(B, 1, F)`` if ``batch_first`` else ``(1, B, F)``, sequences in their original order) it
    returns the noise itself, mask and inverted-dropout scale included, because every family
    multiplies its input by its noise. Row ``r`` of ``x.data`` at time ``t`` holds sequence
    ``sorted_indices[j]`` with ``j = r - (rows before t)``; it is multiplied by that sequence's
    noise, so a packed batch is dropped exactly as the same batch padded would be with the same
    random numbers.
    """
    data, sizes = x.data, x.batch_sizes
    batch, features = int(sizes[0]), data.shape[-1]
    shape = (batch, 1, features) if layer.batch_first else (1, batch, features)
    noise = drop(data.new_ones(shape)).reshape(batch, features)
    starts = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(data.shape[0]) - torch.repeat_interleave(starts, sizes)
    if x.sorted_indices is not None:
        position = x.sorted_indices.cpu()[position]
    return PackedSequence(
        data * noise[position.to(data.device)], sizes, x.sorted_indices, x.unsorted_indices
    )
