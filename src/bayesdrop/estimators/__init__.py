"""Unbiased gradient estimators for the logits of Bernoulli variables (the functional core of LBD).

Each estimator has the signature ``(loss_fn, logits, sample_shape=(), *, generator=None)`` and
returns an estimate shaped like ``logits`` of
:math:`\\nabla_\\phi\\,\\mathbb{E}_{z\\sim\\mathrm{Ber}(\\sigma(\\phi))}[f(z)]`.

:data:`COEFFICIENTS` is the one table of the antithetic estimators' per-unit factors, by name:
``COEFFICIENTS[name](u, z1, z2, logits)`` multiplies :math:`f(z^{(1)}) - f(z^{(2)})`. Every
module that builds an ARM/DisARM estimate itself (LBD inside :func:`bayesdrop.objective`, SIVAE)
reads it from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import Tensor

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
    "COEFFICIENTS",
    "PAIR_ESTIMATORS",
]

#: ``name -> coefficient(u, z1, z2, logits)`` for the antithetic-pair estimators (read-only).
COEFFICIENTS: Mapping[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = MappingProxyType(
    {"arm": arm_coefficient, "disarm": disarm_coefficient}
)

#: Names accepted wherever an antithetic-pair estimator is chosen (``estimator=``).
PAIR_ESTIMATORS: tuple[str, ...] = tuple(COEFFICIENTS)
