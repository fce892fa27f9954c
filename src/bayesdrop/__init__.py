"""bayesdrop: dropout that learns its own rates and reads as Bayesian inference."""

from . import estimators, functional, nn, sparsity
from .nn import (
    ARDDropout,
    ConcreteDropout,
    LearnableBernoulliDropout,
    MCDropout,
    SparseVariationalDropout,
)
from .objectives import dropout_rates, kl_divergence, objective

__version__ = "0.1.0"

__all__ = [
    "estimators",
    "functional",
    "nn",
    "sparsity",
    "ARDDropout",
    "SparseVariationalDropout",
    "objective",
    "kl_divergence",
    "dropout_rates",
    "LearnableBernoulliDropout",
    "ConcreteDropout",
    "MCDropout",
    "__version__",
]
