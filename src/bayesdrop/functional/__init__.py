"""Pure tensor math: masks, relaxations, local-reparameterisation moments, fast-dropout moments, KLs."""

from .ard import ard_gamma_constant, kl_ard, kl_ard_gamma
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
from .kl import KL_APPROXIMATIONS, LOG_ALPHA_MAX, LOG_ALPHA_MIN, kl_log_uniform
from .lrt import VAR_FLOOR, lrt_conv, lrt_linear, sample_gaussian
from .variational import clamp_log_alpha, variational_dropout_kl, weight_variance

__all__ = [
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
    "LOG_ALPHA_MAX",
    "LOG_ALPHA_MIN",
    "kl_log_uniform",
    "VAR_FLOOR",
    "lrt_conv",
    "lrt_linear",
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
]
