"""Plots: each returns a Figure drawing the right numbers and writes a PNG; clear errors."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("matplotlib")

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
    ax = fig.axes[0]
    assert f"{100 * float(M.ece(probs, labels, 10)):.2f}%" in ax.get_title()
    bins = M.calibration_bins(probs, labels, 10)
    heights = [p.get_height() for p in ax.containers[0]]
    expected = bins.accuracy[bins.count > 0].tolist()
    assert heights == pytest.approx(expected)


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
    with pytest.raises(ImportError, match=r"bayesdrop\[plot\]"):
        plots.reliability_diagram(*case)
