"""DisARM: ARM with the antithetic pair integrated out (Dong, Mnih & Tucker, 2020)."""

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

__all__ = ["disarm", "disarm_coefficient"]


def disarm_coefficient(u: Tensor, z1: Tensor, z2: Tensor, logits: Tensor) -> Tensor:
    r"""Per-unit factor multiplying :math:`f(z^{(1)}) - f(z^{(2)})` in DisARM.

    .. math::
        \tfrac12\,(z^{(1)}_k - z^{(2)}_k)\,\sigma(|\phi_k|)

    It is zero where the pair agrees; it is the conditional expectation of ARM's :math:`u - 1/2`
    given the pair, which is why DisARM never has higher variance than ARM.
    """
    del u
    return 0.5 * (z1.to(logits.dtype) - z2.to(logits.dtype)) * torch.sigmoid(logits.abs())


def disarm(
    loss_fn: Callable[[Tensor], Tensor],
    logits: Tensor,
    sample_shape: int | Sequence[int] | torch.Size = (),
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Unbiased DisARM estimate of :math:`\nabla_\phi\,\mathbb{E}_{z\sim\mathrm{Ber}(\sigma(\phi))}[f(z)]`.

    Uses the same antithetic pair as :func:`~bayesdrop.estimators.arm`,
    :math:`z^{(1)} = 1[u > \sigma(-\phi)]`, :math:`z^{(2)} = 1[u < \sigma(\phi)]`, and

    .. math::
        \hat g_k = \tfrac12\big(f(z^{(1)}) - f(z^{(2)})\big)\,
                   (z^{(1)}_k - z^{(2)}_k)\,\sigma(|\phi_k|),

    which is Dong et al.'s :math:`\tfrac12(f(b)-f(\tilde b))(-1)^{\tilde b}1[b\ne\tilde b]\sigma(|\phi|)`
    with :math:`b = z^{(2)}`, :math:`\tilde b = z^{(1)}`. Same cost as ARM (two evaluations).

    Args:
        loss_fn: called once with masks ``(2, *sample_shape, *logits.shape)``; returns
            ``(2, *sample_shape)``.
        logits: :math:`\phi`, with :math:`\sigma(\phi) = P(z = 1)`.
        sample_shape: independent draws to average over.
        generator: optional generator for the uniforms.

    Returns:
        A tensor shaped like ``logits``.
    """
    logits = check_logits(logits)
    sample_shape = as_sample_shape(sample_shape)
    u = draw_uniforms(sample_shape + logits.shape, logits, generator)
    with torch.no_grad():
        z1, z2 = antithetic_masks(logits, u)
        masks = torch.stack([z1, z2]).to(logits.dtype)
        losses = evaluate_pair(loss_fn, masks, sample_shape).to(logits.dtype)
        coef = disarm_coefficient(u, z1, z2, logits)
        return contract(losses[0] - losses[1], coef, sample_shape)
