"""Shared pieces of the Bernoulli-logit gradient estimators."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..functional.noise import uniform

__all__ = ["antithetic_masks", "evaluate_pair", "as_sample_shape", "draw_uniforms"]


def as_sample_shape(sample_shape: int | Sequence[int] | torch.Size) -> torch.Size:
    """Normalise ``sample_shape`` to a ``torch.Size`` (an int ``n`` means ``(n,)``)."""
    if isinstance(sample_shape, int) and not isinstance(sample_shape, bool):
        sample_shape = (sample_shape,)
    try:
        size = torch.Size(sample_shape)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(
            f"sample_shape must be an int or a sequence of ints, but got {sample_shape!r}"
        ) from exc
    if any(s < 1 for s in size):
        raise ValueError(f"sample_shape must contain positive sizes, but got {tuple(size)}")
    return size


def draw_uniforms(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform(0, 1) draws of ``shape`` with ``like``'s dtype and device."""
    return uniform(shape, dtype=like.dtype, device=like.device, generator=generator)


def antithetic_masks(logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    r"""The ARM/DisARM antithetic pair of Bernoulli(sigmoid(logits)) masks from one uniform draw.

    .. math::
        z^{(1)} = 1[u > \sigma(-\phi)], \qquad z^{(2)} = 1[u < \sigma(\phi)]

    Each is marginally Bernoulli(sigmoid(logits)); ``z1`` uses ``1 - u`` where ``z2`` uses ``u``.
    Returns boolean tensors shaped like ``u``.
    """
    z1 = u > torch.sigmoid(-logits)
    z2 = u < torch.sigmoid(logits)
    return z1, z2


def evaluate_pair(
    loss_fn: Callable[[Tensor], Tensor], masks: Tensor, sample_shape: torch.Size
) -> Tensor:
    """Call ``loss_fn`` once on the stacked masks and check it returns ``(2, *sample_shape)``."""
    losses = loss_fn(masks)
    expected = (2, *sample_shape)
    if not isinstance(losses, Tensor):
        raise TypeError(f"loss_fn must return a Tensor, but got {type(losses).__name__}")
    if tuple(losses.shape) != expected:
        raise ValueError(
            f"loss_fn must return losses of shape {expected} (one per mask of the stacked pair), "
            f"but got {tuple(losses.shape)}"
        )
    return losses


def check_logits(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, but got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, but got {logits.dtype}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits must be finite")
    return logits


def contract(delta: Tensor, coefficient: Tensor, sample_shape: torch.Size) -> Tensor:
    """Mean over the sample dimensions of ``delta[..., None...] * coefficient``."""
    n_sample = len(sample_shape)
    d = delta.reshape(delta.shape + (1,) * (coefficient.dim() - n_sample))
    g = d * coefficient
    if n_sample:
        g = g.mean(dim=tuple(range(n_sample)))
    return g
