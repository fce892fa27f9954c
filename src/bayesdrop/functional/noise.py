"""The random draws of every family: uniforms and standard normals, with an optional generator.

Every family draws its noise through :func:`uniform` and :func:`standard_normal`, for two reasons
that matter under ``torch.compile``:

* ``torch.rand(shape, generator=None)`` and ``torch.rand(shape)`` draw the same numbers in eager
  mode, but only the second can be traced when ``shape`` changes between calls (a short last
  batch): with dynamic shapes an explicit ``generator=None`` makes the compiler call the factory
  with a symbolic size it cannot run ("SymIntArrayRef expected to contain only concrete
  integers"). These functions pass ``generator`` only when there is one.
* Inside a compiled graph the draw is the opaque operator ``bayesdrop::uniform`` (or
  ``bayesdrop::standard_normal``), which runs ATen's own generator as eager mode does, instead of
  the compiler's generated random numbers: on a CPU those cost several times ATen's draw
  (they made a compiled training step slower than the eager one), and they would not follow the
  global random state, which :func:`bayesdrop.objective` replays for the second evaluation of
  the antithetic pair. A compiled model therefore draws the same noise as the eager model from
  the same seed. The operators are tagged ``nondeterministic_seeded``, so the compiler neither
  merges two draws nor recomputes one in the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["uniform", "standard_normal", "seeded_uniform"]

_SEEDED = (torch.Tag.nondeterministic_seeded,)


@torch.library.custom_op("bayesdrop::uniform", mutates_args=(), tags=_SEEDED)
def _uniform_op(shape: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.rand(shape, dtype=dtype, device=device)


@torch.library.custom_op("bayesdrop::standard_normal", mutates_args=(), tags=_SEEDED)
def _standard_normal_op(shape: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.randn(shape, dtype=dtype, device=device)


@_uniform_op.register_fake
@_standard_normal_op.register_fake
def _draw_fake(shape: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


@torch.library.custom_op("bayesdrop::seeded_uniform", mutates_args=(), tags=_SEEDED)
def _seeded_uniform_op(
    shape: list[int], seed: Tensor, dtype: torch.dtype, device: torch.device
) -> Tensor:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed.item()))
    return torch.rand(shape, dtype=dtype, device=device, generator=g)


@_seeded_uniform_op.register_fake
def _seeded_fake(
    shape: list[int], seed: Tensor, dtype: torch.dtype, device: torch.device
) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def _device(device: torch.device | str | None) -> torch.device:
    return torch.get_default_device() if device is None else torch.device(device)


def _draw(
    eager: Any,
    traced: Any,
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    """``eager(shape, ...)`` with ``generator`` passed only when given; inside a compiled graph
    (no generator) the tagged operator ``traced`` instead."""
    if generator is not None:
        return eager(shape, dtype=dtype, device=device, generator=generator)
    if torch.compiler.is_compiling():
        return traced(list(shape), dtype, _device(device))
    return eager(shape, dtype=dtype, device=device)


def uniform(
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device | str | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform(0, 1) draws: ``torch.rand(shape, ...)`` with ``generator`` passed only when given.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> u = uniform((2, 3), dtype=torch.float32, device="cpu", generator=g)
        >>> torch.equal(u, torch.rand(2, 3, generator=torch.Generator().manual_seed(0)))
        True
    """
    return _draw(torch.rand, _uniform_op, shape, dtype, device, generator)


def standard_normal(
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device | str | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """N(0, 1) draws: ``torch.randn(shape, ...)`` with ``generator`` passed only when given.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> e = standard_normal((4,), dtype=torch.float64, device="cpu")
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> torch.equal(e, torch.randn(4, dtype=torch.float64))
        True
    """
    return _draw(torch.randn, _standard_normal_op, shape, dtype, device, generator)


def seeded_uniform(
    shape: Sequence[int],
    seed: Tensor,
    *,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tensor:
    """Uniform(0, 1) draws from a fresh generator seeded with ``int(seed)``, touching no other
    random stream.

    ``seed`` is a 0-dim integer tensor (not an int), so that a compiled graph takes a new seed at
    every call without being recompiled for it; inside a graph the draw is the opaque operator
    ``bayesdrop::seeded_uniform`` (a compiled graph can neither create nor take a generator).

    Example:
        >>> u = seeded_uniform((2, 3), torch.tensor(7), dtype=torch.float32, device="cpu")
        >>> torch.equal(u, torch.rand(2, 3, generator=torch.Generator().manual_seed(7)))
        True
    """
    return _seeded_uniform_op(list(shape), seed, dtype, _device(device))
