"""Dropout modules, one family per file, thin wrappers over :mod:`bayesdrop.functional`."""

from ._base import DropoutModule
from .learnable_bernoulli import LearnableBernoulliDropout
from .mc_dropout import MCDropout

__all__ = [
    "DropoutModule",
    "LearnableBernoulliDropout",
    "MCDropout",
]
