"""Adapters for other libraries' conventions, met where models enter bayesdrop.

:func:`bayesdrop.convert`, :func:`bayesdrop.objective` and :func:`bayesdrop.mc_predict` call a
model and read its prediction through :mod:`bayesdrop.adapters.batches`: keyword batches
(``model(**batch)``, a Hugging Face ``BatchEncoding``), positional batches (``model(*batch)``) and
mapping outputs (a Hugging Face ``ModelOutput``, read at ``output_key="logits"`` by default).
:func:`bayesdrop.convert` makes attention-probability dropout that a model reads but does not
call a called module (:mod:`bayesdrop.adapters.attention`) and finds timm/torchvision drop-path
modules (:mod:`bayesdrop.adapters.drop_path`). Nothing here imports transformers or timm (the
attention adapter imports transformers only for a model that contains a transformers model).
"""

from __future__ import annotations

from .attention import AttentionRouting, route_attention_dropout
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
from .drop_path import DropPathSite, find_drop_paths, replace_drop_paths

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
    "AttentionRouting",
    "route_attention_dropout",
    "DropPathSite",
    "find_drop_paths",
    "replace_drop_paths",
]
