"""Real data sets read offline (see ../shared/DATA.md) and synthetic ones generated in code."""

from __future__ import annotations

from .images import IMAGE_DATASETS, ImageData, load_images

__all__ = [
    "IMAGE_DATASETS",
    "ImageData",
    "load_images",
]
