"""segmentation: channel-wise dropout in every family, and uncertainty that flags the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesdrop import RateTracker
from bayesdrop.metrics.segmentation import mean_iou, patch_statistics
from bayesdrop.objectives import objective
from bayesdrop.uncertainty import mc_predict, mc_sampling
from bayesdrop_reproduce.datasets.scenes import make_scenes
from bayesdrop_reproduce.experiments.segmentation import (
    LEARNED,
    METHODS,
    SegmentationFCN,
    _dropped,
    _pixel_nll,
    _train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", METHODS)
def test_dropout_is_channelwise(method: str) -> None:
    # An identity 1x1 convolution on a constant image: the dropped input is constant over the
    # pixels of each (image, channel), and differs between channels.
    conv = nn.Conv2d(8, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(8).reshape(8, 8, 1, 1))
    layer = _dropped(method, conv)
    torch.manual_seed(1)
    with mc_sampling(layer), torch.no_grad():
        out = layer(torch.ones(4, 8, 5, 5))
    flat = out.flatten(2)
    torch.testing.assert_close(flat, flat[..., :1].expand_as(flat))
    assert flat[..., 0].unique().numel() > 1  # not the identity: noise was drawn


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_deterministic_eval(method: str) -> None:
    torch.manual_seed(0)
    model = SegmentationFCN(method, classes=5, width=4)
    x = torch.randn(2, 3, 16, 12)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (2, 5, 16, 12) and torch.equal(a, b)


def test_uncertainty_flags_the_errors() -> None:
    # The premise of PAvPU: after training, the patches the MC-dropout network is most certain
    # about are far more often right than those it is least certain about; and it segments
    # shapes (mean IoU above the background-only prediction's, after 160 steps).
    x, y = make_scenes(256, 16, seed=0)
    xt, yt = make_scenes(48, 16, seed=1)
    mu, sd = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    x, xt = (x - mu) / sd, (xt - mu) / sd
    torch.manual_seed(0)
    model = SegmentationFCN("mc", classes=5, width=12)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(10):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 16):
            idx = perm[i : i + 16]
            loss = objective(model, x[idx], y[idx], _pixel_nll, n_data=len(x) * 256)
            opt.zero_grad()
            loss.backward()
            opt.step()
    pred = mc_predict(model, xt, num_samples=10, generator=torch.Generator().manual_seed(2))
    probs = pred.probs  # type: ignore[union-attr]
    unc, acc = patch_statistics(probs, yt, window=2)
    order = unc.argsort()
    half = len(order) // 2
    certain, uncertain = acc[order[:half]].double().mean(), acc[order[half:]].double().mean()
    assert certain > 0.95 and uncertain < certain - 0.1
    background_only = mean_iou(torch.zeros_like(yt), yt, 5)
    assert mean_iou(probs.argmax(1), yt, 5) > background_only + 0.05


@pytest.mark.parametrize("method", LEARNED)
def test_training_records_every_steps_rates(method: str, tmp_path) -> None:
    from bayesdrop_reproduce.experiments._framework import RunConfig

    cfg = RunConfig(quick=False, seed=0, device="cpu", out=tmp_path, tiny=True, progress=False)
    x, y = make_scenes(10, 32, seed=0)
    torch.manual_seed(0)
    model = SegmentationFCN(method, 5)
    tracker = RateTracker(model)
    _train(model, x, y, cfg, epochs=2, batch_size=4, lr=3e-3, offset=0, tracker=tracker)
    assert tracker.steps == list(range(2 * 3 + 1))  # the initial rates, then 3 steps per epoch
    hist = tracker.history
    assert len(hist) == 5
    for h in hist.values():
        assert float(h[0].double().mean()) == pytest.approx(0.2, abs=1e-6)  # initial rate
    for name, d in tracker.drift().items():  # 7 records: the last quarter starts at record 5
        assert d == pytest.approx(float((hist[name][-1] - hist[name][5]).abs().mean()))


def test_every_family_normalises_per_ghost_batch() -> None:
    """The LBD rate gradient behind a normalisation layer is summed per ghost batch: every
    family's network uses GhostBatchNorm, so the families differ only in their dropout."""
    from bayesdrop.nn import GhostBatchNorm
    from bayesdrop_reproduce.experiments.segmentation import GHOST_SIZE, METHODS, SegmentationFCN

    for method in METHODS:
        norms = [
            m
            for m in SegmentationFCN(method).modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        assert len(norms) == 5 and all(isinstance(m, GhostBatchNorm) for m in norms)
        assert all(m.ghost_size == GHOST_SIZE for m in norms)
