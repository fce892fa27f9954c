"""bayesdrop: dropout that learns its own rates and reads as Bayesian inference."""

from . import adapters, calibration, estimators, functional, metrics, nn, sparsity, uncertainty
from .conversion import convert
from .nn import (
    ARDDropout,
    ConcreteDropout,
    GaussianDropout,
    LearnableBernoulliDropout,
    MCDropout,
    SparseVariationalDropout,
    VariationalDropout,
)
from .objectives import (
    batch_coupled_modules,
    dropout_rates,
    kl_divergence,
    objective,
    rate_param_groups,
    rate_parameters,
    register_batch_coupled,
)
from .tracking import RateTracker
from .uncertainty import mc_predict, mc_sampling

__version__ = "0.1.0"

__all__ = [
    "adapters",
    "calibration",
    "estimators",
    "functional",
    "nn",
    "sparsity",
    "ARDDropout",
    "SparseVariationalDropout",
    "objective",
    "kl_divergence",
    "dropout_rates",
    "rate_param_groups",
    "rate_parameters",
    "register_batch_coupled",
    "batch_coupled_modules",
    "RateTracker",
    "LearnableBernoulliDropout",
    "ConcreteDropout",
    "MCDropout",
    "__version__",
    "GaussianDropout",
    "VariationalDropout",
    "metrics",
    "uncertainty",
    "mc_predict",
    "mc_sampling",
    "convert",
]
