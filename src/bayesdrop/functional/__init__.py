"""Pure tensor math: masks, relaxations, local-reparameterisation moments, fast-dropout moments, KLs."""

from .bernoulli import (
    LOGIT_BOUND,
    bernoulli_dropout,
    bernoulli_entropy,
    gal_bernoulli_kl,
    inverted_scale,
)

__all__ = [
    "LOGIT_BOUND",
    "bernoulli_dropout",
    "bernoulli_entropy",
    "gal_bernoulli_kl",
    "inverted_scale",
]
