from __future__ import annotations

import pytest
import torch

from bayesdrop_reproduce.datasets.scenes import SCENE_CLASSES, make_scenes


def test_deterministic_and_prefix_stable() -> None:
    a_img, a_lab = make_scenes(6, 24, seed=5)
    b_img, b_lab = make_scenes(6, 24, seed=5)
    c_img, c_lab = make_scenes(3, 24, seed=5)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert torch.equal(a_img[:3], c_img) and torch.equal(a_lab[:3], c_lab)
    d_img, _ = make_scenes(6, 24, seed=6)
    assert not torch.equal(a_img, d_img)


def test_every_class_appears_and_labels_are_valid() -> None:
    images, labels = make_scenes(40, 32, seed=0)
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.float32
    assert labels.min() >= 0 and labels.max() < len(SCENE_CLASSES)
    counts = torch.bincount(labels.flatten(), minlength=len(SCENE_CLASSES))
    assert (counts > 0).all()
    assert 0.5 < counts[0] / labels.numel() < 0.95  # background dominates, shapes are not tiny
    assert (labels != 0).flatten(1).any(1).all()  # every image holds at least one shape


def test_colour_does_not_give_the_class_away() -> None:
    # Mean colour of each shape class is the same up to sampling noise: only shape tells them apart.
    images, labels = make_scenes(200, 24, seed=1, noise_std=0.0)
    pix = images.permute(0, 2, 3, 1).reshape(-1, 3)
    lab = labels.flatten()
    means = torch.stack([pix[lab == k].mean(0) for k in range(1, len(SCENE_CLASSES))])
    assert (means - means.mean(0)).abs().max() < 0.08


def test_noise_free_shapes_are_flat_inside_a_disc() -> None:
    # With no noise, a pixel's value is its shape's texture: a disc region is a single texture, so
    # its pixels vary at most by the stripe amplitude (<= 0.25) around the colour.
    images, labels = make_scenes(1, 32, seed=2, max_shapes=1, noise_std=0.0)
    region = labels[0] != 0
    values = images[0][:, region]
    assert (values.max(1).values - values.min(1).values <= 0.5 + 1e-6).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be >= 1"),
        ({"n": 2, "size": 4}, "size must be >= 8"),
        ({"n": 2, "noise_std": -1.0}, "noise_std"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_scenes(**kwargs)
