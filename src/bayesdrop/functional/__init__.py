"""Pure tensor math: masks, relaxations, local-reparameterisation moments, fast-dropout moments, KLs."""

from .ard import ard_gamma_constant, kl_ard, kl_ard_gamma
from .bernoulli import (
    LOGIT_BOUND,
    bernoulli_dropout,
    bernoulli_entropy,
    gal_bernoulli_kl,
    inverted_scale,
)

__all__ = [
    "ard_gamma_constant",
    "kl_ard",
    "kl_ard_gamma",
    "LOGIT_BOUND",
    "bernoulli_dropout",
    "bernoulli_entropy",
    "gal_bernoulli_kl",
    "inverted_scale",
]
