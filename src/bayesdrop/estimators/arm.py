"""ARM: the Augment-REINFORCE-Merge estimator (Yin & Zhou, 2019; eq. 7 of the LBD paper)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._common import (
    antithetic_masks,
    as_sample_shape,
    check_logits,
    contract,
    draw_uniforms,
    evaluate_pair,
)

__all__ = ["arm", "arm_coefficient"]


def arm_coefficient(u: Tensor, z1: Tensor, z2: Tensor, logits: Tensor) -> Tensor:
    r"""Per-unit factor that multiplies :math:`f(z^{(1)}) - f(z^{(2)})` in ARM: :math:`u - 1/2`."""
    del z1, z2, logits
    return u - 0.5


def arm(
    loss_fn: Callable[[Tensor], Tensor],
    logits: Tensor,
    sample_shape: int | Sequence[int] | torch.Size = (),
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Unbiased ARM estimate of the gradient of a Bernoulli expectation with respect to its logits.

    For :math:`J(\phi) = \mathbb{E}_{z\sim\mathrm{Ber}(\sigma(\phi))}[f(z)]`,

    .. math::
        \nabla_\phi J = \mathbb{E}_{u\sim U(0,1)^K}\Big[
            \big(f(1[u > \sigma(-\phi)]) - f(1[u < \sigma(\phi)])\big)\,(u - \tfrac12)\Big].

    One uniform vector per index of ``sample_shape`` gives the antithetic pair; the estimate is the
    mean over ``sample_shape`` (so with ``sample_shape=(n,)`` it estimates the gradient of the mean
    loss over n independent examples, each with its own masks).

    Args:
        loss_fn: called **once** with float masks of shape ``(2, *sample_shape, *logits.shape)``
            (index 0 is :math:`z^{(1)}`, index 1 is :math:`z^{(2)}`); must return losses of shape
            ``(2, *sample_shape)``. Its result is not differentiated.
        logits: :math:`\phi`, with :math:`\sigma(\phi) = P(z = 1)`.
        sample_shape: independent draws to average over (``()`` for a single one).
        generator: optional generator for the uniforms.

    Returns:
        A tensor shaped like ``logits``.

    Example:
        >>> import torch
        >>> from bayesdrop.estimators import arm
        >>> g = arm(lambda z: (z - 0.3).pow(2).sum(-1), torch.zeros(3), (4000,),
        ...         generator=torch.Generator().manual_seed(0))
        >>> g.shape
        torch.Size([3])
    """
    logits = check_logits(logits)
    sample_shape = as_sample_shape(sample_shape)
    u = draw_uniforms(sample_shape + logits.shape, logits, generator)
    with torch.no_grad():
        z1, z2 = antithetic_masks(logits, u)
        masks = torch.stack([z1, z2]).to(logits.dtype)
        losses = evaluate_pair(loss_fn, masks, sample_shape).to(logits.dtype)
        return contract(losses[0] - losses[1], arm_coefficient(u, z1, z2, logits), sample_shape)
