"""Patch-wise PAvPU and mean IoU against hand-computed cases and explicit numpy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesdrop import metrics as M


def np_patches(p, y, window, stride, acc_thr, ignore=None):
    """Explicit loop over windows: (mean entropy over labelled pixels, accurate flag)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    correct = p.argmax(1) == y
    valid = np.ones_like(y, dtype=bool) if ignore is None else y != ignore
    n, hh, ww = y.shape
    unc, acc = [], []
    for i in range(n):
        for r in range(0, hh - window + 1, stride):
            for c in range(0, ww - window + 1, stride):
                v = valid[i, r : r + window, c : c + window]
                if not v.any():
                    continue
                unc.append(h[i, r : r + window, c : c + window][v].mean())
                acc.append(correct[i, r : r + window, c : c + window][v].mean() >= acc_thr)
    return np.array(unc), np.array(acc)


def np_miou(pred, y, k, ignore=None):
    keep = np.ones_like(y, dtype=bool) if ignore is None else y != ignore
    ious = []
    for c in range(k):
        inter = np.sum((pred == c) & (y == c) & keep)
        union = np.sum(((pred == c) | (y == c)) & keep)
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


@pytest.fixture
def seg_case():
    g = torch.Generator().manual_seed(3)
    logits = 1.5 * torch.randn(2, 4, 7, 9, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    labels = probs.argmax(1).clone()
    flip = torch.rand(labels.shape, generator=g) < 0.35
    labels[flip] = torch.randint(0, 4, (int(flip.sum()),), generator=g)
    return probs, labels


def test_hand_case():
    probs = torch.zeros(1, 2, 2, 4, dtype=torch.float64)
    probs[0, 0] = torch.tensor([[0.9, 0.9, 0.5, 0.6], [0.9, 0.2, 0.5, 0.5]], dtype=torch.float64)
    probs[0, 1] = 1 - probs[0, 0]
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    unc, acc = M.patch_statistics(probs, labels)
    # left patch: 3 of 4 pixels right -> accurate; right patch: 0 of 4 right -> inaccurate
    assert acc.tolist() == [True, False]
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))  # noqa: E731
    np.testing.assert_allclose(unc.numpy(), [(3 * h(0.9) + h(0.2)) / 4, (3 * h(0.5) + h(0.6)) / 4])
    assert float(M.patch_pavpu(probs, labels, 0.6)) == 1.0
    assert float(M.patch_pavpu(probs, labels, 0.7)) == 0.5  # nothing uncertain
    # stricter accuracy threshold: the left patch (3/4 right) becomes inaccurate
    assert float(M.patch_pavpu(probs, labels, 0.6, accuracy_threshold=0.8)) == 0.5
    # a 1x1 window is per-pixel PAvPU
    per_pixel = M.pavpu(probs.permute(0, 2, 3, 1).reshape(-1, 2), labels.reshape(-1), 0.6)
    assert float(M.patch_pavpu(probs, labels, 0.6, window=1)) == float(per_pixel)


@pytest.mark.parametrize(("window", "stride"), [(2, None), (2, 1), (3, 2), (1, None)])
def test_patch_statistics_against_numpy(seg_case, window, stride):
    probs, labels = seg_case
    thr = 0.75
    unc, acc = M.patch_statistics(
        probs, labels, window=window, stride=stride, accuracy_threshold=thr
    )
    ref_unc, ref_acc = np_patches(probs.numpy(), labels.numpy(), window, stride or window, thr)
    np.testing.assert_allclose(unc.numpy(), ref_unc, rtol=1e-12)
    assert acc.numpy().tolist() == ref_acc.tolist()
    assert 0 < acc.sum() < acc.numel()  # both kinds of patch occur


def test_ignore_index(seg_case):
    probs, labels = seg_case
    labels = labels.clone()
    labels[0, :2, :2] = 255  # one whole 2x2 patch unlabelled
    labels[1, 3, 4] = 255
    unc, acc = M.patch_statistics(probs, labels, ignore_index=255)
    ref_unc, ref_acc = np_patches(probs.numpy(), labels.numpy(), 2, 2, 0.5, ignore=255)
    assert unc.numel() == 2 * 3 * 4 - 1
    np.testing.assert_allclose(unc.numpy(), ref_unc, rtol=1e-12)
    assert acc.numpy().tolist() == ref_acc.tolist()
    with pytest.raises(ValueError, match="labels must lie in"):
        M.patch_statistics(probs, labels)


def test_patch_curve_against_numpy(seg_case):
    probs, labels = seg_case
    ref_unc, ref_acc = np_patches(probs.numpy(), labels.numpy(), 2, 2, 0.5)
    curve = M.patch_pavpu_curve(probs, labels, torch.linspace(0, 1, 6, dtype=torch.float64))
    thr = ref_unc.min() + np.linspace(0, 1, 6) * (ref_unc.max() - ref_unc.min())
    np.testing.assert_allclose(curve.thresholds.numpy(), thr, rtol=1e-12)
    ref = [np.mean((ref_acc & (ref_unc <= t)) | (~ref_acc & (ref_unc > t))) for t in thr]
    np.testing.assert_allclose(curve.pavpu.numpy(), ref, atol=1e-15)
    assert float(curve.mean) == pytest.approx(np.mean(ref))


def test_mean_iou(seg_case):
    probs, labels = seg_case
    pred = probs.argmax(1)
    ref = np_miou(pred.numpy(), labels.numpy(), 4)
    assert float(M.mean_iou(probs, labels)) == pytest.approx(ref, rel=1e-12)
    assert float(M.mean_iou(pred, labels, num_classes=4)) == pytest.approx(ref, rel=1e-12)
    cm = M.confusion_matrix(pred, labels, 4)
    assert int(cm.sum()) == labels.numel()
    assert float(M.pixel_accuracy(pred, labels, 4)) == pytest.approx(
        (pred == labels).double().mean().item()
    )
    labels2 = labels.clone()
    labels2[0] = -1
    ref2 = np_miou(pred.numpy(), labels2.numpy(), 4, ignore=-1)
    assert float(M.mean_iou(pred, labels2, 4, ignore_index=-1)) == pytest.approx(ref2, rel=1e-12)


def test_mean_iou_hand_case():
    pred = torch.tensor([[0, 0, 1, 1]])
    labels = torch.tensor([[0, 1, 1, 1]])
    # class 0: 1/2, class 1: 2/3, class 2 absent (left out of the mean)
    assert float(M.mean_iou(pred, labels, num_classes=3)) == pytest.approx((1 / 2 + 2 / 3) / 2)
    iou, present = M.per_class_iou(pred, labels, 3)
    assert present.tolist() == [True, True, False]
    assert iou.tolist() == pytest.approx([0.5, 2 / 3, 0.0])


def test_bad_inputs():
    probs = torch.full((1, 2, 4, 4), 0.5)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, C, H, W\)"):
        M.patch_pavpu(probs[0], labels, 0.5)
    with pytest.raises(ValueError, match=r"labels must have shape \(1, 4, 4\)"):
        M.patch_pavpu(probs, labels[:, :3], 0.5)
    with pytest.raises(ValueError, match="sum to one"):
        M.patch_pavpu(probs * 1.5, labels, 0.5)
    with pytest.raises(ValueError, match="window must be >= 1"):
        M.patch_pavpu(probs, labels, 0.5, window=0)
    with pytest.raises(ValueError, match="does not fit"):
        M.patch_pavpu(probs, labels, 0.5, window=5)
    with pytest.raises(ValueError, match=r"accuracy_threshold must be in \(0, 1\]"):
        M.patch_pavpu(probs, labels, 0.5, accuracy_threshold=0.0)
    with pytest.raises(ValueError, match="num_classes is needed"):
        M.mean_iou(labels, labels)
    with pytest.raises(ValueError, match=r"pred must lie in \[0, 1\]"):
        M.mean_iou(labels + 2, labels, num_classes=2)
