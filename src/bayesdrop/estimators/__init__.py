"""Unbiased gradient estimators for the logits of Bernoulli variables (the functional core of LBD).

Each estimator has the signature ``(loss_fn, logits, sample_shape=(), *, generator=None)`` and
returns an estimate shaped like ``logits`` of
:math:`\\nabla_\\phi\\,\\mathbb{E}_{z\\sim\\mathrm{Ber}(\\sigma(\\phi))}[f(z)]`.
"""

from ._common import antithetic_masks
from .arm import arm, arm_coefficient
from .disarm import disarm, disarm_coefficient
from .reinforce import reinforce

__all__ = [
    "arm",
    "disarm",
    "reinforce",
    "antithetic_masks",
    "arm_coefficient",
    "disarm_coefficient",
]
