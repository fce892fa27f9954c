"""Evaluation metrics: classification, out-of-distribution detection, segmentation and ranking."""

from .classification import (
    CalibrationBins,
    PAvPUCounts,
    PAvPUCurve,
    accuracy,
    brier,
    calibration_bins,
    ece,
    entropy_thresholds,
    nll,
    p_accurate_given_certain,
    p_uncertain_given_inaccurate,
    pavpu,
    pavpu_counts,
    pavpu_curve,
    predictive_entropy,
)
from .ood import fpr_at_tpr, ood_aupr, ood_auroc
from .ranking import ndcg_at_k, recall_at_k, recall_at_k_recbole
from .segmentation import (
    confusion_matrix,
    mean_iou,
    patch_pavpu,
    patch_pavpu_curve,
    patch_statistics,
    per_class_iou,
    pixel_accuracy,
)

__all__ = [
    "recall_at_k",
    "recall_at_k_recbole",
    "ndcg_at_k",
    # classification
    "accuracy",
    "nll",
    "brier",
    "ece",
    "calibration_bins",
    "CalibrationBins",
    "predictive_entropy",
    "pavpu",
    "pavpu_counts",
    "PAvPUCounts",
    "pavpu_curve",
    "PAvPUCurve",
    "entropy_thresholds",
    "p_accurate_given_certain",
    "p_uncertain_given_inaccurate",
    # out-of-distribution detection
    "ood_auroc",
    "ood_aupr",
    "fpr_at_tpr",
    # segmentation
    "patch_statistics",
    "patch_pavpu",
    "patch_pavpu_curve",
    "confusion_matrix",
    "mean_iou",
    "per_class_iou",
    "pixel_accuracy",
]
