"""Uncertainty from dropout models: MC prediction (:func:`~bayesdrop.mc_predict`) and MC sampling switch."""

from .mc import (
    OUTPUTS,
    TASKS,
    MCClassification,
    MCRegression,
    NoSamplingWarning,
    clear_tile_choices,
    mc_predict,
    mc_sampling,
    sample_seeds,
    tile_choice,
)

__all__ = [
    "mc_predict",
    "mc_sampling",
    "sample_seeds",
    "tile_choice",
    "clear_tile_choices",
    "NoSamplingWarning",
    "MCClassification",
    "MCRegression",
    "TASKS",
    "OUTPUTS",
]
