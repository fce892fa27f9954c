"""REINFORCE (score function) with a leave-one-out baseline, the reference estimator."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._common import as_sample_shape, check_logits, contract, draw_uniforms, evaluate_pair

__all__ = ["reinforce"]


def reinforce(
    loss_fn: Callable[[Tensor], Tensor],
    logits: Tensor,
    sample_shape: int | Sequence[int] | torch.Size = (),
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""REINFORCE with a leave-one-out baseline over two *independent* masks.

    With :math:`z^{(1)}, z^{(2)}` drawn independently from :math:`\mathrm{Ber}(\sigma(\phi))` and the
    score :math:`\nabla_\phi \log p(z) = z - \sigma(\phi)`, the leave-one-out estimator is

    .. math::
        \hat g = \tfrac12\sum_{j=1}^{2}\big(f(z^{(j)}) - f(z^{(3-j)})\big)(z^{(j)} - \sigma(\phi))
               = \tfrac12\big(f(z^{(1)}) - f(z^{(2)})\big)(z^{(1)} - z^{(2)}).

    Layout: ``loss_fn`` receives ``(2, *sample_shape, *logits.shape)`` as for ARM, but the two
    masks are independent draws rather than an antithetic pair. Same cost as ARM/DisARM, higher
    variance; it serves as the textbook reference.
    """
    logits = check_logits(logits)
    sample_shape = as_sample_shape(sample_shape)
    u = draw_uniforms((2,) + sample_shape + logits.shape, logits, generator)
    with torch.no_grad():
        masks = (u < torch.sigmoid(logits)).to(logits.dtype)
        losses = evaluate_pair(loss_fn, masks, sample_shape).to(logits.dtype)
        coef = 0.5 * (masks[0] - masks[1])
        return contract(losses[0] - losses[1], coef, sample_shape)
