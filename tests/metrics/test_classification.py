"""Classification metrics against hand-computed cases and an independent numpy implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayesdrop import metrics as M

# --------------------------------------------------------------------------- numpy reference


def np_entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(1)


def np_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            total += inb.mean() * abs((pred[inb] == y[inb]).mean() - conf[inb].mean())
    return total


def np_pavpu(p: np.ndarray, y: np.ndarray, thr: float) -> tuple[float, float, float]:
    acc = p.argmax(1) == y
    unc = np_entropy(p) > thr
    n_ac = np.sum(acc & ~unc)
    n_au = np.sum(acc & unc)
    n_ic = np.sum(~acc & ~unc)
    n_iu = np.sum(~acc & unc)
    pav = (n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu)
    pac = n_ac / (n_ac + n_ic) if n_ac + n_ic else 0.0
    pui = n_iu / (n_ic + n_iu) if n_ic + n_iu else 0.0
    return pav, pac, pui


@pytest.fixture
def random_case():
    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(200, 5, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    labels = torch.randint(0, 5, (200,), generator=g)
    # make most predictions right so every cell of the PAvPU table is populated
    labels[:120] = probs[:120].argmax(1)
    return probs, labels


# --------------------------------------------------------------------------- hand-computed
def test_hand_computed_small_case():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 2])
    assert float(M.accuracy(probs, labels)) == pytest.approx(2 / 3)
    assert float(M.nll(probs, labels)) == pytest.approx(
        -(math.log(0.7) + math.log(0.3) + math.log(0.6)) / 3
    )
    b0 = 0.3**2 + 0.2**2 + 0.1**2
    b1 = 0.1**2 + 0.6**2 + 0.7**2
    b2 = 0.2**2 + 0.2**2 + 0.4**2
    assert float(M.brier(probs, labels)) == pytest.approx((b0 + b1 + b2) / 3)
    torch.testing.assert_close(
        M.brier(probs, labels, reduction="none"), torch.tensor([b0, b1, b2], dtype=torch.float64)
    )
    assert float(M.nll(probs, labels, reduction="sum")) == pytest.approx(
        3 * float(M.nll(probs, labels))
    )
    # ECE with 2 bins: (0, .5] empty; (.5, 1] holds all: conf mean .6333, accuracy 2/3
    assert float(M.ece(probs, labels, n_bins=2)) == pytest.approx(
        abs(2 / 3 - (0.7 + 0.6 + 0.6) / 3)
    )
    # ECE with 10 bins: (.6, .7] holds the first example (conf .7, right); (.5, .6] the others
    assert float(M.ece(probs, labels, n_bins=10)) == pytest.approx(
        1 / 3 * 0.3 + 2 / 3 * abs(0.5 - 0.6)
    )


def test_entropy_closed_forms():
    uniform = torch.full((2, 4), 0.25, dtype=torch.float64)
    torch.testing.assert_close(
        M.predictive_entropy(uniform), torch.full((2,), math.log(4), dtype=torch.float64)
    )
    onehot = torch.eye(3, dtype=torch.float64)
    assert torch.equal(M.predictive_entropy(onehot), torch.zeros(3, dtype=torch.float64))
    seg = torch.full((1, 2, 3, 3), 0.5)
    torch.testing.assert_close(M.predictive_entropy(seg), torch.full((1, 3, 3), math.log(2)))


def test_nll_of_zero_probability_is_finite():
    probs = torch.tensor([[1.0, 0.0]])
    v = M.nll(probs, torch.tensor([1]))
    assert torch.isfinite(v) and float(v) == pytest.approx(
        -math.log(torch.finfo(torch.float32).tiny)
    )


def test_pavpu_hand_case_and_counts():
    # accurate+certain, accurate+uncertain, inaccurate+uncertain, inaccurate+certain
    probs = torch.tensor([[0.99, 0.01], [0.6, 0.4], [0.55, 0.45], [0.97, 0.03]])
    labels = torch.tensor([0, 0, 1, 1])
    c = M.pavpu_counts(probs, labels, 0.5)
    assert [int(c.n_ac), int(c.n_au), int(c.n_ic), int(c.n_iu)] == [1, 1, 1, 1]
    assert float(M.pavpu(probs, labels, 0.5)) == 0.5
    assert float(M.p_accurate_given_certain(probs, labels, 0.5)) == 0.5
    assert float(M.p_uncertain_given_inaccurate(probs, labels, 0.5)) == 0.5
    # threshold above every entropy: nothing uncertain, PAvPU = accuracy
    assert float(M.pavpu(probs, labels, 1.0)) == 0.5
    assert float(M.p_uncertain_given_inaccurate(probs, labels, 1.0)) == 0.0


def test_pavpu_is_not_the_common_wrong_formula():
    """Ours: (n_ac + n_iu)/n. Several public copies compute (n_ac + n_ic)/n; they differ here."""
    probs = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 0])  # accurate+certain, inaccurate+uncertain, accurate+certain
    c = M.pavpu_counts(probs, labels, 0.6)
    assert (int(c.n_ac), int(c.n_au), int(c.n_ic), int(c.n_iu)) == (2, 0, 0, 1)
    ours = float(M.pavpu(probs, labels, 0.6))
    wrong = float((c.n_ac + c.n_ic) / c.n)
    assert ours == 1.0  # the model is right where certain and uncertain where wrong
    assert wrong == pytest.approx(2 / 3)
    # a confident mistake must lower PAvPU, the wrong formula rewards it
    probs2 = torch.tensor([[0.95, 0.05], [0.99, 0.01], [0.9, 0.1]])
    assert float(M.pavpu(probs2, labels, 0.6)) == pytest.approx(2 / 3)


def test_uncertainty_override():
    probs = torch.tensor([[0.99, 0.01], [0.6, 0.4]])
    labels = torch.tensor([0, 1])
    mi = torch.tensor([0.0, 0.3])
    assert float(M.pavpu(probs, labels, 0.1, uncertainty=mi)) == 1.0
    assert float(M.pavpu(probs, labels, 0.5, uncertainty=mi)) == 0.5


# --------------------------------------------------------------------------- numpy agreement
def test_against_numpy(random_case):
    probs, labels = random_case
    p, y = probs.numpy(), labels.numpy()
    assert float(M.accuracy(probs, labels)) == pytest.approx((p.argmax(1) == y).mean(), abs=1e-15)
    assert float(M.nll(probs, labels)) == pytest.approx(
        -np.log(p[np.arange(len(y)), y]).mean(), rel=1e-12
    )
    onehot = np.eye(5)[y]
    assert float(M.brier(probs, labels)) == pytest.approx(
        ((p - onehot) ** 2).sum(1).mean(), rel=1e-12
    )
    for n_bins in (1, 7, 15):
        assert float(M.ece(probs, labels, n_bins)) == pytest.approx(
            np_ece(p, y, n_bins), rel=1e-10, abs=1e-14
        )
    np.testing.assert_allclose(M.predictive_entropy(probs).numpy(), np_entropy(p), rtol=1e-12)
    for thr in (0.2, 0.7, 1.1):
        pav, pac, pui = np_pavpu(p, y, thr)
        assert float(M.pavpu(probs, labels, thr)) == pytest.approx(pav, abs=1e-15)
        assert float(M.p_accurate_given_certain(probs, labels, thr)) == pytest.approx(
            pac, abs=1e-15
        )
        assert float(M.p_uncertain_given_inaccurate(probs, labels, thr)) == pytest.approx(
            pui, abs=1e-15
        )


def test_calibration_bins_against_numpy(random_case):
    probs, labels = random_case
    bins = M.calibration_bins(probs, labels, 10)
    conf = probs.max(1).values.numpy()
    counts = [int(((conf > m / 10) & (conf <= (m + 1) / 10)).sum()) for m in range(10)]
    assert bins.count.tolist() == counts
    assert int(bins.count.sum()) == 200


def test_pavpu_curve(random_case):
    probs, labels = random_case
    p, y = probs.numpy(), labels.numpy()
    h = np_entropy(p)
    ts = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    curve = M.pavpu_curve(probs, labels, ts)
    expected_thr = h.min() + ts.numpy() * (h.max() - h.min())
    np.testing.assert_allclose(curve.thresholds.numpy(), expected_thr, rtol=1e-12)
    ref = np.array([np_pavpu(p, y, t) for t in expected_thr])
    np.testing.assert_allclose(curve.pavpu.numpy(), ref[:, 0], atol=1e-15)
    np.testing.assert_allclose(curve.p_accurate_given_certain.numpy(), ref[:, 1], atol=1e-15)
    np.testing.assert_allclose(curve.p_uncertain_given_inaccurate.numpy(), ref[:, 2], atol=1e-15)
    assert float(curve.mean) == pytest.approx(ref[:, 0].mean(), abs=1e-15)
    # at t = 1 nothing is uncertain: PAvPU equals the accuracy
    assert float(curve.pavpu[-1]) == pytest.approx((p.argmax(1) == y).mean())
    default = M.pavpu_curve(probs, labels)
    assert default.t.numel() == 11 and float(default.t[0]) == 0.0 and float(default.t[-1]) == 1.0


def test_zero_division():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    labels = torch.tensor([0, 0])  # all accurate: P(uncertain | inaccurate) undefined
    assert float(M.p_uncertain_given_inaccurate(probs, labels, 0.1)) == 0.0
    assert float(M.p_uncertain_given_inaccurate(probs, labels, 0.1, zero_division=1.0)) == 1.0
    curve = M.pavpu_curve(probs, labels, zero_division=1.0)
    assert bool((curve.p_uncertain_given_inaccurate == 1.0).all())


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "fn",
    [M.accuracy, M.nll, M.brier, M.ece, lambda p, y: M.pavpu(p, y, 0.5), M.pavpu_curve],
)
def test_bad_inputs(fn):
    good = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="sum to one"):
        fn(torch.tensor([[0.6, 0.6], [0.3, 0.7]]), labels)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        fn(good, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        fn(good, torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        fn(good, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="probs must be finite"):
        fn(torch.tensor([[float("nan"), 0.4], [0.3, 0.7]]), labels)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, C\)"):
        fn(good.reshape(2, 2, 1).expand(2, 2, 3).contiguous(), labels)
    with pytest.raises(TypeError, match="probs must be a floating tensor"):
        fn(torch.tensor([[1, 0], [0, 1]]), labels)


def test_rounding_is_tolerated_but_not_more():
    probs = torch.tensor([[1 + 1e-9, -1e-9], [0.5, 0.5]], dtype=torch.float64)
    assert float(M.accuracy(probs, torch.tensor([0, 1]))) == 0.5
    assert torch.isfinite(M.predictive_entropy(probs)).all()
    assert float(M.pavpu(probs, torch.tensor([0, 1]), 0.5)) == 1.0
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        M.accuracy(torch.tensor([[1.2, -0.2], [0.5, 0.5]]), torch.tensor([0, 1]))


def test_bad_options():
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        M.ece(probs, labels, n_bins=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        M.nll(probs, labels, reduction="avg")
    with pytest.raises(ValueError, match=r"ts must lie in \[0, 1\]"):
        M.pavpu_curve(probs, labels, torch.tensor([0.0, 1.5]))
    with pytest.raises(ValueError, match="uncertainty must be a tensor of shape"):
        M.pavpu(probs, labels, 0.5, uncertainty=torch.zeros(3))
    with pytest.raises(ValueError, match="threshold must not be NaN"):
        M.pavpu(probs, labels, float("nan"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_bins_are_closed_on_the_right_at_an_edge(dtype):
    """Bins are (m/M, (m+1)/M]: a confidence exactly on an edge (0.75 with M = 4, exact in binary)
    belongs to the bin below it. Three predictions, by hand:
    A conf 0.75 wrong, B conf 0.8 right, C conf 0.6 right; ECE = sum over bins of
    |sum(conf - acc)| / N. Right-closed groups {A, C}: (|0.75 - 0.4| + |-0.2|) / 3 = 0.55 / 3;
    left-closed would group {A, B}: (|-0.4| + |0.75 - 0.2|) / 3 = 0.95 / 3."""
    probs = torch.tensor([[0.75, 0.25], [0.2, 0.8], [0.6, 0.4]], dtype=dtype)
    labels = torch.tensor([1, 1, 0])
    bins = M.calibration_bins(probs, labels, n_bins=4)
    assert float(bins.edges[3]) == 0.75  # the edge is exact
    assert bins.count.tolist() == [0.0, 0.0, 2.0, 1.0]
    assert float(bins.confidence[2]) == pytest.approx(0.675, abs=1e-6)
    assert float(bins.accuracy[2]) == 0.5
    assert float(M.ece(probs, labels, n_bins=4)) == pytest.approx(0.55 / 3, abs=1e-6)
    assert abs(0.55 / 3 - 0.95 / 3) > 0.1  # the two conventions are far apart here
    # confidence 1 (the top edge) is in the last bin, and 0.5 (an inner edge) in bin 1 of 4
    top = M.calibration_bins(
        torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=dtype), torch.tensor([0, 0]), 4
    )
    assert top.count.tolist() == [0.0, 1.0, 0.0, 1.0]
