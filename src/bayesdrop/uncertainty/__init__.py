"""Uncertainty from dropout models: MC prediction (:func:`mc_predict`) and MC sampling switch."""

from .mc import (
    OUTPUTS,
    TASKS,
    MCClassification,
    MCRegression,
    mc_predict,
    mc_sampling,
    sample_seeds,
)

__all__ = [
    "mc_predict",
    "mc_sampling",
    "sample_seeds",
    "MCClassification",
    "MCRegression",
    "TASKS",
    "OUTPUTS",
]
