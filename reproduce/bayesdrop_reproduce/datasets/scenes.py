"""Synthetic segmentation scenes generated in code: textured shapes on textured backgrounds.

No real segmentation data set is available offline (CamVid, used by the LBD paper §3.2.2, is
not), so :func:`make_scenes` draws a seeded stand-in: every image has a nearly grey, striped
background and one to ``max_shapes`` shapes (disc, square, triangle, ring) of saturated colour
with a faint grating, at random positions and sizes; later shapes occlude earlier ones, and
Gaussian pixel noise is added. Colours and textures are drawn from the same distribution for
every shape class, so telling shape from background is local (saturation) but a pixel's *class*
is decided by the geometry of its neighbourhood, never by its colour: a small fully-convolutional
network has to learn shapes, and boundaries and occlusions leave genuinely ambiguous pixels.

Example:
    >>> images, labels = make_scenes(2, size=16, seed=0)
    >>> tuple(images.shape), tuple(labels.shape), labels.dtype
    ((2, 3, 16, 16), (2, 16, 16), torch.int64)
    >>> SCENE_CLASSES
    ('background', 'disc', 'square', 'triangle', 'ring')
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_int, check_positive

__all__ = ["SCENE_CLASSES", "make_scenes"]

#: Class names; the label of a pixel is its index here.
SCENE_CLASSES = ("background", "disc", "square", "triangle", "ring")


def _stripes(grid_y: Tensor, grid_x: Tensor, gen: torch.Generator) -> Tensor:
    """A random oriented sine grating ``(H, W)`` in [-1, 1]."""
    angle = torch.rand((), generator=gen) * math.pi
    freq = torch.rand((), generator=gen) * 0.6 + 0.3
    phase = torch.rand((), generator=gen) * 2 * math.pi
    return torch.sin(freq * (grid_x * torch.cos(angle) + grid_y * torch.sin(angle)) + phase)


def _background(grid_y: Tensor, grid_x: Tensor, gen: torch.Generator) -> Tensor:
    """A nearly grey striped texture ``(3, H, W)``: grey level, slight tint, grating."""
    grey = torch.rand((), generator=gen) * 0.4 + 0.3
    tint = (torch.rand(3, 1, 1, generator=gen) - 0.5) * 0.1
    amplitude = torch.rand((), generator=gen) * 0.1 + 0.05
    return grey + tint + amplitude * _stripes(grid_y, grid_x, gen)


def _foreground(grid_y: Tensor, grid_x: Tensor, gen: torch.Generator) -> Tensor:
    """A saturated colour of random hue with a faint grating ``(3, H, W)``."""
    hue = torch.rand((), generator=gen) * 6
    saturation = torch.rand((), generator=gen) * 0.3 + 0.7
    value = torch.rand((), generator=gen) * 0.4 + 0.6
    # HSV -> RGB: channel k's distance on the hue circle from its primary decides its level
    k = torch.tensor([5.0, 3.0, 1.0]).reshape(3, 1, 1)
    h = (k + hue) % 6
    level = torch.minimum(h, 4 - h).clamp(0, 1)
    colour = value * (1 - saturation * level)
    amplitude = torch.rand((), generator=gen) * 0.08
    return colour + amplitude * _stripes(grid_y, grid_x, gen)


def _shape_mask(
    kind: int, grid_y: Tensor, grid_x: Tensor, size: int, gen: torch.Generator
) -> Tensor:
    """Boolean mask ``(H, W)`` of one shape of class ``kind`` (1..4) at a random place."""
    r = float(torch.empty(()).uniform_(0.15 * size, 0.28 * size, generator=gen))
    cy = float(torch.empty(()).uniform_(r * 0.5, size - r * 0.5, generator=gen))
    cx = float(torch.empty(()).uniform_(r * 0.5, size - r * 0.5, generator=gen))
    dy, dx = grid_y - cy, grid_x - cx
    dist = torch.sqrt(dy**2 + dx**2)
    if kind == 1:  # disc
        return dist <= r
    if kind == 2:  # axis-aligned square
        return (dy.abs() <= r * 0.85) & (dx.abs() <= r * 0.85)
    if kind == 3:  # upward triangle: apex at the top, base at the bottom
        h = 1.8 * r
        top = cy - h / 2
        t = (grid_y - top) / h  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (dx.abs() <= t * r)
    return (dist <= r) & (dist >= r * 0.55)  # ring


def make_scenes(
    n: int,
    size: int = 32,
    *,
    max_shapes: int = 3,
    noise_std: float = 0.08,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` seeded scenes and their per-pixel labels.

    Args:
        n: number of images.
        size: side length in pixels (square images), at least 8.
        max_shapes: each image holds between 1 and ``max_shapes`` shapes.
        noise_std: standard deviation of the i.i.d. Gaussian pixel noise added at the end.
        seed: the scenes are a deterministic function of ``(n, size, max_shapes, noise_std, seed)``;
            the first ``k`` scenes do not depend on ``n``.

    Returns:
        ``images`` float32 ``(n, 3, size, size)`` (roughly in [0, 1]) and ``labels`` int64
        ``(n, size, size)`` with values indexing :data:`SCENE_CLASSES`.
    """
    n = check_int("n", n, minimum=1)
    size = check_int("size", size, minimum=8)
    max_shapes = check_int("max_shapes", max_shapes, minimum=1)
    noise_std = check_positive("noise_std", noise_std, allow_zero=True)
    gen = torch.Generator().manual_seed(seed)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(n, 3, size, size)
    labels = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        image = _background(grid_y, grid_x, gen)
        count = int(torch.randint(1, max_shapes + 1, (), generator=gen))
        for _ in range(count):
            kind = int(torch.randint(1, len(SCENE_CLASSES), (), generator=gen))
            mask = _shape_mask(kind, grid_y, grid_x, size, gen)
            image = torch.where(mask, _foreground(grid_y, grid_x, gen), image)
            labels[i][mask] = kind
        noise = torch.randn(3, size, size, generator=gen) * noise_std
        images[i] = image + noise
    return images, labels
