"""Per-sample random streams for tiled MC prediction (private to :mod:`bayesdrop.uncertainty`).

This module holds :class:`PerSampleRandomness`, the torch-function mode that gives each tiled MC
sample its own random stream, and :class:`Untileable`, raised for draws it cannot split.

Tiling ``c`` MC samples into one batch of ``c * B`` rows is fast, but a dropout layer then draws
one tensor for all ``c`` samples at once, so the noise of sample ``s`` would depend on how many
samples shared its pass. :class:`PerSampleRandomness` removes that dependence: while it is
active, every random draw made by the model is split along the tiled batch dimension and each
sample's slice is drawn from that sample's own generator, seeded with ``seeds[s]``. Sample ``s``
therefore sees exactly the numbers it would see in a forward pass of its own, run after
``torch.manual_seed(seeds[s])`` — whatever the tiling.

Intercepted draws (everything in a model's forward, bayesdrop modules and plain layers alike):

* factories: ``torch.rand``, ``torch.randn``, ``torch.randint``, ``torch.normal`` (all forms);
* ``*_like``: ``torch.rand_like``, ``torch.randn_like``, ``torch.randint_like``;
* elementwise: ``torch.bernoulli`` / ``Tensor.bernoulli``, ``torch.poisson``, ``torch.binomial``;
* in place: ``Tensor.uniform_``, ``normal_``, ``bernoulli_``, ``exponential_``, ``geometric_``,
  ``log_normal_``, ``cauchy_``, ``random_``;
* functions that use the default generator internally (run with the default generator
  temporarily set to the sample's state): ``F.dropout``, ``F.dropout1d/2d/3d``,
  ``F.alpha_dropout``, ``F.feature_alpha_dropout``, ``F.gumbel_softmax``, ``F.rrelu`` and the
  ``torch.dropout`` family.

An explicit ``generator=`` argument (e.g. a module's own generator) is replaced by the sample's
generator. A draw with no dimension of size ``c * B`` (noise shared by the whole batch, e.g.
weight noise drawn once per pass) cannot be split; it raises :class:`Untileable` and the caller
falls back to one sample per pass, which is then exact by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["PerSampleRandomness", "Untileable"]


class Untileable(RuntimeError):
    """A random draw of the model cannot be split per sample (no tiled batch dimension)."""


_FACTORIES: set[Callable[..., Any]] = {torch.rand, torch.randn, torch.randint}
_LIKE: set[Callable[..., Any]] = {torch.rand_like, torch.randn_like, torch.randint_like}
_ELEMENTWISE: set[Callable[..., Any]] = {
    torch.bernoulli,
    Tensor.bernoulli,
    torch.poisson,
    torch.binomial,
}
_INPLACE: set[Callable[..., Any]] = {
    Tensor.uniform_,
    Tensor.normal_,
    Tensor.bernoulli_,
    Tensor.exponential_,
    Tensor.geometric_,
    Tensor.log_normal_,
    Tensor.cauchy_,
    Tensor.random_,
}
_DEFAULT_RNG: set[Callable[..., Any]] = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    F.gumbel_softmax,
    F.rrelu,
    torch.dropout,
    torch.alpha_dropout,
    torch.feature_dropout,
    torch.feature_alpha_dropout,
    torch.rrelu,
}
_UNSPLITTABLE: set[Callable[..., Any]] = {torch.randperm, torch.multinomial}
_RANDOM: frozenset[Callable[..., Any]] = frozenset(
    _FACTORIES | _LIKE | _ELEMENTWISE | _INPLACE | _DEFAULT_RNG | _UNSPLITTABLE | {torch.normal}
)


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    raise RuntimeError(f"MC prediction does not know the default generator of device {device}")


def _size_of(
    args: Sequence[Any], kwargs: dict[str, Any], first: int
) -> tuple[tuple[int, ...], int | None]:
    """The requested size of a factory call and the index of ``args`` that holds it (or None)."""
    if "size" in kwargs:
        return tuple(int(n) for n in kwargs["size"]), None
    rest = list(args[first:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        return tuple(int(n) for n in rest[0]), first
    return tuple(int(n) for n in rest), -1


class PerSampleRandomness(TorchFunctionMode):
    """Route every random draw of a tiled forward pass to per-sample generators.

    Args:
        seeds: one 64-bit seed per tiled sample, in tiling order (sample-major).
        batch: rows per sample ``B``; the tiled batch has ``len(seeds) * B`` rows.
        batch_dim: preferred dimension to split when several have size ``len(seeds) * B``.
        split: ``False`` draws each tiled tensor whole from the stream of ``seeds[0]`` (one kernel
            per draw; the noise then depends on the tiling) but still refuses draws without a
            tiled batch dimension.
    """

    def __init__(
        self, seeds: Sequence[int], batch: int, batch_dim: int = 0, split: bool = True
    ) -> None:
        super().__init__()
        self.split = bool(split)
        self.seeds = [int(s) for s in seeds]
        self.copies = len(self.seeds)
        self.batch = int(batch)
        self.batch_dim = batch_dim
        self._gens: dict[tuple[int, str], torch.Generator] = {}

    # ------------------------------------------------------------------ helpers
    def generator(self, s: int, device: torch.device | str | None) -> torch.Generator:
        dev = torch.device(device) if device is not None else torch.get_default_device()
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        key = (s, str(dev))
        gen = self._gens.get(key)
        if gen is None:
            gen = torch.Generator(device=dev)
            gen.manual_seed(self.seeds[s])
            self._gens[key] = gen
        return gen

    def _split_dim(self, shape: Sequence[int]) -> int | None:
        """The dimension holding the tiled batch, or None when no split is needed."""
        if self.copies == 1:
            return None
        total = self.copies * self.batch
        hits = [i for i, n in enumerate(shape) if n == total]
        if not hits:
            raise Untileable(
                f"a random draw of shape {tuple(shape)} has no tiled batch dimension of size "
                f"{total}; its noise would be shared by the tiled samples"
            )
        bd = self.batch_dim if self.batch_dim >= 0 else self.batch_dim + len(shape)
        return bd if bd in hits else hits[0]

    def _piece(self, a: Any, ndim: int, d: int, s: int) -> Any:
        """Slice ``a`` (aligned to an ``ndim``-dim output from the right) for sample ``s``."""
        if not isinstance(a, Tensor):
            return a
        ad = a.dim() - (ndim - d)
        if ad < 0 or a.shape[ad] != self.copies * self.batch:
            return a
        return a.narrow(ad, s * self.batch, self.batch).contiguous()

    # ------------------------------------------------------------------ dispatch
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func not in _RANDOM:  # the fast path: every op that draws nothing
            return func(*args, **(kwargs or {}))
        kwargs = dict(kwargs or {})
        if func in _FACTORIES:
            return self._factory(func, args, kwargs)
        if func is torch.normal:
            if any(
                isinstance(a, Tensor)
                for a in list(args[:2]) + [kwargs.get("mean"), kwargs.get("std")]
            ):
                return self._elementwise(func, args, kwargs, broadcast=True)
            return self._factory(func, args, kwargs, first=2)
        if func in _LIKE or func in _ELEMENTWISE:
            return self._elementwise(func, args, kwargs)
        if func in _INPLACE:
            return self._inplace(func, args, kwargs)
        if func in _DEFAULT_RNG:
            return self._default_rng(func, args, kwargs)
        if func in _UNSPLITTABLE:
            if self.copies > 1:
                raise Untileable(f"{getattr(func, '__name__', func)} cannot be split per sample")
            device = (
                args[0].device if args and isinstance(args[0], Tensor) else kwargs.get("device")
            )
            kwargs["generator"] = self.generator(0, device)
        return func(*args, **kwargs)

    def _factory(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], first: int = 0
    ) -> Tensor:
        if func is torch.randint:
            # randint(high, size) or randint(low, high, size): the size is the last positional
            first = len(args) - 1 if "size" not in kwargs else len(args)
        if "out" in kwargs and self.copies > 1:
            raise Untileable("random draws with out= cannot be split per sample")
        size, where = _size_of(args, kwargs, first)
        device = kwargs.get("device")
        d = self._split_dim(size)
        if d is None or not self.split:
            kwargs["generator"] = self.generator(0, device)
            return func(*args, **kwargs)
        pieces = []
        for s in range(self.copies):
            piece_size = list(size)
            piece_size[d] = self.batch
            kw = dict(kwargs, generator=self.generator(s, device))
            if where is None:
                kw["size"] = tuple(piece_size)
                a = list(args)
            elif where == -1:
                a = list(args[:first]) + piece_size
            else:
                a = list(args[:first]) + [tuple(piece_size)]
            pieces.append(func(*a, **kw))
        return torch.cat(pieces, dim=d)

    def _elementwise(
        self,
        func: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        broadcast: bool = False,
    ) -> Tensor:
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
        if broadcast:
            shape = torch.broadcast_shapes(*(t.shape for t in tensors))
            args = [a.expand(shape) if isinstance(a, Tensor) else a for a in args]
            kwargs = {k: v.expand(shape) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        else:
            shape = tensors[0].shape
        device = tensors[0].device
        if "out" in kwargs and self.copies > 1:
            raise Untileable("random draws with out= cannot be split per sample")
        d = self._split_dim(shape)
        if d is None or not self.split:
            kwargs["generator"] = self.generator(0, device)
            return func(*args, **kwargs)
        n = len(shape)
        pieces = []
        for s in range(self.copies):
            a = [self._piece(x, n, d, s) for x in args]
            kw = {k: self._piece(v, n, d, s) for k, v in kwargs.items()}
            kw["generator"] = self.generator(s, device)
            pieces.append(func(*a, **kw))
        return torch.cat(pieces, dim=d)

    def _inplace(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Tensor:
        target = args[0]
        d = self._split_dim(target.shape)
        if d is None or not self.split:
            kwargs["generator"] = self.generator(0, target.device)
            return func(*args, **kwargs)
        n = target.dim()
        for s in range(self.copies):
            piece = target.narrow(d, s * self.batch, self.batch)
            tmp = torch.empty(piece.shape, dtype=target.dtype, device=target.device)
            rest = [self._piece(x, n, d, s) for x in args[1:]]
            kw = {k: self._piece(v, n, d, s) for k, v in kwargs.items()}
            kw["generator"] = self.generator(s, target.device)
            func(tmp, *rest, **kw)
            piece.copy_(tmp)
        return target

    def _default_rng(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Any:
        args = list(args)
        if args:
            x = args.pop(0)
        else:
            key = "input" if "input" in kwargs else "logits"
            x = kwargs.pop(key)
        # in-place variants may use other kernels (and randomness) than out-of-place ones, so an
        # in-place call stays in place on each sample's slice
        inplace = bool(kwargs.get("inplace", False))
        default = _default_generator(x.device)
        saved = default.get_state()
        d = None if self.copies == 1 else self._split_dim(x.shape)
        try:
            if d is None or not self.split:
                gen = self.generator(0, x.device)
                default.set_state(gen.get_state())
                out = func(x, *args, **kwargs)
                gen.set_state(default.get_state())
                return out
            pieces = []
            for s in range(self.copies):
                gen = self.generator(s, x.device)
                default.set_state(gen.get_state())
                view = x.narrow(d, s * self.batch, self.batch)
                piece = view.contiguous()
                out = func(piece, *args, **kwargs)
                gen.set_state(default.get_state())
                if inplace:
                    if piece.data_ptr() != view.data_ptr():
                        view.copy_(piece)
                else:
                    pieces.append(out)
        finally:
            default.set_state(saved)
        return x if inplace else torch.cat(pieces, dim=d)
