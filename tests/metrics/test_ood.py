"""OOD detection metrics against scikit-learn's reference (OOD is the positive class)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesdrop.metrics import fpr_at_tpr, ood_aupr, ood_auroc

sk = pytest.importorskip("sklearn.metrics")


def reference(s_in: np.ndarray, s_out: np.ndarray, tpr: float) -> tuple[float, float, float]:
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr_curve, tpr_curve, _ = sk.roc_curve(y, s, drop_intermediate=False)
    k = int(np.argmax(tpr_curve >= tpr))
    return (
        float(sk.roc_auc_score(y, s)),
        float(sk.average_precision_score(y, s)),
        float(fpr_curve[k]),
    )


def cases():
    rng = np.random.default_rng(0)
    for i in range(40):
        n_in, n_out = rng.integers(1, 60, size=2)
        if i % 2:  # heavy ties: a few integer levels shared by both sets
            s_in = rng.integers(0, 4, n_in).astype(float)
            s_out = rng.integers(1, 5, n_out).astype(float)
        else:  # continuous, shifted: no ties
            s_in = rng.normal(0.0, 1.0, n_in)
            s_out = rng.normal(0.7, 1.2, n_out)
        yield s_in, s_out


@pytest.mark.parametrize("tpr", [0.95, 0.5, 1.0, 0.01])
def test_equal_to_sklearn_on_random_and_tied_scores(tpr):
    for s_in, s_out in cases():
        auroc, aupr, fpr = reference(s_in, s_out, tpr)
        assert float(ood_auroc(s_in, s_out)) == pytest.approx(auroc, abs=1e-12)
        assert float(ood_aupr(s_in, s_out)) == pytest.approx(aupr, abs=1e-12)
        assert float(fpr_at_tpr(s_in, s_out, tpr=tpr)) == pytest.approx(fpr, abs=1e-15)


def test_tpr_exactly_on_a_step():
    # 20 OOD scores: TPR 19/20 = 0.95 is reached exactly at the threshold 1.0
    s_out = np.r_[np.full(19, 5.0), [0.5]]
    s_in = np.array([0.0, 1.0, 2.0, 6.0])
    assert float(fpr_at_tpr(s_in, s_out)) == 0.25  # only 6.0 is >= 5.0
    assert float(fpr_at_tpr(s_in, s_out)) == reference(s_in, s_out, 0.95)[2]


def test_hand_counted_values_and_all_ties():
    assert float(ood_auroc([0.1, 0.2, 0.3], [0.25, 0.4])) == 5 / 6
    # every score equal: one threshold, chance AUROC, precision = n_out / n
    assert float(ood_auroc([1.0, 1.0], [1.0, 1.0, 1.0])) == 0.5
    assert float(ood_aupr([1.0, 1.0], [1.0, 1.0, 1.0])) == pytest.approx(3 / 5)
    assert float(fpr_at_tpr([1.0, 1.0], [1.0])) == 1.0
    # perfect separation
    assert float(ood_auroc([0, 1], [2, 3])) == 1.0
    assert float(ood_aupr([0, 1], [2, 3])) == 1.0
    assert float(fpr_at_tpr([0, 1], [2, 3])) == 0.0


def test_inputs_tensor_numpy_list_and_dtypes_agree():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(30, generator=g), torch.randn(25, generator=g) + 0.5
    ref = float(ood_auroc(a.numpy(), b.numpy()))
    assert float(ood_auroc(a, b)) == ref
    assert float(ood_auroc(a.tolist(), b.tolist())) == ref
    assert float(ood_auroc(a.double(), b.half().float())) == pytest.approx(ref, abs=0.05)
    out = ood_aupr(a, b)
    assert out.dtype == torch.float64 and out.dim() == 0
    assert float(ood_auroc(torch.tensor([1, 2]), torch.tensor([3]))) == 1.0  # integer scores


@pytest.mark.parametrize("fn", [ood_auroc, ood_aupr, fpr_at_tpr])
def test_errors(fn):
    ok = [0.1, 0.2]
    with pytest.raises(ValueError, match="in_scores must hold at least one score"):
        fn([], ok)
    with pytest.raises(ValueError, match="out_scores must hold at least one score"):
        fn(ok, torch.tensor([]))
    with pytest.raises(ValueError, match=r"out_scores must be finite, but 1 of its 3"):
        fn(ok, [0.1, float("nan"), 0.3])
    with pytest.raises(ValueError, match="in_scores must be finite"):
        fn([float("inf")], ok)
    with pytest.raises(ValueError, match="in_scores must be 1-D"):
        fn(torch.zeros(2, 2), ok)
    with pytest.raises(TypeError, match="out_scores must hold real numbers"):
        fn(ok, torch.tensor([True, False]))
    with pytest.raises(TypeError, match="in_scores must be a 1-D tensor"):
        fn("0.1 0.2", ok)
    with pytest.raises(TypeError, match="out_scores must hold numbers"):
        fn(ok, ["a", "b"])


def test_tpr_argument():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\]"):
            fpr_at_tpr([0.0], [1.0], tpr=bad)
    with pytest.raises(TypeError, match="tpr must be a float"):
        fpr_at_tpr([0.0], [1.0], tpr="0.95")
    with pytest.raises(TypeError, match="tpr must be a float"):
        fpr_at_tpr([0.0], [1.0], tpr=True)
