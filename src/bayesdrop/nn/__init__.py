"""Dropout modules, one family per file, thin wrappers over :mod:`bayesdrop.functional`."""

from ._base import DropoutModule
from .ard import ARDDropout
from .concrete import ConcreteDropout
from .drop_path import DropPath
from .fast_dropout import FastDropoutLinear, FastDropoutMLP
from .gaussian import GaussianDropout
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
    "FastDropoutLinear",
    "FastDropoutMLP",
    "VariationalDropout",
]


def __getattr__(name: str) -> object:
    # deprecated names, moved to bayesdrop.linear_model (the warning is raised there)
    if name in ("FastDropoutLogisticRegression", "MCDropoutLogisticRegression"):
        from . import fast_dropout

        return getattr(fast_dropout, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
