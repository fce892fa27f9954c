"""Learnable Bernoulli dropout (LBD; Boluki et al. 2020): exact Bernoulli masks, learned rates.

The rates are trained with unbiased ARM/DisARM gradients. That needs the *same* uniforms to be
evaluated twice (the antithetic pair), which is what :func:`bayesdrop.objective` arranges: it
opens an :class:`AntitheticPair` on every LBD module, runs the batch as the pair, and adds the
estimator's surrogate term built from the loss difference. Outside ``objective`` an LBD module in
training mode samples ordinary independent masks; its rates then get only the pathwise part of
their gradient (through the inverted-dropout scale), and the first backward pass that reaches
them warns once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_positive, check_probability
from ..estimators import COEFFICIENTS, PAIR_ESTIMATORS, antithetic_masks
from ..functional.bernoulli import (
    LOGIT_BOUND,
    bernoulli_dropout,
    column_sq_norms,
    gal_bernoulli_kl,
    uniform_dtype,
)
from ..functional.noise import seeded_uniform, uniform
from ._base import DropoutModule
from .wrapped_layers import batch_dim as layer_batch_dim
from .wrapped_layers import check_layer, input_weight_sq_norms, mask_shape

__all__ = ["LearnableBernoulliDropout", "AntitheticPair", "PairStreams"]


@dataclass
class _Draw:
    u: Tensor
    z1: Tensor
    z2: Tensor
    batch_dim: int
    #: when the draw was made on the pair's clock (orders it against batch-coupled layers)
    tick: int = 0


class PairStreams:
    """The random streams of the LBD uniforms for one step of :func:`bayesdrop.objective`.

    ARM and DisARM are unbiased when the uniforms :math:`u` of the antithetic pair are
    independent of every other random quantity of the step. The two evaluations of the pair may
    consume the other noise of the model differently (a layer that draws a number of values that
    depends on the activations, which differ between :math:`z^{(1)}` and :math:`z^{(2)}`), so the
    uniforms must not come from a stream that other noise reads: a value that was a uniform in one
    evaluation could be read as other noise in the other, correlated with the estimator's
    coefficient. Hence:

    * a module's own ``generator`` that no other module holds (only LBD modules) is a stream of
      the uniforms alone and is used as it is (``torch.rand(..., generator=g)``);
    * for the global stream (modules without a generator) and for a generator that another
      module holds too, one seed is drawn from it when the pair opens, before any other noise of
      the step, and the uniforms are drawn from generators seeded with it, one per source and
      device, that nothing else reads. Such a source advances by one draw per step whatever the
      model does.

    Args:
        modules: the model's LBD modules.
        shared: ``id`` of every generator that a module other than an LBD module holds.
    """

    def __init__(self, modules: list[LearnableBernoulliDropout], shared: set[int]) -> None:
        #: ids of the generators used directly (held by LBD modules only)
        self.dedicated: set[int] = set()
        self._seeds: dict[int, int] = {}
        for m in modules:
            g = m.generator
            if g is not None and id(g) not in shared:
                self.dedicated.add(id(g))
                continue
            key = id(g) if g is not None else 0
            if key not in self._seeds:
                device = g.device if g is not None else torch.device("cpu")
                seed = torch.randint(0, 2**62, (1,), generator=g, device=device)
                self._seeds[key] = int(seed.item())
        #: the global source's seed as a tensor, for draws inside a compiled graph
        self.seed_tensor = torch.tensor(self._seeds.get(0, 0))
        self._streams: dict[tuple[int, torch.device], torch.Generator] = {}

    def generator(self, source: torch.Generator | None, device: torch.device) -> torch.Generator:
        """The generator of the uniforms of a module whose ``generator`` is ``source``."""
        if source is not None and id(source) in self.dedicated:
            return source
        key = (id(source) if source is not None else 0, device)
        g = self._streams.get(key)
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed(self._seeds[key[0]])
            self._streams[key] = g
        return g


@dataclass
class AntitheticPair:
    """Per-module record of the uniforms of one antithetic evaluation (owned by ``objective``).

    ``mode`` is ``"concat"`` (the input batch holds the pair: first half uses ``z1``, second half
    ``z2``), ``"first"`` (this pass uses ``z1`` and records the draws) or ``"second"`` (this pass
    uses the recorded draws with ``z2`` and draws nothing). Draws are kept in call order, so a
    module called several times per forward (weight sharing, loops) is handled.

    ``batch_dim`` is the batch dimension of the objective's inputs (used by the linear and bare
    forms, see :class:`LearnableBernoulliDropout`); ``batch_size`` the number of examples of one
    half (``None``: unchecked); ``streams`` the step's streams of uniforms (:class:`PairStreams`;
    ``None``: the module's ``generator`` or the global one); ``clock`` a counter shared with the
    objective, read at every draw so that draws can be ordered against batch-coupled layers.
    """

    mode: str = "concat"
    draws: list[_Draw] = field(default_factory=list)
    cursor: int = 0
    batch_dim: int = 0
    batch_size: int | None = None
    streams: PairStreams | None = None
    clock: list[int] | None = None

    def check_draws(self) -> None:
        """Check the batch size of the recorded draws (the modules skip the check inside a
        compiled graph, where comparing the symbolic batch size with an int would specialise the
        graph to that size; the objective calls this after the pass instead)."""
        for d in self.draws:
            LearnableBernoulliDropout._check_batch(tuple(d.u.shape), d.batch_dim, 1, self)


class LearnableBernoulliDropout(DropoutModule):
    r"""Bernoulli dropout whose drop probabilities are learned with ARM or DisARM gradients.

    In the wrapper form it drops the inputs of ``layer`` (features of ``nn.Linear``, whole channels
    of ``nn.Conv1d/2d/3d``, input features of ``nn.LSTM/GRU/RNN`` with one mask per sequence) and
    returns ``layer(x ⊙ z / (1 - p))``; in the bare form (``num_features=``) it returns the dropped
    input. Masks are exact Bernoulli draws, :math:`z_k \sim \mathrm{Ber}(1 - p_k)`, one per example
    and unit; eval mode is the identity on the mask.

    Drop probabilities are :math:`p = \sigma(\mathrm{logit\_p})`, one per input unit
    (``granularity="unit"``) or one per layer (``"layer"``); ``logit_p`` is clamped to
    ``[-30, 30]``. The prior is Gal's quantised Gaussian with length-scale ``l``
    (:func:`~bayesdrop.functional.gal_bernoulli_kl`):

    .. math::
        \mathrm{KL} = \sum_k \frac{l^2}{2(1-p_k)}\|W_{\cdot k}\|^2 - H(1 - p_k).

    The data-set size enters once, in :func:`bayesdrop.objective` (``n_data``), never here.

    Uniforms are drawn, and keep probabilities and estimator coefficients computed, in float32
    (float64 for float64 activations) whatever the activation dtype, so bfloat16/float16 models
    and autocast get the same masks as float32 ones.

    Batch dimension and mask layout. Inputs of ``nn.Linear`` and of the bare form,
    ``(*, features)``, get an independent mask for every position (every example and every
    other leading index, e.g. every time step of a ``(T, B, F)`` sequence); convolutions get one
    mask per example and channel (batch dimension 0); RNNs one per sequence and feature, with
    the batch dimension given by the RNN's ``batch_first``. For the linear and bare forms the
    batch dimension is ``batch_dim`` when given, else the ``batch_dim`` passed to
    :func:`bayesdrop.objective` (a ``(batch, features)`` input always uses dimension 0). The
    uniforms are drawn in batch-first order and moved to the batch dimension, so a
    sequence-first input gets exactly the masks of the batch-first input it permutes.

    Args:
        layer: the layer whose inputs are dropped, or ``None`` for the bare form.
        num_features: number of input units for the bare form (features, last dimension).
        init_p: initial drop probability, in (0, 1).
        granularity: ``"unit"`` (a rate per input unit) or ``"layer"`` (one shared rate).
        estimator: ``"arm"`` or ``"disarm"`` (used by :func:`bayesdrop.objective`).
        length_scale: prior length-scale :math:`l` (prior precision :math:`l^2`); default 1.0
            gives an effective weight decay :math:`1/(2N(1-p))` per example.
        generator: optional generator for the uniforms. Outside :func:`bayesdrop.objective` they
            are drawn from it (or from the global generator); inside, from it as well when no
            other module holds it, else from a stream of the step's own seeded by one draw from it
            (:class:`.PairStreams`), so that no other noise of the model can read them.
        batch_dim: batch dimension of this module's input for the linear and bare forms
            (``None``: the objective's); not accepted for convolutions and RNNs, whose layout
            fixes it.

    Shape:
        As the wrapped layer; bare form ``(*, num_features)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = LearnableBernoulliDropout(nn.Linear(4, 2), init_p=0.25)
        >>> m.p.shape
        torch.Size([4])
        >>> m.eval()(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    #: Set once the "trained outside objective" warning has been given (once per process).
    _warned_pathwise_only = False

    def __init__(
        self,
        layer: nn.Module | None = None,
        *,
        num_features: int | None = None,
        init_p: float = 0.5,
        granularity: str = "unit",
        estimator: str = "disarm",
        length_scale: float = 1.0,
        generator: torch.Generator | None = None,
        batch_dim: int | None = None,
    ) -> None:
        super().__init__(generator)
        self.layer_kind, self.units = check_layer(layer, num_features)
        self.layer = layer
        init_p = check_probability("init_p", init_p)
        self.granularity = check_choice("granularity", granularity, ("unit", "layer"))
        self.estimator = check_choice("estimator", estimator, PAIR_ESTIMATORS)
        self.length_scale = check_positive("length_scale", length_scale, allow_zero=True)
        if batch_dim is not None:
            if isinstance(batch_dim, bool) or not isinstance(batch_dim, int) or batch_dim < 0:
                raise ValueError(f"batch_dim must be a non-negative int, but got {batch_dim!r}")
            if self.layer_kind in ("conv", "rnn"):
                raise ValueError(
                    f"batch_dim is fixed by the wrapped {type(layer).__name__} (convolutions: 0, "
                    "RNNs: their batch_first); it applies to nn.Linear and the bare form only"
                )
        self.batch_dim = batch_dim
        n = self.units if self.granularity == "unit" else 1
        logit = torch.logit(torch.tensor(init_p, dtype=torch.float32))
        self.logit_p = nn.Parameter(torch.full((n,), float(logit)))
        self._pair: AntitheticPair | None = None

    # ----------------------------------------------------------------------------- properties
    @property
    def p(self) -> Tensor:
        return torch.sigmoid(self._logit_p()).detach()

    def _logit_p(self) -> Tensor:
        return self.logit_p.clamp(-LOGIT_BOUND, LOGIT_BOUND)

    def _unit_view(self, t: Tensor, ndim: int) -> Tensor:
        """Reshape a per-unit vector to broadcast against a mask of ``ndim`` dims."""
        if self.layer_kind == "conv":
            return t.reshape((-1,) + (1,) * (ndim - 2))
        return t

    def extra_repr(self) -> str:
        form = "" if self.layer is not None else f"num_features={self.units}, "
        bd = "" if self.batch_dim is None else f", batch_dim={self.batch_dim}"
        return (
            f"{form}granularity={self.granularity!r}, estimator={self.estimator!r}, "
            f"length_scale={self.length_scale}{bd}"
        )

    # ----------------------------------------------------------------------------- prior
    def kl(self) -> Tensor:
        norms: Tensor | None = None
        if isinstance(self.layer, nn.Linear):
            norms = column_sq_norms(self.layer.weight)  # same values, one-pass backward
        elif self.layer is not None:
            norms = input_weight_sq_norms(self.layer)
        logit_p: Tensor = self.logit_p
        if norms is None and self.granularity == "layer":
            logit_p = logit_p.expand(self.units)
        return gal_bernoulli_kl(logit_p, norms, self.length_scale)

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Drop ``x`` when sampling, then the wrapped layer (an RNN takes h0 / PackedSequence)."""
        return self._forward_wrapped(x, args, kwargs)

    def _resolve_batch_dim(self, x: Tensor, pair: AntitheticPair | None) -> int:
        """The batch dimension of ``x`` for this module (see the class docstring)."""
        if self.layer_kind == "conv":
            return 0
        if self.layer_kind == "rnn":
            return layer_batch_dim(self.layer)
        explicit = self.batch_dim is not None
        bd = self.batch_dim if self.batch_dim is not None else (pair.batch_dim if pair else 0)
        if x.dim() < 2:
            return 0
        if bd >= x.dim() - 1:
            if not explicit and x.dim() == 2:
                return 0  # a (batch, features) input: its batch is its first dimension
            raise ValueError(
                f"batch_dim={bd} is not a batch dimension of this module's input of shape "
                f"{tuple(x.shape)} (the last dimension holds the features); pass batch_dim= to "
                "the module or to objective"
            )
        return bd

    def _uniforms(self, shape: tuple[int, ...], bd: int, dtype: torch.dtype, x: Tensor) -> Tensor:
        """Uniform(0, 1) draws of ``shape``, drawn in batch-first order and moved to ``bd``."""
        first = (shape[bd],) + shape[:bd] + shape[bd + 1 :]
        pair = self._pair
        g = self.generator
        if pair is not None and pair.streams is not None:
            if g is None and torch.compiler.is_compiling():
                # a graph can neither create nor take a generator: each draw of the step gets a
                # fresh one, seeded with the step's seed plus the draw's place in the step
                tick = pair.clock[0] if pair.clock is not None else len(pair.draws)
                seed = pair.streams.seed_tensor + tick
                u = seeded_uniform(first, seed, dtype=dtype, device=x.device)
                return u.movedim(0, bd) if bd else u
            g = pair.streams.generator(self.generator, x.device)
        u = uniform(first, dtype=dtype, device=x.device, generator=g)
        return u.movedim(0, bd) if bd else u

    def _drop(self, x: Tensor) -> Tensor:
        shape = mask_shape(x, self.layer, self.units)
        logit_p = self._unit_view(self._logit_p(), len(shape))
        dtype = uniform_dtype(x.dtype, logit_p.dtype)
        keep_logit = (-logit_p).detach().to(dtype)
        pair = self._pair
        bd = self._resolve_batch_dim(x, pair)
        if pair is None:
            u = self._uniforms(shape, bd, dtype, x)
            keep = u < torch.sigmoid(keep_logit)
            if (
                self.training
                and torch.is_grad_enabled()
                and logit_p.requires_grad
                and not LearnableBernoulliDropout._warned_pathwise_only
                and not torch.compiler.is_compiling()  # a hook would break the traced graph
            ):
                self._warn_on_backward(logit_p)
        elif pair.mode == "concat":
            if not torch.compiler.is_compiling():  # (checked by the objective instead)
                self._check_batch(shape, bd, 2, pair)
            half = list(shape)
            half[bd] //= 2
            u = self._uniforms(tuple(half), bd, dtype, x)
            z1, z2 = self._masks(keep_logit, u)
            pair.draws.append(_Draw(u, z1, z2, bd, self._tick(pair)))
            keep = torch.cat([z1, z2], dim=bd)
        elif pair.mode == "first":
            if not torch.compiler.is_compiling():
                self._check_batch(shape, bd, 1, pair)
            u = self._uniforms(shape, bd, dtype, x)
            z1, z2 = self._masks(keep_logit, u)
            pair.draws.append(_Draw(u, z1, z2, bd, self._tick(pair)))
            keep = z1
        else:
            if pair.cursor >= len(pair.draws):
                raise RuntimeError(
                    "second pass of the antithetic pair called this module more often"
                )
            draw = pair.draws[pair.cursor]
            pair.cursor += 1
            if tuple(draw.u.shape) != tuple(shape):
                raise RuntimeError("the two passes of the antithetic pair saw different shapes")
            keep = draw.z2
        return bernoulli_dropout(x, logit_p, keep)

    @staticmethod
    def _tick(pair: AntitheticPair) -> int:
        if pair.clock is None:
            return 0
        pair.clock[0] += 1
        return pair.clock[0]

    @staticmethod
    def _masks(keep_logit: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """The antithetic pair; as ``uint8`` inside a compiled graph, whose generated CPU code
        stores boolean outputs several times slower than bytes (the masks are outputs there:
        the pair's other evaluation and the surrogate read them)."""
        z1, z2 = antithetic_masks(keep_logit, u)
        if torch.compiler.is_compiling():
            return z1.to(torch.uint8), z2.to(torch.uint8)
        return z1, z2

    @staticmethod
    def _check_batch(shape: tuple[int, ...], bd: int, copies: int, pair: AntitheticPair) -> None:
        n = pair.batch_size
        if n is None:
            if copies == 2 and shape[bd] % 2:
                raise ValueError(
                    "the antithetic pair needs an even batch along batch_dim; got "
                    f"{shape[bd]} (was the batch concatenated along another dimension?)"
                )
            return
        if shape[bd] != copies * n:
            raise ValueError(
                f"an LBD module's input has {shape[bd]} entries along its batch dimension {bd} "
                f"(mask shape {tuple(shape)}) but the batch has {copies * n}: the per-example "
                "estimator needs one batch entry per example. Pass the right batch_dim to "
                "objective (or to the module), or objective(..., coupled=True) for a model that "
                "reshapes or mixes its batch (the whole-batch estimator holds for any layout)"
            )

    def _warn_on_backward(self, logit_p: Tensor) -> None:
        if LearnableBernoulliDropout._warned_pathwise_only:
            return

        def hook(grad: Tensor) -> None:
            if not LearnableBernoulliDropout._warned_pathwise_only:
                LearnableBernoulliDropout._warned_pathwise_only = True
                warnings.warn(
                    "LearnableBernoulliDropout was trained outside bayesdrop.objective: its drop "
                    "rates get only the pathwise part of their gradient (through the 1/(1-p) "
                    "scale), not the ARM/DisARM part. Compute the loss with "
                    "bayesdrop.objective(model, inputs, targets, nll, n_data) for unbiased rate "
                    "gradients.",
                    UserWarning,
                    stacklevel=2,
                )

        logit_p.register_hook(hook)

    def rate_surrogate(self, delta: Tensor | Sequence[Tensor]) -> Tensor:
        r"""Surrogate whose gradient is the ARM/DisARM estimate for this module's rates.

        ``delta`` holds either :math:`f_i(z^{(1)}) - f_i(z^{(2)})` per example (shape
        ``(batch,)``, already divided by the batch size as the objective's mean requires; the
        per-example form) or one number, :math:`\bar f(z^{(1)}) - \bar f(z^{(2)})` of the batch
        means, that multiplies every unit's coefficient (0-dim; the whole-batch form, which treats
        all masks of the batch as one Bernoulli vector), or a sequence of such tensors, one per
        recorded draw (each draw with its own form). Returns a 0-dim tensor
        :math:`\sum \phi \cdot \mathrm{sg}(\hat g)` over the recorded draws, with
        :math:`\phi = -\mathrm{logit\_p}` the keep logits. The coefficients are computed in the
        uniforms' dtype (float32 or float64).
        """
        assert self._pair is not None
        coefficient = COEFFICIENTS[self.estimator]
        logit_p = self._logit_p()
        total = logit_p.new_zeros(())
        draws = self._pair.draws
        deltas = [delta] * len(draws) if isinstance(delta, Tensor) else list(delta)
        if len(deltas) != len(draws):
            raise ValueError(f"delta holds {len(deltas)} differences for {len(draws)} draws")
        for d, diff in zip(draws, deltas):
            keep_logit = self._unit_view(-logit_p, d.u.dim())
            with torch.no_grad():
                phi = keep_logit.detach().to(d.u.dtype)
                dl = diff.detach().to(d.u.dtype)
                # the dimensions whose mask entries share one rate and one loss difference
                pad = d.u.dim() - phi.dim()
                shared = [
                    k
                    for k in range(d.u.dim())
                    if (k < pad or phi.shape[k - pad] == 1) and (dl.dim() == 0 or k != d.batch_dim)
                ]
                coef = _summed_coefficient(self.estimator, coefficient, d, phi, shared)
                if dl.dim() == 0:
                    g = coef * dl
                else:
                    view = [1] * d.u.dim()
                    view[d.batch_dim] = -1
                    g = coef * dl.reshape(view)
                g = g.sum_to_size(keep_logit.shape)
            total = total + (keep_logit * g.to(keep_logit.dtype)).sum()
        return total


def _summed_coefficient(
    estimator: str, coefficient: Any, d: _Draw, phi: Tensor, dims: list[int]
) -> Tensor:
    r"""The estimator's per-entry coefficient summed over ``dims`` (kept as size 1).

    Entries along ``dims`` share one rate and one loss difference, so only their sum meets the
    loss difference. It is formed from the draws directly, one pass over the masks instead of the
    several a full coefficient tensor costs (a mask on attention probabilities has one rate for
    batch x heads x queries x keys entries): ARM's
    :math:`\sum (u - \tfrac12)` is :math:`\sum u - n/2`, DisARM's
    :math:`\sum \tfrac12 (z^{(1)} - z^{(2)})\,\sigma(|\phi|)` is
    :math:`\tfrac12\,\sigma(|\phi|) (\sum z^{(1)} - \sum z^{(2)})` (integer counts, exact).
    """
    if not dims:
        return coefficient(d.u, d.z1, d.z2, phi)
    dt = d.u.dtype
    if estimator == "arm":
        n = 1
        for k in dims:
            n *= d.u.shape[k]
        return d.u.sum(dims, keepdim=True) - 0.5 * n
    if estimator == "disarm":
        ones = d.z1.sum(dims, keepdim=True, dtype=dt) - d.z2.sum(dims, keepdim=True, dtype=dt)
        return 0.5 * ones * torch.sigmoid(phi.abs())
    return coefficient(d.u, d.z1, d.z2, phi).sum(dims, keepdim=True)
