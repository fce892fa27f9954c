"""Pure tensor math: masks, relaxations, local-reparameterisation moments, fast-dropout moments, KLs."""

from .additive_gaussian import (
    ADDITIVE_LOG_ALPHA_MAX,
    ADDITIVE_LOG_ALPHA_MIN,
    additive_log_alpha,
    additive_variance,
    fused_kl_sum,
)
from .ard import ard_gamma_constant, ard_gamma_kl, ard_kl, kl_ard, kl_ard_gamma
from .bernoulli import (
    LOGIT_BOUND,
    bernoulli_dropout,
    bernoulli_entropy,
    gal_bernoulli_kl,
    inverted_scale,
)
from .concrete import (
    ConcreteRegularizers,
    concrete_dropout,
    concrete_keep_mask,
    concrete_regularizer,
    concrete_regularizers,
)
from .fast_dropout import (
    Moments,
    expected_logistic_nll,
    expected_softmax,
    expected_softmax_cross_entropy,
    expected_squared_error,
    fast_dropout_linear,
    relu_moments,
    sigmoid_moments,
)
from .gaussian import alpha_from_p, gaussian_dropout, gaussian_dropout_lrt
from .ghost_batch_norm import GhostStatistics, ghost_batch_norm, ghost_groups
from .kl import (
    KINGMA_COEFFICIENTS,
    KL_APPROXIMATIONS,
    KL_LOG_ALPHA_MAX,
    KL_LOG_ALPHA_MIN,
    MOLCHANOV_COEFFICIENTS,
    kl_log_uniform,
)
from .lrt import (
    LRT_LAYERS,
    VAR_FLOOR,
    layer_options,
    lrt_conv,
    lrt_linear,
    lrt_moments,
    lrt_sample,
    sample_gaussian,
)
from .sparse_variational import sparse_variational_kl
from .variational import clamp_log_alpha, variational_dropout_kl, weight_variance

__all__ = [
    "ADDITIVE_LOG_ALPHA_MAX",
    "ADDITIVE_LOG_ALPHA_MIN",
    "additive_log_alpha",
    "additive_variance",
    "fused_kl_sum",
    "ard_gamma_kl",
    "ard_kl",
    "sparse_variational_kl",
    "ard_gamma_constant",
    "kl_ard",
    "kl_ard_gamma",
    "LOGIT_BOUND",
    "bernoulli_dropout",
    "bernoulli_entropy",
    "gal_bernoulli_kl",
    "inverted_scale",
    "ConcreteRegularizers",
    "concrete_dropout",
    "concrete_keep_mask",
    "concrete_regularizer",
    "concrete_regularizers",
    "KL_APPROXIMATIONS",
    "KINGMA_COEFFICIENTS",
    "KL_LOG_ALPHA_MAX",
    "KL_LOG_ALPHA_MIN",
    "MOLCHANOV_COEFFICIENTS",
    "kl_log_uniform",
    "LRT_LAYERS",
    "VAR_FLOOR",
    "layer_options",
    "lrt_conv",
    "lrt_linear",
    "lrt_moments",
    "lrt_sample",
    "sample_gaussian",
    "Moments",
    "expected_logistic_nll",
    "expected_softmax",
    "expected_softmax_cross_entropy",
    "expected_squared_error",
    "fast_dropout_linear",
    "relu_moments",
    "sigmoid_moments",
    "alpha_from_p",
    "gaussian_dropout",
    "gaussian_dropout_lrt",
    "clamp_log_alpha",
    "variational_dropout_kl",
    "weight_variance",
    "GhostStatistics",
    "ghost_batch_norm",
    "ghost_groups",
]
