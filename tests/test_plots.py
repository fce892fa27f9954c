"""Plots: each returns a Figure drawing the right numbers and writes a PNG; clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # render without a display

from matplotlib.figure import Figure  # noqa: E402

from bayesdrop import metrics as M  # noqa: E402
from bayesdrop import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(100, 3, generator=g, dtype=torch.float64), 1)
    labels = torch.randint(0, 3, (100,), generator=g)
    labels[:60] = probs[:60].argmax(1)
    return probs, labels


def test_reliability_diagram(case, tmp_path):
    probs, labels = case
    path = tmp_path / "rel.png"
    fig = plots.reliability_diagram(probs, labels, n_bins=10, path=path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == PNG_MAGIC
    ax, ax_count = fig.axes
    ece = float(M.ece(probs, labels, 10))
    bins = M.calibration_bins(probs, labels, 10)
    assert float(bins.ece) == ece  # the plotted bins are the metric's own
    assert f"{100 * ece:.2f}%" in ax.get_title()
    filled = bins.count > 0
    acc_bars, gap_bars = ax.containers[0], ax.containers[1]
    assert [p.get_height() for p in acc_bars] == pytest.approx(bins.accuracy[filled].tolist())
    # accuracy + gap reaches the mean confidence of each bin
    tops = [p.get_y() + p.get_height() for p in gap_bars]
    assert tops == pytest.approx(bins.confidence[filled].tolist())
    assert [p.get_x() for p in acc_bars] == pytest.approx(bins.edges[:-1][filled].tolist())
    # the count panel shows every bin's count, empty bins included
    counts = [p.get_height() for p in ax_count.containers[0]]
    assert counts == bins.count.tolist() and sum(counts) == len(labels)
    # the bins can be passed directly
    again = plots.reliability_diagram(bins)
    assert [p.get_height() for p in again.axes[1].containers[0]] == counts
    with pytest.raises(TypeError, match="needs labels"):
        plots.reliability_diagram(probs)


def test_ood_histogram(tmp_path):
    g = torch.Generator().manual_seed(3)
    s_in = torch.rand(200, generator=g, dtype=torch.float64)
    s_out = 0.4 + torch.rand(50, generator=g, dtype=torch.float64)
    path = tmp_path / "ood.png"
    fig = plots.ood_histogram(s_in, s_out, bins=7, score_name="entropy", path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    ax = fig.axes[0]
    both = torch.cat([s_in, s_out]).numpy()
    edges = np.linspace(both.min(), both.max(), 8)  # shared bins spanning both sets
    for bars, scores in zip(ax.containers, (s_in, s_out)):
        counts, _ = np.histogram(scores.numpy(), bins=edges)
        width = np.diff(edges)
        assert [p.get_height() for p in bars] == pytest.approx(counts / counts.sum() / width)
        # densities integrate to one
        assert sum(p.get_height() * p.get_width() for p in bars) == pytest.approx(1.0)
    title = ax.get_title()
    assert f"AUROC = {float(M.ood_auroc(s_in, s_out)):.3f}" in title
    assert f"{float(M.fpr_at_tpr(s_in, s_out)):.3f}" in title
    assert ax.get_xlabel() == "entropy"
    # equal scores still plot (one bin around them)
    assert isinstance(plots.ood_histogram([1.0, 1.0], [1.0]), Figure)
    with pytest.raises(ValueError, match="out_scores must be finite"):
        plots.ood_histogram(s_in, [float("nan")])
    with pytest.raises(ValueError, match="bins must be an int"):
        plots.ood_histogram(s_in, s_out, bins=0)


def test_pavpu_plot(case, tmp_path):
    probs, labels = case
    curves = {
        "a": M.pavpu_curve(probs, labels),
        "b": M.pavpu_curve(probs, labels, uncertainty=probs[:, 0]),
    }
    path = tmp_path / "pavpu.png"
    fig = plots.pavpu_plot(curves, title="PAvPU", path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert list(lines[0].get_ydata()) == pytest.approx(curves["a"].pavpu.tolist())
    assert f"{float(curves['a'].mean):.3f}" in fig.axes[0].get_legend().get_texts()[0].get_text()
    assert isinstance(plots.pavpu_plot(curves["a"]), Figure)
    with pytest.raises(TypeError, match="PAvPUCurve"):
        plots.pavpu_plot({"a": 1.0})


def test_dropout_rate_plot(tmp_path):
    history = [
        {"0": torch.tensor([0.5, 0.5, 0.5]), "3": torch.tensor([0.2])},
        {"0": torch.tensor([0.4, 0.5, 0.6]), "3": torch.tensor([0.25])},
        {"0": torch.tensor([0.1, 0.5, 0.9]), "3": torch.tensor([0.3])},
    ]
    path = tmp_path / "rates.png"
    fig = plots.dropout_rate_plot(history, steps=[1, 2, 3], path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["0", "3"]
    assert list(lines[0].get_ydata()) == pytest.approx([0.5, 0.5, 0.5])
    assert list(lines[1].get_ydata()) == pytest.approx([0.2, 0.25, 0.3])
    assert len(fig.axes[0].collections) == 1  # a band only for the layer with several rates
    mapping = {"a": [torch.tensor([0.1]), torch.tensor([0.2])]}
    assert isinstance(plots.dropout_rate_plot(mapping), Figure)
    with pytest.raises(ValueError, match="steps has 2 values"):
        plots.dropout_rate_plot(history, steps=[1, 2])
    with pytest.raises(ValueError, match="band must be"):
        plots.dropout_rate_plot(history, band=(0.9, 0.1))
    with pytest.raises(TypeError, match="history must be"):
        plots.dropout_rate_plot(3)
    with pytest.raises(ValueError, match="same layers"):
        plots.dropout_rate_plot([{"a": torch.tensor([0.1])}, {"b": torch.tensor([0.1])}])


def test_missing_matplotlib_gives_a_clear_error(monkeypatch, case):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    probs, labels = case
    calls = [
        lambda: plots.reliability_diagram(probs, labels),
        lambda: plots.pavpu_plot(M.pavpu_curve(probs, labels)),
        lambda: plots.ood_histogram([0.1, 0.2], [0.3]),
        lambda: plots.dropout_rate_plot([{"a": torch.tensor([0.1])}]),
    ]
    for call in calls:
        with pytest.raises(ImportError, match=r"pip install 'bayesdrop\[plot\]'"):
            call()


def test_rate_trajectories_draws_the_trackers_history(tmp_path):
    from torch import nn

    from bayesdrop import RateTracker
    from bayesdrop.nn import LearnableBernoulliDropout

    model = nn.Sequential(
        LearnableBernoulliDropout(nn.Linear(3, 12), init_p=0.3),
        LearnableBernoulliDropout(nn.Linear(12, 2), init_p=0.2),
    )
    tracker = RateTracker(model, every=2)
    g = torch.Generator().manual_seed(0)
    for step in range(9):
        with torch.no_grad():  # stands in for optimiser steps; model[0] stops after step 5
            for m in model if step < 6 else model[1:]:
                m.logit_p += 0.3 * torch.randn(m.logit_p.shape, generator=g)
        tracker.step()
    history = tracker.history
    path = tmp_path / "traj.png"
    fig = plots.rate_trajectories(tracker, max_lines=5, path=path, min_steps=8)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert history["0"].shape == (5, 3) and history["1"].shape == (5, 12)
    small, large = fig.axes[0], fig.axes[1]
    # three rates: one line each, exactly the recorded values at the recorded steps
    assert len(small.get_lines()) == 3
    for k, line in enumerate(small.get_lines()):
        assert (
            list(line.get_xdata()) == [0.0, 2.0, 4.0, 6.0, 8.0] == [float(s) for s in tracker.steps]
        )
        np.testing.assert_allclose(line.get_ydata(), history["0"][:, k].double().numpy())
    # twelve rates > max_lines: the mean line and a quantile band
    (mean_line,) = large.get_lines()
    np.testing.assert_allclose(mean_line.get_ydata(), history["1"].double().mean(1).numpy())
    band = large.collections[0].get_paths()[0].vertices[:, 1]
    lo = torch.quantile(history["1"].double(), 0.1, dim=1).numpy()
    hi = torch.quantile(history["1"].double(), 0.9, dim=1).numpy()
    assert band.min() == pytest.approx(lo.min()) and band.max() == pytest.approx(hi.max())
    # titles state the drift over the last quarter and the settling criterion
    drift = tracker.drift(0.25)
    assert drift["0"] == 0.0 and drift["1"] > 0.01
    for ax, name in ((small, "0"), (large, "1")):
        assert f"drift {drift[name]:.3g}" in ax.get_title()
        assert ("(settled)" in ax.get_title()) == (drift[name] < 0.01)
    # the same 8-step run is too short to tell by the default criterion (100 steps)
    titles = [ax.get_title() for ax in plots.rate_trajectories(tracker).axes if ax.get_visible()]
    assert titles[0].endswith("(too short to tell)") and titles[1].endswith("(not settled)")
    assert tracker.settled() is False and tracker.settled(tol=1.0) is None
    assert plots.rate_trajectories(tracker, modules=["1"]).axes[0].get_title().startswith("1:")
    with pytest.raises(TypeError, match="RateTracker"):
        plots.rate_trajectories(history)
    with pytest.raises(ValueError, match="were not recorded"):
        plots.rate_trajectories(tracker, modules=["2"])
    with pytest.raises(ValueError, match="no records"):
        plots.rate_trajectories(RateTracker(model))


def _all_plots(case, tracker):
    probs, labels = case
    return {
        "reliability_diagram": lambda path: plots.reliability_diagram(probs, labels, path=path),
        "pavpu_plot": lambda path: plots.pavpu_plot(M.pavpu_curve(probs, labels), path=path),
        "ood_histogram": lambda path: plots.ood_histogram([0.1, 0.2], [0.3], path=path),
        "dropout_rate_plot": lambda path: plots.dropout_rate_plot(
            [{"a": torch.tensor([0.1])}], path=path
        ),
        "rate_trajectories": lambda path: plots.rate_trajectories(tracker, path=path),
    }


@pytest.fixture
def tracker():
    from torch import nn

    from bayesdrop import RateTracker
    from bayesdrop.nn import LearnableBernoulliDropout

    t = RateTracker(nn.Sequential(LearnableBernoulliDropout(nn.Linear(3, 2))))
    t.step()
    t.step()
    return t


def test_the_extension_chooses_the_format(case, tracker, tmp_path):
    magic = {"png": PNG_MAGIC, "pdf": b"%PDF", "svg": b"<?xml", "eps": b"%!PS", "ps": b"%!PS"}
    assert set(magic) == set(plots.FORMATS)
    for name, draw in _all_plots(case, tracker).items():
        for ext, head in magic.items():
            path = tmp_path / f"{name}.{ext.upper() if ext == 'pdf' else ext}"
            draw(path)
            assert path.read_bytes().startswith(head), (name, ext)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("figure.jpg", r"has extension '\.jpg'; .* one of \.png, \.pdf, \.svg, \.eps, \.ps"),
        ("figure.txt", r"extension '\.txt'"),
        ("figure", "has no extension"),
        ("missing-folder/figure.png", "does not exist"),
        (".", "no extension|is a directory"),
    ],
)
def test_a_bad_path_is_refused_before_anything_is_drawn(
    case, tracker, tmp_path, monkeypatch, bad, match
):
    """Formerly any extension got PNG bytes, and a missing folder failed only after drawing."""

    def no_drawing(*args, **kwargs):
        raise AssertionError("drew before checking the path")

    monkeypatch.setattr(plots, "_new_figure", no_drawing)
    for draw in _all_plots(case, tracker).values():
        with pytest.raises(ValueError, match=match):
            draw(tmp_path / bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        plots.ood_histogram([0.1], [0.2], path=tmp_path / "dir.png")
    with pytest.raises(TypeError, match="path must be a str"):
        plots.ood_histogram([0.1], [0.2], path=3)  # type: ignore[arg-type]
