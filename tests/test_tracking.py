"""RateTracker: records, drift by hand, no effect on training, subsets of per-weight rates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop import LearnableBernoulliDropout, SparseVariationalDropout
from bayesdrop.tracking import RateTracker


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        LearnableBernoulliDropout(nn.Linear(5, 6), generator=torch.Generator().manual_seed(1)),
        nn.ReLU(),
        nn.Dropout(0.1),
        LearnableBernoulliDropout(nn.Linear(6, 3), generator=torch.Generator().manual_seed(2)),
    )


def _train(model: nn.Module, tracker: RateTracker | None, steps: int = 6) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    opt = torch.optim.Adam(bayesdrop.rate_param_groups(model, rate_lr=0.1), lr=1e-2)
    torch.manual_seed(4)
    for _ in range(steps):
        opt.zero_grad()
        nll = lambda o, t: F.cross_entropy(o, t, reduction="none")  # noqa: E731
        bayesdrop.objective(model, x, y, nll, n_data=100).backward()
        opt.step()
        if tracker is not None:
            tracker.step()


def test_tracking_changes_nothing_in_training():
    plain, watched = _model(), _model()
    _train(plain, None)
    tracker = RateTracker(watched, every=2)
    _train(watched, tracker)
    for (k, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), k
    assert tracker.steps == [0, 2, 4]
    h = tracker.history
    assert list(h) == ["0", "2", "3"] and h["0"].shape == (3, 5) and h["3"].shape == (3, 6)
    # the fixed nn.Dropout stays at 0.1; with every=1 the last record is the current rate
    every_step = RateTracker(watched)
    _train(watched, every_step, steps=2)
    assert torch.equal(every_step.final()["3"], watched[3].p.float())
    assert torch.allclose(h["2"], torch.full((3, 1), 0.1))


def test_drift_and_settled_by_hand():
    model = nn.Sequential(LearnableBernoulliDropout(nn.Linear(2, 1), init_p=0.5))
    tracker = RateTracker(model)
    logits = [0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.1]
    for i, v in enumerate(logits):
        with torch.no_grad():
            model[0].logit_p.fill_(v)
        tracker.record(10 * i)
    # last quarter of 8 records starts at record int(8 * 0.75) = 6 (logit 2.0) and ends at 2.1
    p = lambda v: torch.sigmoid(torch.tensor(v))  # noqa: E731
    drift = tracker.drift()["0"]
    assert drift == pytest.approx(float((model[0].p - p(2.0)).abs().mean()), rel=1e-5)
    assert drift == pytest.approx(float(abs(p(2.1) - p(2.0))), rel=1e-5)
    assert tracker.settled(tol=0.01) == (drift < 0.01)
    assert not tracker.settled(tol=0.01, fraction=1.0)  # from logit 0 (p 0.5): moved a lot


def test_large_modules_recorded_on_a_fixed_subset():
    model = nn.Sequential(SparseVariationalDropout(nn.Linear(40, 30)))
    tracker = RateTracker(model, max_rates=100, seed=7)
    tracker.step()
    tracker.step()
    h = tracker.history["0"]
    assert h.shape == (2, 100)
    full = model[0].p.reshape(-1)
    idx = tracker._subsets["0"]
    assert idx is not None and torch.equal(h[-1], full[idx].float())


def test_bad_input():
    with pytest.raises(TypeError, match="model"):
        RateTracker(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every"):
        RateTracker(_model(), every=0)
    t = RateTracker(_model())
    with pytest.raises(ValueError, match="at least two"):
        t.drift()
    with pytest.raises(ValueError, match="no rates"):
        t.final()
    t.record(3)
    with pytest.raises(ValueError, match="step must increase"):
        t.record(3)
    with pytest.raises(ValueError, match="fraction"):
        t.drift(fraction=1.5)


def _lbd(k: int = 2) -> nn.Sequential:
    return nn.Sequential(LearnableBernoulliDropout(nn.Linear(k, 1), init_p=0.5))


def test_drift_of_rates_moving_in_opposite_directions_does_not_cancel():
    """Two rates of one module move by +0.2 and -0.2 in drop probability: the mean absolute change
    is 0.2 (the mean change, 0, would call a moving module settled)."""
    model = _lbd(2)
    tracker = RateTracker(model)
    logit = lambda q: float(torch.logit(torch.tensor(q, dtype=torch.float64)))  # noqa: E731
    for i in range(5):
        d = 0.05 * i  # p = 0.5 + d and 0.5 - d: the same size of move, opposite directions
        with torch.no_grad():
            model[0].logit_p.copy_(torch.tensor([logit(0.5 + d), logit(0.5 - d)]))
        tracker.record(100 * i)
    ups, downs = tracker.history["0"][-1] - tracker.history["0"][0]
    assert float(ups) == pytest.approx(0.2, abs=1e-6) and float(downs) == pytest.approx(
        -0.2, abs=1e-6
    )
    assert tracker.drift(fraction=1.0)["0"] == pytest.approx(0.2, abs=1e-6)
    # the last quarter: records 3 -> 4, each rate moves by 0.05
    assert tracker.drift()["0"] == pytest.approx(0.05, abs=1e-6)
    assert tracker.settled(tol=0.01) is False
    assert tracker.settled(tol=0.06) is True  # 400 steps >= min_steps, drift 0.05 < 0.06


def test_settled_says_when_a_run_is_too_short_to_tell():
    """Rates that hardly moved over 10 steps: not 'settled' but None (cannot tell) until the
    recorded run spans min_steps steps; a drift at or above tol is False whatever the length."""
    model = _lbd(3)
    tracker = RateTracker(model)
    assert tracker.settled() is None  # no records
    for _ in range(10):
        tracker.step()  # the rates never move: drift 0
    assert tracker.drift() == {"0": 0.0}
    assert tracker.steps[-1] - tracker.steps[0] == 9
    assert tracker.settled() is None
    assert tracker.settled(min_steps=9) is True and tracker.settled(min_steps=10) is None
    for _ in range(91):
        tracker.step()
    assert tracker.steps[-1] == 100 and tracker.settled() is True  # 100 steps: now it can tell
    with torch.no_grad():
        model[0].logit_p += 1.0
    short = RateTracker(model)
    short.step()
    with torch.no_grad():
        model[0].logit_p += 1.0
    short.step()
    assert short.settled() is False  # moved by far more than tol in 1 step: known not settled
    with pytest.raises(ValueError, match="min_steps"):
        tracker.settled(min_steps=0)


def test_a_model_without_learned_rates_is_never_called_settled():
    for model in (
        nn.Sequential(nn.Linear(3, 3)),  # no dropout at all
        nn.Sequential(nn.Dropout(0.2), nn.Linear(3, 3)),  # fixed rates only
        nn.Sequential(bayesdrop.nn.MCDropout(0.2), nn.Linear(3, 3)),
    ):
        tracker = RateTracker(model)
        for _ in range(200):
            tracker.step()
        assert tracker.learned == []
        assert tracker.settled() is None, model
    # a learned module among fixed ones: only it decides
    mixed = nn.Sequential(nn.Dropout(0.2), LearnableBernoulliDropout(nn.Linear(3, 3)))
    tracker = RateTracker(mixed)
    for _ in range(200):
        tracker.step()
    assert tracker.learned == ["1"] and tracker.settled() is True
