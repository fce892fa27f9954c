r"""Monte Carlo prediction with dropout left on: :func:`~bayesdrop.mc_predict` and :func:`~bayesdrop.mc_sampling`.

MC dropout (Gal & Ghahramani, 2016) reads the dropout noise as samples from an approximate
posterior: the predictive distribution is estimated by averaging ``S`` stochastic forward passes
in which the dropout layers sample while everything else (batch-norm statistics included) is in
evaluation mode.

For classification the passes give per-sample probabilities :math:`p_s` and

.. math::
    \bar p = \frac1S\sum_s p_s,\qquad
    \underbrace{H[\bar p]}_{\text{predictive entropy}}
    = \underbrace{\frac1S\sum_s H[p_s]}_{\text{expected entropy}}
    + \underbrace{\frac1S\sum_s \mathrm{KL}(p_s\,\|\,\bar p)}_{\text{mutual information}},

all in nats. The mutual information (BALD) is :math:`\ge 0` and zero when the passes agree.
For regression with homoscedastic noise precision :math:`\tau`,
:math:`\mathrm{Var}[y] \approx \tau^{-1} + \frac1S\sum_s y_s^2 - \bar y^2` (Gal, 2016, eq. 3.2).
"""

from __future__ import annotations

import math
import os
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_positive
from ..adapters.batches import batch_size, call_model, check_batch, prediction, tensors, tile_batch
from ..nn._base import DropoutModule
from ._per_sample_streams import PerSampleRandomness, Untileable

__all__ = [
    "mc_predict",
    "mc_sampling",
    "sample_seeds",
    "tile_choice",
    "clear_tile_choices",
    "NoSamplingWarning",
    "MCClassification",
    "MCRegression",
    "TASKS",
    "OUTPUTS",
]

#: Values of ``task``.
TASKS = ("classification", "regression")
#: What a classifier returns (``output=``): unnormalised logits (log-probabilities work too),
#: probabilities, or one logit per example for a binary problem (class 1 probability sigmoid).
OUTPUTS = ("logits", "probs", "binary_logits")

_PLAIN_DROPOUT = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_SEED_HIGH = 2**62


class NoSamplingWarning(UserWarning):
    """:func:`~bayesdrop.mc_predict` ran several passes and all gave the same output: nothing sampled."""


class MCClassification:
    """Result of :func:`~bayesdrop.mc_predict` for classification (all entropies in nats).

    Attributes:
        probs: mean predictive probabilities :math:`\\bar p`, shaped like the model output (the
            class dimension at ``class_dim``).
        samples: per-pass probabilities, shape ``(S, *probs.shape)``; ``None`` when
            ``keep_samples=False`` or when the answer came from moments.
        num_samples: ``S`` (0 when the answer came from moments without sampling).
        class_dim: the class dimension of :attr:`probs`.

    The properties :attr:`predictive_entropy`, :attr:`expected_entropy` and
    :attr:`mutual_information` have the output shape without the class dimension. When the
    passes are kept they are computed from :attr:`samples` the first time they are read (one
    vectorised pass over the samples), so a caller who needs only the probabilities does not pay
    for them; they are then cached.
    """

    def __init__(
        self,
        probs: Tensor,
        samples: Tensor | None,
        predictive_entropy: Tensor | None = None,
        expected_entropy: Tensor | None = None,
        mutual_information: Tensor | None = None,
        num_samples: int = 0,
        class_dim: int = 1,
    ) -> None:
        if expected_entropy is None and samples is None:
            raise ValueError("MCClassification needs expected_entropy or the samples")
        self.probs = probs
        self.samples = samples
        self.num_samples = num_samples
        self.class_dim = class_dim
        self._predictive_entropy = predictive_entropy
        self._expected_entropy = expected_entropy
        self._mutual_information = mutual_information

    def _cd(self) -> int:
        return self.class_dim % self.probs.dim()

    @property
    def predictive_entropy(self) -> Tensor:
        """:math:`H[\\bar p]` in nats."""
        if self._predictive_entropy is None:
            self._predictive_entropy = _entropy(self.probs, self._cd())
        return self._predictive_entropy

    @property
    def expected_entropy(self) -> Tensor:
        """:math:`\\frac1S\\sum_s H[p_s]` in nats (aleatoric part)."""
        if self._expected_entropy is None:
            assert self.samples is not None
            # a block of passes at a time, so that each op works on data still in the cache
            cd, samples = self._cd(), self.samples
            step = max(1, _BLOCK // max(1, samples[0].numel()))
            total = _entropy(samples[:step], cd + 1).sum(0)
            for i in range(step, len(samples), step):
                total += _entropy(samples[i : i + step], cd + 1).sum(0)
            self._expected_entropy = total / len(samples)
        return self._expected_entropy

    @property
    def mutual_information(self) -> Tensor:
        """Predictive minus expected entropy in nats (epistemic part), ``>= 0``."""
        if self._mutual_information is None:
            mi = self.predictive_entropy - self.expected_entropy
            self._mutual_information = mi.clamp_min(0.0)
        return self._mutual_information

    @property
    def prediction(self) -> Tensor:
        """The predicted class, ``argmax`` of :attr:`probs` along the class dimension."""
        return self.probs.argmax(dim=self.class_dim)

    def __repr__(self) -> str:
        samples = None if self.samples is None else tuple(self.samples.shape)
        return (
            f"MCClassification(probs={tuple(self.probs.shape)}, samples={samples}, "
            f"num_samples={self.num_samples}, class_dim={self.class_dim})"
        )


@dataclass(frozen=True)
class MCRegression:
    """Result of :func:`~bayesdrop.mc_predict` for regression.

    Attributes:
        mean: :math:`\\bar y`, shaped like the model output.
        variance: total predictive variance, ``model_variance + noise_variance``.
        model_variance: spread of the passes, :math:`\\frac1S\\sum_s y_s^2 - \\bar y^2`
            (epistemic part; ``var`` of the moments for moment models).
        noise_variance: :math:`\\tau^{-1}` (0.0 when no ``noise_precision`` was given).
        samples: per-pass outputs ``(S, *mean.shape)`` or ``None``.
        num_samples: ``S`` (0 for moment models).
    """

    mean: Tensor
    variance: Tensor
    model_variance: Tensor
    noise_variance: float
    samples: Tensor | None
    num_samples: int


# --------------------------------------------------------------------------- context manager
@contextmanager
def mc_sampling(model: nn.Module) -> Iterator[nn.Module]:
    """Switch MC sampling on for a block of code, restoring every module's state afterwards.

    Inside the block every module of ``model`` is in eval mode (batch-norm uses its running
    statistics, nothing updates them) except the dropout layers: bayesdrop modules get
    ``mc_sampling = True`` (they sample although in eval mode) and plain ``nn.Dropout*`` layers
    are put in training mode (which makes them MC dropout). On exit each module's ``training``
    flag and ``mc_sampling`` attribute are restored to what they were, also after an exception.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.BatchNorm1d(3)).train()
        >>> with mc_sampling(model):
        ...     [m.training for m in model]
        [False, True, False]
        >>> [m.training for m in model]
        [True, True, True]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
    saved = [(m, m.training, getattr(m, "mc_sampling", None)) for m in model.modules()]
    try:
        for m, _, _ in saved:
            if isinstance(m, DropoutModule):
                m.training = False
                m.mc_sampling = True
            else:
                m.training = isinstance(m, _PLAIN_DROPOUT)
        yield model
    finally:
        for m, training, mc in saved:
            m.training = training
            if isinstance(m, DropoutModule):
                m.mc_sampling = bool(mc)


# --------------------------------------------------------------------------- helpers
def sample_seeds(num_samples: int, generator: torch.Generator | None = None) -> list[int]:
    """The per-pass seeds :func:`~bayesdrop.mc_predict` uses: ``torch.randint(0, 2**62, (num_samples,))``.

    Drawn on the CPU from ``generator`` (or from the global generator when ``None``).
    """
    num_samples = check_int("num_samples", num_samples)
    dev = generator.device if generator is not None else "cpu"
    seeds = torch.randint(0, _SEED_HIGH, (num_samples,), generator=generator, device=dev)
    return [int(s) for s in seeds.tolist()]


#: A batch as the passes use it: the positional arguments (a tensor ``x`` is ``(x,)``) or the
#: keyword arguments of the model.
_Batch = tuple[Tensor, ...] | dict[str, Any]


def _check_inputs(x: Any) -> _Batch:
    if isinstance(x, Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, Tensor) for t in x):
        return tuple(x)
    if isinstance(x, Mapping):
        check_batch(x, "x")
        return dict(x)
    raise TypeError(
        "x must be a Tensor, a non-empty tuple/list of Tensors (model(*x)) or a mapping such as "
        f"a dict or a Hugging Face BatchEncoding (model(**x)), but got {type(x).__name__}"
    )


def _entries(inputs: _Batch) -> list[tuple[str, Tensor]]:
    """Every tensor of a batch with its name in the caller's terms (``x``, ``x[1]``, ``x['ids']``)."""
    if isinstance(inputs, dict):
        return [
            (f"x[{k!r}]", t)
            for k, v in inputs.items()
            for t in ([v] if isinstance(v, Tensor) else tensors(v))
        ]
    if len(inputs) == 1:
        return [("x", inputs[0])]
    return [(f"x[{i}]", t) for i, t in enumerate(inputs)]


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "not enough memory" in msg)


def _entropy(probs: Tensor, dim: int) -> Tensor:
    """Entropy in nats along ``dim`` with :math:`0 \\log 0 = 0` (rounding outside [0, 1] clipped)."""
    p = probs.clamp(0.0, 1.0)
    # p log max(p, tiny) is p log p for p > 0 and 0 for p = 0; unlike xlogy it is vectorised
    plogp = p.clamp_min(torch.finfo(p.dtype).tiny).log_().mul_(p)
    return -plogp.sum(dim)


def _sampling_layers(model: nn.Module) -> list[str]:
    """Names of the modules that sample under :func:`mc_sampling`."""
    return [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, (DropoutModule, *_PLAIN_DROPOUT))
    ]


# --------------------------------------------------------------------------- tiling strategy
#: A larger tile is kept only when its time per pass is at least this fraction below the best.
_MARGIN = 0.05
#: Outputs of passes are turned into probabilities and entropies in blocks of this many elements.
_BLOCK = 1 << 16
#: Short calls are timed more often (up to ``_MAX_REPS``) until their total reaches this many
#: seconds, so that timer and scheduler noise do not decide for small models.
_MIN_SECONDS = 1e-3
_MAX_REPS = 5
#: Consecutive candidate tiles that are not faster after which the search stops.
_MISSES = 3
#: Timed calls per candidate tile (the fastest counts, so one pre-empted call does not decide).
_REPS = 3


@dataclass
class _TilePlan:
    """How many passes one forward call holds, for one model and one kind of input.

    The choice is measured on the passes :func:`~bayesdrop.mc_predict` runs anyway (their results are kept,
    so measuring costs no extra forward pass): one untimed warm-up pass, then tiles of 1, 2, 4,
    ... passes (the last candidate is all the passes of a call), each timed in ``_REPS`` calls
    (more, up to ``_MAX_REPS``, while they add up to less than ``_MIN_SECONDS``).
    A tile replaces the best so far only when its fastest time per pass (the least disturbed by
    other work on the machine) is at least ``_MARGIN`` below the best one's fastest; the last
    candidate, all the passes of a call, replaces it when it is faster than the calls the best
    tile needs for them, the remainder's call included. ``_MISSES`` tiles in a row that are not
    faster end the search (a small model on a CPU loses with 2 passes per call, whose random
    streams cost more than the call they save, and gains from 4 or more). A
    measurement may continue over several :func:`~bayesdrop.mc_predict` calls (a tile larger than the
    passes left in a call is measured in a later call that has room for it).
    """

    chosen: int | None = None
    warm: bool = False
    trying: int = 1
    best: int = 1
    best_time: float = math.inf
    misses: int = 0
    tried_all: bool = False
    times: list[float] = field(default_factory=list)
    spent: float = 0.0
    measured: dict[int, float] = field(default_factory=dict)

    def next(self, remaining: int, total: int) -> tuple[int, bool]:
        """Passes for the next forward call (``remaining`` of ``total`` left) and whether to
        time it."""
        if self.chosen is None and self.trying > total:
            if self.best >= total or self.tried_all:
                self.chosen = self.best
            else:
                self.trying, self.times, self.tried_all = total, [], True
        if self.chosen is not None:
            return min(self.chosen, remaining), False
        if not self.warm:
            return 1, False
        if self.trying <= remaining:
            return self.trying, True
        return min(self.best, remaining), False

    def record(self, passes: int, seconds: float | None) -> None:
        """Note a finished call (``seconds`` is ``None`` when it was not timed)."""
        self.warm = True
        if seconds is None or self.chosen is not None or passes != self.trying:
            return
        self.times.append(seconds / passes)
        self.spent += seconds
        if len(self.times) < _REPS or (self.spent < _MIN_SECONDS and len(self.times) < _MAX_REPS):
            return
        fastest, self.times, self.spent = min(self.times), [], 0.0
        self.measured[passes] = fastest
        if passes == 1:
            self.best_time, self.trying = fastest, 2
        elif fastest < self.best_time * (1.0 - _MARGIN) or (
            # all the passes of a call in one: compare with the calls the best tile needs for
            # them, its remainder included (16 + 4 passes for 20 with a best tile of 16)
            self.tried_all and passes * fastest < self._cost(self.best, passes)
        ):
            self.best, self.best_time, self.misses = passes, fastest, 0
            self.trying = 2 * passes
        else:
            self.misses += 1
            if self.misses == _MISSES:
                self.chosen = self.best
            self.trying = 2 * passes

    def _cost(self, tile: int, total: int) -> float:
        """Estimated time of ``total`` passes in calls of ``tile`` (the remainder's call at the
        time per pass of the largest measured tile that fits it)."""
        cost, left = 0.0, total
        while left > 0:
            c = min(tile, left)
            fits = [k for k in self.measured if k <= c]
            cost += c * self.measured[max(fits)] if fits else c * self.best_time
            left -= c
        return cost

    def settle(self, passes: int) -> None:
        """Fix the tile at ``passes`` (after a failure of a larger one)."""
        self.chosen = max(1, min(passes, self.chosen or passes))
        self.best = self.chosen


_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], _TilePlan]] = (
    weakref.WeakKeyDictionary()
)


def _plan_key(inputs: _Batch, batch_dim: int, exact: bool) -> tuple[Any, ...]:
    shapes = tuple((name, tuple(t.shape), t.dtype, str(t.device)) for name, t in _entries(inputs))
    return (shapes, batch_dim, bool(exact), torch.get_num_threads())


def _plan_for(model: nn.Module, key: tuple[Any, ...]) -> _TilePlan:
    plans = _PLANS.setdefault(model, {})
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _TilePlan()
    return plan


def tile_choice(
    model: nn.Module,
    x: Tensor | Sequence[Tensor] | Mapping[str, Any],
    *,
    batch_dim: int = 0,
    exact: bool = True,
) -> int | None:
    """Passes per forward call that :func:`~bayesdrop.mc_predict` has settled on for ``model`` and inputs
    shaped like ``x`` (``None`` while it is still measuring or before the first call).

    Multiply by the batch size to get the ``max_batch`` that fixes the same tiling.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
        >>> tile_choice(model, torch.zeros(5, 4)) is None
        True
    """
    inputs = _check_inputs(x)
    plans = _PLANS.get(model)
    plan = None if plans is None else plans.get(_plan_key(inputs, batch_dim, exact))
    return None if plan is None else plan.chosen


def clear_tile_choices(model: nn.Module | None = None) -> None:
    """Forget the measured tiling of ``model`` (of every model when ``None``): the next
    :func:`~bayesdrop.mc_predict` call measures again (e.g. after the machine's load has changed)."""
    if model is None:
        _PLANS.clear()
    else:
        _PLANS.pop(model, None)


def _clock(device: torch.device) -> float:
    """Process CPU time on a CPU with one torch thread (what a pass costs, whatever else runs
    on the machine); otherwise wall time, after synchronising a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time()
    return time.perf_counter()


def _default_generators(device: torch.device) -> list[torch.Generator]:
    """The generators a single pass draws from: the CPU's, and ``device``'s when it is a GPU."""
    gens = [torch.default_generator]
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        gens.append(torch.cuda.default_generators[index])
    return gens


@contextmanager
def _default_generators_restored(device: torch.device) -> Iterator[None]:
    """Restore the default generators after a block that reseeds them (single passes)."""
    gens = _default_generators(device)
    saved = [g.get_state() for g in gens]
    try:
        yield
    finally:
        for g, state in zip(gens, saved):
            g.set_state(state)


@contextmanager
def _without_module_generators(model: nn.Module) -> Iterator[None]:
    """Set the ``generator`` of every bayesdrop module to ``None`` for a block (restored after):
    the passes draw from their own streams, never from a module's generator."""
    saved = [(m, m.generator) for m in model.modules() if isinstance(m, DropoutModule)]
    try:
        for m, _ in saved:
            m.generator = None
        yield
    finally:
        for m, gen in saved:
            m.generator = gen


def _foreign_generators(model: nn.Module) -> bool:
    """Whether a module other than a bayesdrop one keeps a ``torch.Generator`` attribute (its
    draws are then redirected by the torch-function mode, also for single passes)."""
    generator = torch.Generator
    # (a type test: isinstance against torch.Generator goes through a slow metaclass check)
    return any(
        type(v) is generator
        for m in model.modules()
        if not isinstance(m, DropoutModule)
        for v in m.__dict__.values()
    )


class _TiledOutputMismatch(RuntimeError):
    """A tiled call's output does not hold the tiled batch (retried one pass per call)."""


# --------------------------------------------------------------------------- the entry point
def mc_predict(
    model: nn.Module,
    x: Tensor | Sequence[Tensor] | Mapping[str, Any],
    num_samples: int = 10,
    *,
    task: str = "classification",
    output: str = "logits",
    class_dim: int = 1,
    noise_precision: float | None = None,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
    batch_dim: int = 0,
    output_batch_dim: int | None = None,
    keep_samples: bool = True,
    moments_method: str = "unscented",
    exact: bool = True,
    output_key: str = "logits",
) -> MCClassification | MCRegression:
    r"""Predict with ``num_samples`` stochastic passes of ``model`` (MC dropout for any dropout model).

    The passes run under :func:`mc_sampling` (dropout layers sample, every other module is in
    eval mode) and :func:`torch.no_grad`; every module's mode is restored afterwards.

    **Tiling.** Several passes can run in one forward call, tiled into the batch (sample-major:
    rows ``s*B .. (s+1)*B - 1`` of a call hold pass ``s``). Whether that pays depends on the
    device and the model: on a GPU, or for a small model, one call of ``c*B`` rows costs much
    less than ``c`` calls of ``B``; on a CPU a large model is no faster per example in a larger
    batch and can be slower (a convolutional network whose tiled activations leave the cache).
    With ``max_batch=None`` the tile is *measured*: the first calls for a model and an input
    shape time their own passes at 1, 2, 4, ... passes per call, up to all of them (one untimed
    warm-up pass first, the fastest of three or more timed calls per tile; process CPU time on a
    CPU with one torch thread, wall time otherwise), keep a larger tile when it is at least 5%
    faster per pass than the best so far (three tiles in a row that are not end the search; all
    the passes in one call win when they beat the best tile's calls, remainder included), and
    use the best (the search takes about ten calls for a small model); the choice is cached per
    model, input shapes, dtype, device, ``batch_dim``, ``exact`` and torch thread count (:func:`~bayesdrop.uncertainty.tile_choice` reads it,
    :func:`~bayesdrop.uncertainty.clear_tile_choices` forgets it). The measured passes are part of the result, so
    measuring costs no extra pass, and the results do not depend on the tile (see below).
    ``max_batch`` fixes the tile instead: at most that many rows per call (at least one pass,
    ``B`` rows, is always run together). When a tiled call runs out of memory the tile is
    halved and the call retried; when a model cannot run a tiled batch at all (it returns
    another batch size, or fails on it) while one pass per call works, one pass per call is
    used.

    **Randomness.** Pass ``s`` draws all its noise from generators seeded with
    ``seeds[s] = sample_seeds(num_samples, generator)[s]``: its outputs equal exactly those of

    .. code-block:: python

        seeds = bayesdrop.uncertainty.sample_seeds(num_samples, generator)
        with bayesdrop.uncertainty.mc_sampling(model), torch.no_grad():
            for s in range(num_samples):
                torch.manual_seed(seeds[s])
                outputs.append(model(x))

    whatever the tiling, because every random draw of a tiled call is split along the batch and
    each pass's slice comes from that pass's own stream (the private module
    ``bayesdrop.uncertainty._per_sample_streams`` lists the draws covered). The noise is
    identical bit for bit; the outputs agree up to the floating-point rounding of kernels whose
    reduction order depends on the batch size (matrix products may differ in the last bit).
    Modules' own ``generator`` attributes are overridden during the call. A model whose noise has
    no batch dimension (weight noise drawn once per pass) is run one pass per call
    automatically.

    ``exact=False`` trades the tiling invariance for speed on GPUs: each tiled call draws every
    noise tensor whole (one kernel instead of one per pass) from the stream seeded with the
    seed of its first pass. Results are then reproducible for a fixed ``generator`` and
    ``max_batch`` but change with the tiling, so the tile is not measured: ``max_batch=None``
    runs all passes in one call. Noise without a batch dimension still falls back to one pass
    per call, so the passes stay independent.

    **Models that mix the rows of a batch.** Tiling assumes that each row's output depends on
    that row only, as it does for every layer under :func:`mc_sampling` (batch-norm uses its
    running statistics there). A model whose forward mixes rows (attention across the batch
    dimension, a custom normalisation over the batch, a pooled batch summary) would see the
    other passes' rows in a tiled call, and its result would change with the tile: pass
    ``max_batch=B`` (the batch size of ``x``) to run one pass per call, which is exactly the loop
    above.

    **Passes that did not sample.** If two or more passes are all identical (up to rounding) the
    model did not sample: its mutual information and model variance are zero for that reason
    only. A :class:`~bayesdrop.uncertainty.NoSamplingWarning` says so, naming the likely cause: no dropout layer that
    samples under :func:`mc_sampling` (``nn.Dropout*`` or a bayesdrop module), or functional
    dropout written as ``F.dropout(x, p, self.training)``, which is off because the model is in
    eval mode during MC prediction. Turn it into an error with
    ``warnings.simplefilter("error", NoSamplingWarning)``.

    **Moment models.** A model with an ``output_moments(x) -> (mean, var)`` method (the fast
    dropout modules) is answered from the Gaussian moments of its output without sampling:
    probabilities from :func:`bayesdrop.functional.expected_softmax`, expected
    entropy and mutual information from the :math:`2K` unscented sigma points
    :math:`m \pm \sqrt{K v_k}\,e_k` (:math:`\bar p_\sigma` their mean softmax, MI
    :math:`= H[\bar p_\sigma] - \overline{H[p_\sigma]} \ge 0`); regression gives ``mean`` and
    ``var + 1/noise_precision``.

    Args:
        model: the network, called as ``model(x)`` for a tensor, ``model(*x)`` for a tuple/list
            and ``model(**x)`` for a mapping (a keyword batch). Its prediction is what it
            returns when that is a tensor, the entry ``output_key`` of a mapping output (a
            Hugging Face ``ModelOutput``: ``logits`` by default) and the first element of a
            tuple/list (see :mod:`bayesdrop.adapters.batches`).
        x: a batch: a tensor, a tuple/list of tensors sharing the batch dimension
            ``batch_dim``, or a mapping of keyword arguments (a dict, a Hugging Face
            ``BatchEncoding``), whose entries with the batch size along ``batch_dim`` are the
            batched ones (tiled with the passes; every other entry is passed unchanged); the
            batch size is that of its first tensor with dimension ``batch_dim``.
        num_samples: number of passes :math:`S \ge 1` (10 when not given).
        task: ``"classification"`` or ``"regression"``.
        output: for classification, what the model returns: ``"logits"`` (softmax is applied
            along ``class_dim``; log-probabilities work too), ``"probs"`` (probabilities along
            ``class_dim``) or ``"binary_logits"`` (one logit per example, shape ``(B,)`` or
            ``(B, 1)``; the result has the two classes along dimension 1).
        class_dim: class dimension of the model output (1: ``(B, C)`` and ``(B, C, H, W)``).
        noise_precision: regression only: homoscedastic noise precision :math:`\tau > 0`
            added to the variance as :math:`1/\tau`.
        generator: source of the per-pass seeds (CPU or the device's generator); ``None`` uses
            the global generator (so ``torch.manual_seed`` makes results reproducible).
        max_batch: at most this many rows per forward call; ``None`` measures the fastest tile
            (see above; with ``exact=False`` it runs all passes in one call).
        batch_dim: batch dimension of ``x`` (1 for sequence-first RNN inputs).
        output_batch_dim: batch dimension of the model output (default ``batch_dim``).
        keep_samples: keep the per-pass outputs (``samples``); ``False`` keeps running sums only.
        moments_method: ``method=`` passed to ``expected_softmax`` for moment models.
        exact: per-pass random streams (tiling-invariant, the default) or one stream per
            tiled call (faster on GPUs, see above).
        output_key: the entry of a mapping output (``dict``, ``ModelOutput``) that is the
            prediction (default ``"logits"``); not used for outputs of other types.

    Returns:
        :class:`~bayesdrop.uncertainty.MCClassification` or
        :class:`~bayesdrop.uncertainty.MCRegression`.

    Raises:
        ValueError, TypeError: for arguments out of range, an output without the batch or class
            dimension, or non-finite outputs; messages name the argument and use the shapes of
            one pass (the batch size of ``x``), never those of a tiled call.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        >>> g = torch.Generator().manual_seed(0)
        >>> res = mc_predict(model, torch.randn(5, 4, generator=g), num_samples=20, generator=g)
        >>> res.probs.shape, res.samples.shape, res.mutual_information.shape
        (torch.Size([5, 3]), torch.Size([20, 5, 3]), torch.Size([5]))
        >>> bool((res.mutual_information >= 0).all())
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
    num_samples = check_int("num_samples", num_samples)
    check_choice("task", task, TASKS)
    check_choice("output", output, OUTPUTS)
    for name, dim in (("class_dim", class_dim), ("batch_dim", batch_dim)):
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"{name} must be an int, but got {type(dim).__name__}")
    if output_batch_dim is not None and (
        isinstance(output_batch_dim, bool) or not isinstance(output_batch_dim, int)
    ):
        raise TypeError(
            f"output_batch_dim must be an int or None, but got {type(output_batch_dim).__name__}"
        )
    if noise_precision is not None:
        if task != "regression":
            raise ValueError("noise_precision is only meaningful for task='regression'")
        noise_precision = check_positive("noise_precision", noise_precision)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if max_batch is not None:
        max_batch = check_int("max_batch", max_batch)
    if not isinstance(output_key, str):
        raise TypeError(f"output_key must be a string, but got {type(output_key).__name__}")
    inputs = _check_inputs(x)
    entries = _entries(inputs)
    for where, t in entries:
        if isinstance(inputs, tuple) and (t.dim() <= batch_dim or t.dim() < -batch_dim):
            raise ValueError(
                f"{where} has no batch dimension batch_dim={batch_dim}: shape {tuple(t.shape)}"
            )
        # the sum is finite when every element is, unless it overflows: then check each
        if (
            t.is_floating_point()
            and not math.isfinite(float(t.sum()))
            and not bool(torch.isfinite(t).all())
        ):
            raise ValueError(f"{where} must be finite, but it contains NaN or inf")
    if isinstance(inputs, dict):
        batch = batch_size(inputs, batch_dim, "x")
    else:
        batch = int(inputs[0].shape[batch_dim])
    if batch < 1:
        raise ValueError("x must hold at least one example")
    if isinstance(inputs, tuple) and any(int(t.shape[batch_dim]) != batch for t in inputs):
        raise ValueError(
            f"all tensors in x must share the batch size along batch_dim={batch_dim}, got "
            f"{[tuple(t.shape) for t in inputs]}"
        )
    obd = batch_dim if output_batch_dim is None else output_batch_dim
    noise_var = 0.0 if noise_precision is None else 1.0 / noise_precision

    moments = getattr(model, "output_moments", None)
    if callable(moments):
        return _from_moments(model, inputs, task, class_dim, noise_var, moments_method)

    _check_passes_fit(num_samples, batch, keep_samples, entries[0][1].device)
    seeds = sample_seeds(num_samples, generator)
    acc = _Accumulator(task, output, class_dim, keep_samples, batch, obd, num_samples)
    # exact=False results depend on the tile, so its tile is never measured (all passes at once)
    measure = max_batch is None and exact
    plan = _plan_for(model, _plan_key(inputs, batch_dim, exact)) if measure else None
    cap = num_samples if max_batch is None else max(1, max_batch // batch)
    device = entries[0][1].device
    direct = not _foreign_generators(model)
    done = 0
    with (
        mc_sampling(model),
        _without_module_generators(model),
        _default_generators_restored(device),
        torch.no_grad(),
    ):
        while done < num_samples:
            remaining = num_samples - done
            c, timed = plan.next(remaining, num_samples) if plan is not None else (remaining, False)
            if c > cap:
                c, timed = cap, False
            chunk = seeds[done : done + c]
            failed = False
            try:
                start = _clock(device) if timed else 0.0
                outs = _passes(
                    model, inputs, chunk, batch, batch_dim, obd, exact, direct, output_key
                )
                elapsed = _clock(device) - start if timed else None
            except Untileable:
                if c == 1:
                    raise
                cap = 1
            except Exception as err:
                if c == 1:
                    raise
                if _is_oom(err):
                    cap = max(1, c // 2)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                else:
                    failed = True
            else:
                if plan is not None:
                    plan.record(c, elapsed)
                acc.add(outs, done)
                done += c
                continue
            if failed:
                # the tiled call failed: one pass reports a real error in the terms of x (its
                # batch size and shapes, not the tiled ones); if one pass works, the model
                # cannot run tiled batches and gets one pass per call
                outs = _passes(
                    model, inputs, chunk[:1], batch, batch_dim, obd, exact, direct, output_key
                )
                cap = 1
                acc.add(outs, done)
                done += 1
            if plan is not None:
                plan.settle(cap)
    return acc.result(noise_var, model)


def _passes(
    model: nn.Module,
    inputs: _Batch,
    seeds: list[int],
    batch: int,
    batch_dim: int,
    obd: int,
    exact: bool,
    direct: bool,
    output_key: str,
) -> Tensor:
    """Run ``len(seeds)`` passes in one call; the outputs as ``(passes, *one_pass_shape)``."""
    c = len(seeds)
    if c == 1 and direct:
        # one pass: seeding the default generators is the same stream as the per-sample one
        # and spares every op of the forward the dispatch through the torch-function mode
        # (the caller restores the default generators when the passes are done)
        for g in _default_generators(_entries(inputs)[0][1].device):
            g.manual_seed(seeds[0])
        raw = call_model(model, inputs)
    else:
        tiled = tile_batch(inputs, c, batch_dim, batch)
        with PerSampleRandomness(seeds, batch, batch_dim, split=exact):
            raw = call_model(model, tiled)
    out = prediction(raw, output_key if isinstance(raw, Mapping) else None)
    if out.dim() <= obd or out.dim() < -obd or out.shape[obd] != c * batch:
        if c > 1:
            raise _TiledOutputMismatch
        raise ValueError(
            f"for x with {batch} examples along batch_dim={batch_dim} the model returned shape "
            f"{tuple(out.shape)}, which does not hold them along output_batch_dim={obd}; set "
            "output_batch_dim to the output's batch dimension"
        )
    return out.unflatten(obd, (c, batch)).movedim(obd, 0)


def _first_bad(values: Tensor) -> int:
    """Index along dim 0 of the first pass with a non-finite value."""
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(1)
    return int(bad.nonzero()[0, 0])


class _Accumulator:
    """Running statistics over passes (keeps the passes themselves when asked).

    Checks the output of one pass in the caller's terms (its shape, ``class_dim``) and notes
    whether any two passes differ.
    """

    def __init__(
        self,
        task: str,
        output: str,
        class_dim: int,
        keep: bool,
        batch: int,
        obd: int,
        total: int,
    ) -> None:
        self.task, self.output, self.class_dim, self.keep = task, output, class_dim, keep
        self.batch, self.obd, self.total = batch, obd, total
        self.cd = 1  # class dimension of one pass's probabilities (set by the first check)
        self.checked = False
        self.parts: list[Tensor] = []  # the kept passes: probabilities or outputs
        self.n = 0
        self.sum: Tensor | None = None
        self.sum2: Tensor | None = None  # squared outputs (regression) or entropies
        self.first: Tensor | None = None
        self.varied = False
        self.pending: list[Tensor] = []
        self.pending_size = 0

    def _check(self, shape: tuple[int, ...]) -> None:
        nd = len(shape)
        if self.task == "regression":
            return
        if self.output == "binary_logits":
            if not (nd == 1 or (nd == 2 and shape[1] == 1)) or self.obd not in (0, -nd):
                raise ValueError(
                    "output='binary_logits' needs one logit per example, shape "
                    f"({self.batch},) or ({self.batch}, 1) for x with {self.batch} examples, "
                    f"but the model returned {shape}; use output='logits' for several classes"
                )
            self.cd = 1
            return
        cd = self.class_dim + nd if self.class_dim < 0 else self.class_dim
        if not 0 <= cd < nd:
            raise ValueError(
                f"class_dim={self.class_dim} is not a dimension of the model output, whose shape "
                f"is {shape} for x with {self.batch} examples"
            )
        if cd == (self.obd + nd if self.obd < 0 else self.obd):
            raise ValueError(
                f"class_dim={self.class_dim} is the batch dimension of the model output {shape}; "
                "set class_dim to the dimension that holds the classes"
            )
        if shape[cd] < 2:
            if self.output == "logits":
                raise ValueError(
                    f"output='logits' needs at least 2 classes along class_dim={self.class_dim}, "
                    f"but the model returned shape {shape}; use output='binary_logits' for one "
                    "logit per example"
                )
            raise ValueError(
                f"output='probs' needs at least 2 classes along class_dim={self.class_dim}, but "
                f"the model returned shape {shape}"
            )
        self.cd = cd

    def _probs(self, outs: Tensor, entropy: bool) -> tuple[Tensor, Tensor | None]:
        """Per-pass probabilities ``(c, *shape)`` and, when asked, their entropies."""
        cd = self.cd + 1
        if self.output == "logits":
            if not entropy:
                return torch.softmax(outs, dim=cd), None
            logp = torch.log_softmax(outs, dim=cd)
            p = logp.exp()
            h = -(p * logp).sum(cd)
            if not math.isfinite(float(h.sum())):
                # 0 log 0 = 0 for -inf logits (masked classes): clamping keeps 0 * finite
                h = -(p * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(cd)
            return p, h
        if self.output == "binary_logits":
            z = outs.reshape(outs.shape[0], self.batch)
            q = torch.sigmoid(z)
            p = torch.stack([1.0 - q, q], dim=2)
            if not entropy:
                return p, None
            return p, -(q * F.logsigmoid(z) + (1.0 - q) * F.logsigmoid(-z))
        total = outs.sum(cd)
        tol = 1e-3 if outs.dtype in (torch.float16, torch.bfloat16) else 1e-4
        dev = float((total - 1).abs().max()) if total.numel() else 0.0
        if bool((outs < 0).any()) or dev > tol:
            raise ValueError(
                "output='probs' needs model outputs that are probabilities summing to one along "
                f"class_dim={self.class_dim}, but the largest deviation from one is {dev:.3g}"
            )
        return outs, (_entropy(outs, cd) if entropy else None)

    def add(self, outs: Tensor, first_pass: int) -> None:
        """``outs``: ``(c, *out_shape)`` outputs of passes ``first_pass .. first_pass + c - 1``.

        Outputs wait in a block of about ``_BLOCK`` elements and are turned into probabilities
        and entropies a block at a time: a few large ops instead of a dozen small ones per pass
        (what makes a pass-at-a-time ``mc_predict`` as fast as a loop of ``softmax(model(x))``).
        """
        if not self.checked:
            self._check(tuple(outs.shape[1:]))
            self.checked = True
        if not outs.is_floating_point():
            raise TypeError(
                f"the model must return a floating tensor, but it returned {outs.dtype}"
            )
        if self.first is None:
            self.first = outs[0]
        if not self.varied:
            ref = self.first
            scale = float(ref.abs().max()) if ref.numel() else 0.0
            rtol = 1e-10 if ref.dtype == torch.float64 else 1e-5
            diff = float((outs - ref).abs().max()) if ref.numel() else 0.0
            self.varied = diff > rtol * scale
        self.pending.append(outs)
        self.pending_size += outs.numel()
        if self.pending_size >= _BLOCK:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        outs = self.pending[0] if len(self.pending) == 1 else torch.cat(self.pending, 0)
        self.pending, self.pending_size = [], 0
        c, lo = outs.shape[0], self.n
        second: Tensor | None = None
        if self.task == "classification":
            # kept passes: entropies later, from the samples, only if read (MCClassification)
            outs, second = self._probs(outs, entropy=not self.keep)
            # probabilities and entropies are finite exactly when their sum is (they are
            # bounded): a cheap test, where an elementwise isfinite costs a pass over them
            check = outs if second is None else second
            if not math.isfinite(float(check.sum())):
                raise ValueError(
                    f"the model's output in pass {lo + _first_bad(check)} gives non-finite "
                    "probabilities (NaN or +inf in the output)"
                )
        else:
            if not bool(torch.isfinite(outs).all()):
                raise ValueError(f"the model returned NaN or inf in pass {lo + _first_bad(outs)}")
            second = None if self.keep else outs.pow(2)
        self.n += c
        if self.keep:
            self.parts.append(outs)
            return
        assert second is not None
        first, second = outs.sum(0), second.sum(0)
        self.sum = first if self.sum is None else self.sum + first
        self.sum2 = second if self.sum2 is None else self.sum2 + second

    def result(self, noise_var: float, model: nn.Module) -> MCClassification | MCRegression:
        self._flush()
        if self.n >= 2 and not self.varied:
            layers = _sampling_layers(model)
            why = (
                f"its sampling layers ({', '.join(layers[:4])}{', ...' if len(layers) > 4 else ''})"
                " drew noise that changed nothing (drop rates of zero?)"
                if layers
                else "it has no layer that samples under mc_sampling (nn.Dropout* or a bayesdrop "
                "module); dropout written as F.dropout(x, p, self.training) is off because the "
                "model is in eval mode during MC prediction: use an nn.Dropout module instead"
            )
            warnings.warn(
                f"mc_predict: all {self.n} passes returned the same output, so the model did not "
                f"sample and its mutual information / model variance are zero for that reason "
                f"only: {why}",
                NoSamplingWarning,
                stacklevel=3,
            )
        stacked = None
        if self.keep:
            stacked = self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts, 0)
        if self.task == "classification":
            class_dim = 1 if self.output == "binary_logits" else self.class_dim
            if stacked is not None:
                return MCClassification(
                    stacked.mean(0), stacked, None, None, None, self.n, class_dim
                )
            assert self.sum is not None and self.sum2 is not None
            probs, exp_h = self.sum / self.n, self.sum2 / self.n
            pred_h = _entropy(probs, self.cd)
            mi = (pred_h - exp_h).clamp_min(0.0)
            return MCClassification(probs, None, pred_h, exp_h, mi, self.n, class_dim)
        if stacked is not None:
            mean = stacked.mean(0)
            model_var = stacked.var(0, correction=0)
        else:
            assert self.sum is not None and self.sum2 is not None
            mean = self.sum / self.n
            model_var = (self.sum2 / self.n - mean.pow(2)).clamp_min(0.0)
        return MCRegression(mean, model_var + noise_var, model_var, noise_var, stacked, self.n)


def _from_moments(
    model: nn.Module,
    inputs: _Batch,
    task: str,
    class_dim: int,
    noise_var: float,
    method: str,
) -> MCClassification | MCRegression:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            mean, var = call_model(model.output_moments, inputs)  # type: ignore[arg-type]
    finally:
        for m, training in modes:
            m.training = training
    if task == "regression":
        return MCRegression(mean, var + noise_var, var, noise_var, None, 0)
    try:
        from ..functional.fast_dropout import expected_softmax
    except ImportError as err:  # pragma: no cover - depends on the installed version
        raise ImportError(
            "mc_predict on a fast-dropout model needs bayesdrop.functional.fast_dropout"
        ) from err
    m = mean.movedim(class_dim, -1)
    v = var.movedim(class_dim, -1)
    probs = expected_softmax(m, v, method=method)
    k = m.shape[-1]
    # 2K unscented sigma points m ± sqrt(K v_k) e_k, equal weights 1/(2K)
    step = torch.diag_embed((k * v).clamp_min(0.0).sqrt())  # (*, K, K): row j = sqrt(K v_j) e_j
    points = torch.cat([m.unsqueeze(-2) + step, m.unsqueeze(-2) - step], dim=-2)
    p_sigma = torch.softmax(points, dim=-1)
    exp_h = _entropy(p_sigma, -1).mean(-1)
    mi = (_entropy(p_sigma.mean(-2), -1) - exp_h).clamp_min(0.0)
    probs = probs.movedim(-1, class_dim)
    return MCClassification(probs, None, _entropy(probs, class_dim), exp_h, mi, 0, class_dim)


def _available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (host: ``MemAvailable``), or ``None`` when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


#: Host bytes per pass for its seed: 8 in the seed tensor, 36 as a Python int in the list.
_SEED_BYTES = 44


def _check_passes_fit(num_samples: int, batch: int, keep: bool, device: torch.device) -> None:
    """Refuse, before allocating anything, a number of passes whose bookkeeping cannot fit.

    Every pass needs its seed on the host (:data:`_SEED_BYTES`) and, with ``keep_samples``, at
    least one 4-byte value per example for its kept output on ``device``: a lower bound on the
    memory :func:`mc_predict` must hold, compared with the memory free now.
    """
    host = _SEED_BYTES * num_samples
    kept = 4 * num_samples * batch if keep else 0
    needs = [(torch.device("cpu"), host + (kept if device.type == "cpu" else 0))]
    if device.type != "cpu" and kept:
        needs.append((device, kept))
    for where, need in needs:
        free = _available_bytes(where)
        if free is not None and need > free:
            hint = "; or keep_samples=False (running sums only)" if keep else ""
            raise ValueError(
                f"num_samples={num_samples} cannot fit: the passes need at least "
                f"{need / 2**30:.3g} GiB of {where.type} memory (a seed per pass"
                f"{', and its kept output' if keep else ''}) but {free / 2**30:.3g} GiB are "
                f"free; use fewer passes{hint}"
            )
