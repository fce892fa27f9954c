"""The worked conversion examples (examples/conversion_examples.py) on tiny stand-in data."""

from __future__ import annotations

import gzip
import importlib.util
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "examples" / "conversion_examples.py"


@pytest.fixture(scope="module")
def ce():
    spec = importlib.util.spec_from_file_location("conversion_examples", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["conversion_examples"] = module
    spec.loader.exec_module(module)
    return module


def tiny_text(ce):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, 30, (96, 8), generator=g)
    x[::3, 6:] = 0  # padding
    y = (x[:, 0] > 15).long()  # a learnable signal
    return ce.Split(x[:64], y[:64], x[64:], y[64:], 2)


def tiny_images(ce):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    return ce.Split(x[:64], y[:64], x[64:], y[64:], 3)


@pytest.mark.parametrize("task", ["text", "images"])
def test_run_task_reports_every_variant(ce, task):
    data = tiny_text(ce) if task == "text" else tiny_images(ce)
    result = ce.run_task(task, data, seeds=[0], epochs=1, batch_size=32, mc_samples=3)
    summary = result["summary"]
    assert list(summary) == ["fixed", "lbd", "concrete"]
    for variant, entry in summary.items():
        acc, _ = entry["accuracy"]
        assert 0.0 <= acc <= 1.0
        assert all(math.isfinite(entry[k][0]) for k in ("nll", "ece", "mean_pavpu"))
        assert entry["train_time_ratio"] > 0
        if variant == "fixed":
            assert entry["rates"] == {}
        else:
            assert entry["rates"] and all(0 < p < 1 for p in entry["rates"].values())
    rates = summary["lbd"]["rates"]
    if task == "text":  # attention dropout is learned too
        assert "encoder.layers.0.self_attn.attn_drop.dropout" in rates
    else:  # Dropout2d inside a residual block wraps the convolution it feeds
        assert "block1.conv2" in rates
    assert "| lbd |" in ce.table(result)


def test_summarise_mean_and_standard_error(ce):
    rows = [
        {"variant": "fixed", "accuracy": a, "nll": 1.0, "ece": 0.1, "mean_pavpu": 0.5,
         "train_cpu_s": t, "rates": {}}
        for a, t in [(0.5, 1.0), (0.7, 3.0)]
    ] + [
        {"variant": "lbd", "accuracy": a, "nll": 2.0, "ece": 0.2, "mean_pavpu": 0.6,
         "train_cpu_s": t, "rates": {"x": r}}
        for a, t, r in [(0.6, 4.0, 0.2), (0.9, 6.0, 0.4)]
    ]  # fmt: skip
    s = ce.summarise(rows)
    mean, se = s["lbd"]["accuracy"]
    assert mean == pytest.approx(0.75)
    assert se == pytest.approx(np.std([0.6, 0.9], ddof=1) / math.sqrt(2))
    assert s["lbd"]["train_time_ratio"] == pytest.approx(5.0 / 2.0)
    assert s["lbd"]["rates"] == {"x": pytest.approx(0.3)}


def test_fashion_mnist_reader(ce, tmp_path):
    """IDX files written here are read back exactly (then standardised)."""
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([4, 0, 9], dtype=np.uint8)

    def write(name: str, arr: np.ndarray) -> None:
        header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(header + arr.tobytes())

    for prefix in ("train", "t10k"):
        write(f"{prefix}-images-idx3-ubyte.gz", images)
        write(f"{prefix}-labels-idx1-ubyte.gz", labels)
    data = ce.fashion_mnist(2, 3, root=tmp_path)
    assert data.x_train.shape == (2, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    assert data.y_test.tolist() == [4, 0, 9]
    want = (torch.from_numpy(images[:2]).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(data.x_train[:, 0], want)
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        ce.fashion_mnist(root=tmp_path / "missing")
