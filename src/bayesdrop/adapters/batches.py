r"""How a batch is passed to a model and which of its outputs is the prediction.

bayesdrop's entry points (:func:`bayesdrop.convert`, :func:`bayesdrop.objective`,
:func:`bayesdrop.mc_predict`) accept the batches and outputs of the common model libraries
through the rules of this module, and only through them:

**Calling the model** (:func:`call_model`)

* a ``Tensor``: ``model(inputs)``;
* a mapping (``dict``, Hugging Face ``BatchEncoding``): ``model(**inputs)``;
* a ``tuple`` or ``list``: ``model(*inputs)``.

**The prediction** (:func:`prediction`): a ``Tensor`` output is the prediction; a mapping
(``dict``, Hugging Face ``ModelOutput``, which is an ``OrderedDict``) gives its entry
``output_key``, ``"logits"`` unless told otherwise; a ``tuple`` or ``list`` gives its first element
(the convention of models that return ``(prediction, *extras)``, e.g. Hugging Face models called
with ``return_dict=False``).

**The batch dimension of a keyword or positional batch** (:func:`batch_size`,
:func:`map_batched`, :func:`tile_batch`, :func:`slice_batch`): the batch size is the size along
``batch_dim`` of the first tensor of the batch (in the mapping's or sequence's order, nested
containers searched depth first) that has that dimension. An entry is *batched* when it is a
tensor whose dimension ``batch_dim`` has the batch size; only batched entries are tiled, sliced
or repeated, everything else (a tensor without the batch dimension, a flag such as
``return_dict=True``, ``None``) is passed through unchanged. A mapping comes back as a plain
``dict`` with the same keys in the same order (``model(**batch)`` is the same call), a tuple,
list or named tuple as its own type.

The library core never imports transformers: a ``ModelOutput`` is recognised as the mapping it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

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

#: The entry of a mapping output (Hugging Face ``ModelOutput``) read when no ``output_key`` is given.
DEFAULT_OUTPUT_KEY = "logits"


def check_batch(inputs: Any, name: str = "inputs") -> None:
    """Raise ``TypeError`` (naming ``name``) unless ``inputs`` is a batch :func:`call_model` takes.

    Accepted: a ``Tensor``; a mapping with string keys; a tuple or list (not empty). A mapping or
    sequence must hold at least one tensor (at any depth), which carries the batch dimension.
    """
    if isinstance(inputs, Tensor):
        return
    if isinstance(inputs, Mapping):
        bad = [k for k in inputs if not isinstance(k, str)]
        if bad:
            raise TypeError(
                f"{name} is a mapping passed as model(**{name}), so its keys must be strings, "
                f"but it has {bad[0]!r}"
            )
    elif not isinstance(inputs, (tuple, list)):
        raise TypeError(
            f"{name} must be a Tensor (model({name})), a mapping such as a dict or a Hugging Face "
            f"BatchEncoding (model(**{name})) or a tuple/list (model(*{name})), but got "
            f"{type(inputs).__name__}"
        )
    elif len(inputs) == 0:
        raise TypeError(f"{name} must not be an empty {type(inputs).__name__}")
    if next(tensors(inputs), None) is None:
        raise TypeError(
            f"{name} ({type(inputs).__name__}) holds no tensor, so it has no batch dimension"
        )


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """Run ``model`` on a batch: ``model(x)`` for a tensor, ``model(**x)`` for a mapping,
    ``model(*x)`` for a tuple/list.

    Args:
        model: any callable (an ``nn.Module``).
        inputs: the batch.

    Returns:
        Whatever the model returns (see :func:`prediction`).

    Raises:
        TypeError: ``inputs`` is none of the three (the message names ``inputs``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class TwoInputs(nn.Module):
        ...     def forward(self, input_ids, scale=1.0):
        ...         return input_ids.float() * scale
        >>> call_model(TwoInputs(), {"input_ids": torch.ones(2, 3), "scale": 2.0}).sum().item()
        12.0
    """
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise TypeError(
        "inputs must be a Tensor (model(inputs)), a mapping such as a dict or a Hugging Face "
        "BatchEncoding (model(**inputs)) or a tuple/list (model(*inputs)), but got "
        f"{type(inputs).__name__}"
    )


def prediction(output: Any, output_key: str | None = None) -> Tensor:
    """The prediction tensor in a model's output.

    * a ``Tensor`` is returned as it is;
    * a mapping (``dict``, Hugging Face ``ModelOutput``) gives ``output[output_key]``, with
      ``output_key="logits"`` when ``None``;
    * a ``tuple`` or ``list`` gives its first element (models returning
      ``(prediction, *extras)``; ``output_key`` must then be ``None``).

    Args:
        output: what the model returned.
        output_key: the entry of a mapping output to read (``None``: ``"logits"``).

    Returns:
        The prediction tensor.

    Raises:
        ValueError: the mapping has no entry ``output_key`` (the message lists those it has), or
            ``output_key`` was given for an output that is not a mapping.
        TypeError: ``output_key`` is not a string, the output is of another type, or the entry
            read is not a tensor.

    Example:
        >>> import torch
        >>> out = {"loss": torch.tensor(0.5), "logits": torch.zeros(2, 3)}
        >>> prediction(out).shape, prediction(out, "loss").shape
        (torch.Size([2, 3]), torch.Size([]))
    """
    if output_key is not None and not isinstance(output_key, str):
        raise TypeError(f"output_key must be a string or None, but got {type(output_key).__name__}")
    if isinstance(output, Tensor):
        if output_key is not None:
            raise ValueError(
                f"output_key={output_key!r} was given but the model returned a Tensor, not a "
                "mapping; leave output_key=None"
            )
        return output
    if isinstance(output, Mapping):
        key = DEFAULT_OUTPUT_KEY if output_key is None else output_key
        if key not in output:
            raise ValueError(
                f"the model returned a {type(output).__name__} without an entry {key!r}; its "
                f"entries are {list(output.keys())}: pass output_key= one of them"
            )
        value = output[key]
        where = f"{type(output).__name__}[{key!r}]"
    elif isinstance(output, (tuple, list)):
        if output_key is not None:
            raise ValueError(
                f"output_key={output_key!r} was given but the model returned a "
                f"{type(output).__name__}, whose prediction is its first element; leave "
                "output_key=None"
            )
        if len(output) == 0:
            raise TypeError(f"the model returned an empty {type(output).__name__}")
        value = output[0]
        where = f"the first element of the {type(output).__name__} it returned"
    else:
        raise TypeError(
            "the model must return a Tensor, a mapping with the prediction under output_key "
            f"(e.g. a Hugging Face ModelOutput) or a tuple/list, but it returned "
            f"{type(output).__name__}"
        )
    if not isinstance(value, Tensor):
        raise TypeError(
            f"the prediction {where} must be a Tensor, but it is {type(value).__name__}"
        )
    return value


def tensors(inputs: Any) -> Iterator[Tensor]:
    """Every tensor of a batch, depth first, in the mapping's or sequence's order."""
    if isinstance(inputs, Tensor):
        yield inputs
    elif isinstance(inputs, Mapping):
        for v in inputs.values():
            yield from tensors(v)
    elif isinstance(inputs, (tuple, list)):
        for v in inputs:
            yield from tensors(v)


def batch_size(inputs: Any, batch_dim: int = 0, name: str = "inputs") -> int:
    """Size along ``batch_dim`` of the first tensor of ``inputs`` that has that dimension.

    Raises:
        TypeError: ``inputs`` is not a batch (see :func:`check_batch`).
        ValueError: no tensor of ``inputs`` has dimension ``batch_dim``.

    Example:
        >>> import torch
        >>> batch_size({"input_ids": torch.zeros(4, 7), "return_dict": True})
        4
    """
    check_batch(inputs, name)
    shapes = []
    for t in tensors(inputs):
        if t.dim() > batch_dim:
            return int(t.shape[batch_dim])
        shapes.append(tuple(t.shape))
    raise ValueError(
        f"{name} has no batch dimension batch_dim={batch_dim}: its tensors have shapes {shapes}"
    )


def _is_batched(t: Tensor, batch: int, batch_dim: int) -> bool:
    return t.dim() > batch_dim and int(t.shape[batch_dim]) == batch


def map_batched(inputs: Any, fn: Callable[[Tensor], Tensor], batch: int, batch_dim: int = 0) -> Any:
    """``inputs`` with ``fn`` applied to every batched entry (a tensor whose dimension
    ``batch_dim`` has size ``batch``); all other entries are passed through unchanged.

    The structure is kept: a mapping becomes a ``dict`` with the same keys in the same order,
    a tuple, list or named tuple keeps its type.
    """
    if isinstance(inputs, Tensor):
        return fn(inputs) if _is_batched(inputs, batch, batch_dim) else inputs
    if isinstance(inputs, Mapping):
        return {k: map_batched(v, fn, batch, batch_dim) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        items = [map_batched(v, fn, batch, batch_dim) for v in inputs]
        if hasattr(inputs, "_fields"):  # a named tuple
            return type(inputs)(*items)
        return type(inputs)(items)
    return inputs


def tile_batch(inputs: Any, copies: int, batch_dim: int = 0, batch: int | None = None) -> Any:
    """``copies`` copies of the batch, one after another along ``batch_dim``.

    Every batched entry ``t`` becomes ``torch.cat([t] * copies, dim=batch_dim)`` (rows
    ``s*B .. (s+1)*B - 1`` hold copy ``s``); the rest is passed through unchanged.

    Args:
        inputs: the batch.
        copies: number of copies (``>= 1``; 1 returns ``inputs`` itself).
        batch_dim: the batch dimension.
        batch: the batch size (``None``: :func:`batch_size`).

    Example:
        >>> import torch
        >>> tiled = tile_batch({"ids": torch.arange(2).view(2, 1), "bias": torch.ones(3)}, 3)
        >>> tiled["ids"].flatten().tolist(), tiled["bias"].shape
        ([0, 1, 0, 1, 0, 1], torch.Size([3]))
    """
    if copies == 1:
        return inputs
    if batch is None:
        batch = batch_size(inputs, batch_dim)
    return map_batched(inputs, lambda t: torch.cat([t] * copies, dim=batch_dim), batch, batch_dim)


def slice_batch(
    inputs: Any, start: int, stop: int, batch_dim: int = 0, batch: int | None = None
) -> Any:
    """Examples ``start .. stop - 1`` of the batch (every batched entry narrowed along
    ``batch_dim``; the rest passed through unchanged)."""
    if batch is None:
        batch = batch_size(inputs, batch_dim)
    return map_batched(inputs, lambda t: t.narrow(batch_dim, start, stop - start), batch, batch_dim)
