"""Adapters for other libraries' conventions, met where models enter bayesdrop.

:func:`bayesdrop.convert`, :func:`bayesdrop.objective` and :func:`bayesdrop.mc_predict` call a
model and read its prediction through :mod:`bayesdrop.adapters.batches`: keyword batches
(``model(**batch)``, a Hugging Face ``BatchEncoding``), positional batches (``model(*batch)``) and
mapping outputs (a Hugging Face ``ModelOutput``, read at ``output_key="logits"`` by default).
Nothing here imports transformers or timm.
"""

from __future__ import annotations

from .batches import (
    DEFAULT_OUTPUT_KEY,
    batch_size,
    call_model,
    check_batch,
    map_batched,
    prediction,
    slice_batch,
    tensors,
    tile_batch,
)

__all__ = [
    "DEFAULT_OUTPUT_KEY",
    "call_model",
    "check_batch",
    "prediction",
    "tensors",
    "batch_size",
    "map_batched",
    "tile_batch",
    "slice_batch",
]
