"""Batch normalisation with statistics over ghost batches (the math of
:class:`bayesdrop.nn.GhostBatchNorm`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GhostStatistics", "ghost_batch_norm", "ghost_groups"]


class GhostStatistics(NamedTuple):
    """Output of :func:`ghost_batch_norm`: the normalised tensor and the statistics that a
    running average takes, per channel: the batch mean and the mean of the ghost batches'
    unbiased variances (each ghost batch weighted by its number of examples)."""

    output: Tensor
    mean: Tensor
    var: Tensor


def ghost_groups(batch: int, ghost_size: int, device: torch.device | None = None) -> Tensor:
    """Ghost batch of every example: ``arange(batch) // ghost_size`` (contiguous blocks along the
    batch dimension; the last one is smaller when ``ghost_size`` does not divide ``batch``).

    Example:
        >>> ghost_groups(5, 2)
        tensor([0, 0, 1, 1, 2])
    """
    return torch.div(torch.arange(batch, device=device), ghost_size, rounding_mode="floor")


def ghost_batch_norm(
    x: Tensor,
    ghost_size: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> GhostStatistics:
    r"""Normalise ``x`` with the statistics of its ghost batch (Hoffer, Hubara & Soudry 2017,
    "Train longer, generalize better: closing the generalization gap in large batch training of
    neural networks").

    The batch (dimension 0) is cut into contiguous ghost batches :math:`G` of ``ghost_size``
    examples (the last one smaller when ``ghost_size`` does not divide the batch); example
    :math:`i \in G`, channel :math:`c` is normalised with the mean and biased variance over
    :math:`G` and every other position (as ``BatchNorm`` does over the whole batch):

    .. math::
        y_{ic\cdot} = \gamma_c\,\frac{x_{ic\cdot} - \mu_{Gc}}{\sqrt{\sigma^2_{Gc} + \epsilon}}
        + \beta_c .

    An example's output then depends on the examples of its own ghost batch only. With
    ``ghost_size`` at least the batch size it is ``F.batch_norm`` with batch statistics.

    Args:
        x: input ``(N, C, *)``.
        ghost_size: examples per ghost batch, ``>= 1``.
        weight, bias: affine parameters :math:`\gamma, \beta` of shape ``(C,)``, or ``None``.
        eps: added to the variance.

    Returns:
        :class:`GhostStatistics`: ``output`` shaped as ``x``; ``mean`` and ``var`` of shape
        ``(C,)`` (for running statistics).

    Raises:
        ValueError: a ghost batch with a single value per channel (its variance is undefined).
    """
    n, c = x.shape[0], x.shape[1]
    per = x[0, 0].numel() if n and c else 1  # values per example and channel
    groups = ghost_groups(n, ghost_size, x.device)
    count = torch.bincount(groups).to(x.dtype) * per  # values per ghost batch and channel
    if bool((count < 2).any()):
        raise ValueError(
            f"a ghost batch has a single value per channel (batch {n}, ghost_size {ghost_size}, "
            f"{per} value(s) per example and channel); its batch variance is undefined"
        )
    flat = x.reshape(n, c, per)
    k = count.numel()
    sums = x.new_zeros(k, c).index_add(0, groups, flat.sum(-1))
    mean = sums / count[:, None]  # (k, C)
    centred = flat - mean[groups][..., None]
    sq = x.new_zeros(k, c).index_add(0, groups, centred.square().sum(-1))
    var = sq / count[:, None]  # biased, (k, C)
    out = centred * torch.rsqrt(var + eps)[groups][..., None]
    if weight is not None:
        out = out * weight[:, None]
    if bias is not None:
        out = out + bias[:, None]
    share = (count / per / n)[:, None]  # examples of each ghost batch / batch
    with torch.no_grad():
        batch_mean = (share * mean).sum(0)
        batch_var = (share * var * (count / (count - 1))[:, None]).sum(0)
    return GhostStatistics(out.reshape(x.shape), batch_mean, batch_var)
