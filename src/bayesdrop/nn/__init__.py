"""Dropout modules, one family per file, thin wrappers over :mod:`bayesdrop.functional`."""

from ._base import DropoutModule
from .ard import ARDDropout
from .concrete import ConcreteDropout
from .drop_path import DropPath
from .fast_dropout import FastDropoutLinear, FastDropoutMLP
from .gaussian import GaussianDropout
from .ghost_batch_norm import GhostBatchNorm, to_ghost_batch_norm
from .learnable_bernoulli import LearnableBernoulliDropout
from .mc_dropout import MCDropout
from .sparse_variational import SparseVariationalDropout
from .variational import VariationalDropout

__all__ = [
    "ARDDropout",
    "SparseVariationalDropout",
    "ConcreteDropout",
    "DropoutModule",
    "DropPath",
    "LearnableBernoulliDropout",
    "MCDropout",
    "GaussianDropout",
    "GhostBatchNorm",
    "to_ghost_batch_norm",
    "FastDropoutLinear",
    "FastDropoutMLP",
    "VariationalDropout",
]
