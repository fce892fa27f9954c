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
