"""Real data sets read offline (installed by ``scripts/get-data.sh``, never downloaded at run time) and synthetic ones generated in code."""

from __future__ import annotations

from .cartpole import CARTPOLE_CONSTANTS, Transitions, cartpole_step, cartpole_transitions
from .images import IMAGE_DATASETS, ImageData, load_images
from .regression import REGRESSION_DATASETS, RegressionData, kfold_indices, load_regression
from .scenes import SCENE_CLASSES, make_scenes
from .text import (
    TEXT_DATASETS,
    TextData,
    TextFeatures,
    load_text,
    load_text_features,
    text_data_path,
)

__all__ = [
    "IMAGE_DATASETS",
    "ImageData",
    "load_images",
    "CARTPOLE_CONSTANTS",
    "Transitions",
    "cartpole_step",
    "cartpole_transitions",
    "REGRESSION_DATASETS",
    "RegressionData",
    "kfold_indices",
    "load_regression",
    "TEXT_DATASETS",
    "TextData",
    "TextFeatures",
    "load_text",
    "load_text_features",
    "text_data_path",
    "SCENE_CLASSES",
    "make_scenes",
]
