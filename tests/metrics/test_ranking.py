"""Ranking metrics against hand-computed cases and an independent numpy implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bayesdrop.metrics import ndcg_at_k, recall_at_k, recall_at_k_recbole


def _reference(scores: np.ndarray, heldout: np.ndarray, fold_in: np.ndarray, k: int):
    """Liang et al.'s NDCG_binary_at_k_batch / Recall_at_k_batch, re-derived with numpy sorts."""
    s = scores.astype(np.float64).copy()
    s[fold_in > 0] = -np.inf
    n = s.shape[0]
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    tp = 1.0 / np.log2(np.arange(2, k + 2))
    hits = heldout[np.arange(n)[:, None], top] > 0
    dcg = (hits * tp).sum(1)
    n_rel = (heldout > 0).sum(1)
    idcg = np.array([tp[: min(m, k)].sum() for m in n_rel])
    keep = n_rel > 0
    ndcg = dcg[keep] / idcg[keep]
    recall = hits.sum(1)[keep] / np.minimum(k, n_rel[keep])
    recall_full = hits.sum(1)[keep] / n_rel[keep]
    return ndcg.mean(), recall.mean(), recall_full.mean()


def test_hand_computed_case():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4, 0.5]])
    heldout = torch.tensor([[0, 0, 1, 1, 0], [1, 0, 0, 0, 0]])
    # user 0: top-2 = items 0, 2 -> one hit at rank 2; user 1: top-2 = 4, 3 -> none
    assert recall_at_k(scores, heldout, 2).item() == pytest.approx((1 / 2 + 0) / 2)
    d0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(scores, heldout, 2).item() == pytest.approx(d0 / 2)
    # excluding item 0 (fold-in) promotes items 2 and 3 -> two hits for user 0
    exclude = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert recall_at_k(scores, heldout, 2, exclude=exclude).item() == pytest.approx(0.5)
    assert ndcg_at_k(scores, heldout, 2, exclude=exclude, reduction="none")[0].item() == 1.0


def test_recall_denominators_differ_only_beyond_k():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    heldout = torch.tensor([[1, 1, 1, 0]])
    assert recall_at_k(scores, heldout, 2).item() == 1.0  # 2 / min(2, 3)
    assert recall_at_k_recbole(scores, heldout, 2).item() == pytest.approx(2 / 3)
    assert recall_at_k(scores, heldout, 3).item() == recall_at_k_recbole(scores, heldout, 3).item()


def test_users_without_heldout_are_skipped():
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    heldout = torch.tensor([[1, 0], [0, 0]])
    assert recall_at_k(scores, heldout, 1).item() == 1.0
    per_user = ndcg_at_k(scores, heldout, 1, reduction="none")
    assert per_user[0].item() == 1.0 and math.isnan(per_user[1].item())
    with pytest.raises(ValueError, match="no user has a held-out item"):
        recall_at_k(scores, torch.zeros(2, 2), 1)


@pytest.mark.parametrize("k", [1, 5, 20, 40])
def test_matches_independent_numpy_implementation(k):
    rng = np.random.default_rng(k)
    n_users, n_items = 60, 40
    scores = rng.standard_normal((n_users, n_items))
    clicks = rng.random((n_users, n_items)) < 0.3
    held = clicks & (rng.random((n_users, n_items)) < 0.3)
    fold_in = clicks & ~held
    ref_ndcg, ref_recall, ref_full = _reference(scores, held.astype(int), fold_in, k)
    h = sp.csr_matrix(held.astype(np.float32))
    f = sp.csr_matrix(fold_in.astype(np.float32))
    assert ndcg_at_k(scores, h, k, exclude=f).item() == pytest.approx(ref_ndcg, abs=1e-12)
    assert recall_at_k(scores, h, k, exclude=f).item() == pytest.approx(ref_recall, abs=1e-12)
    assert recall_at_k_recbole(scores, h, k, exclude=f).item() == pytest.approx(ref_full, abs=1e-12)


def test_perfect_ranking_scores_one():
    held = torch.tensor([[0, 1, 1, 0, 1, 0]])
    scores = held.double() + 0.01 * torch.arange(6)
    for k in (1, 2, 3, 6):
        assert ndcg_at_k(scores, held, k).item() == pytest.approx(1.0)
        assert recall_at_k(scores, held, k).item() == pytest.approx(1.0)


def test_bad_arguments():
    s, h = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="k must be in"):
        recall_at_k(s, h, 4)
    with pytest.raises(TypeError, match="k must be an int"):
        ndcg_at_k(s, h, 1.5)
    with pytest.raises(ValueError, match="shape of scores"):
        recall_at_k(s, torch.ones(3, 3), 1)
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(torch.full((2, 3), float("nan")), h, 1)
    with pytest.raises(ValueError, match="overlap"):
        recall_at_k(s, h, 1, exclude=h)
    with pytest.raises(ValueError, match="reduction"):
        recall_at_k(s, h, 1, reduction="sum")
