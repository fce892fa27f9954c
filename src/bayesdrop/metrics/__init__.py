"""Evaluation metrics: classification, segmentation and ranking."""

from .ranking import ndcg_at_k, recall_at_k, recall_at_k_recbole

__all__ = [
    "recall_at_k",
    "recall_at_k_recbole",
    "ndcg_at_k",
]
