r"""Monte Carlo prediction with dropout left on: :func:`mc_predict` and :func:`mc_sampling`.

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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_positive
from ..nn._base import DropoutModule
from ._randomness import PerSampleRandomness, Untileable

__all__ = [
    "mc_predict",
    "mc_sampling",
    "sample_seeds",
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


@dataclass(frozen=True)
class MCClassification:
    """Result of :func:`mc_predict` for classification (all entropies in nats).

    Attributes:
        probs: mean predictive probabilities :math:`\\bar p`, shaped like the model output (the
            class dimension at ``class_dim``).
        samples: per-pass probabilities, shape ``(S, *probs.shape)``; ``None`` when
            ``keep_samples=False`` or when the answer came from moments.
        predictive_entropy: :math:`H[\\bar p]`, the output shape without the class dimension.
        expected_entropy: :math:`\\frac1S\\sum_s H[p_s]` (aleatoric part).
        mutual_information: predictive minus expected entropy (epistemic part), ``>= 0``.
        num_samples: ``S`` (0 when the answer came from moments without sampling).
        class_dim: the class dimension of :attr:`probs`.
    """

    probs: Tensor
    samples: Tensor | None
    predictive_entropy: Tensor
    expected_entropy: Tensor
    mutual_information: Tensor
    num_samples: int
    class_dim: int = 1

    @property
    def prediction(self) -> Tensor:
        """The predicted class, ``argmax`` of :attr:`probs` along the class dimension."""
        return self.probs.argmax(dim=self.class_dim)


@dataclass(frozen=True)
class MCRegression:
    """Result of :func:`mc_predict` for regression.

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
def sample_seeds(samples: int, generator: torch.Generator | None = None) -> list[int]:
    """The per-pass seeds :func:`mc_predict` uses: ``torch.randint(0, 2**62, (samples,))``.

    Drawn on the CPU from ``generator`` (or from the global generator when ``None``).
    """
    samples = check_int("samples", samples)
    dev = generator.device if generator is not None else "cpu"
    seeds = torch.randint(0, _SEED_HIGH, (samples,), generator=generator, device=dev)
    return [int(s) for s in seeds.tolist()]


def _check_inputs(x: Any) -> tuple[Tensor, ...]:
    if isinstance(x, Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, Tensor) for t in x):
        return tuple(x)
    raise TypeError("x must be a Tensor or a non-empty tuple/list of Tensors")


def _tile(x: Tensor, copies: int, dim: int) -> Tensor:
    if copies == 1:
        return x
    return torch.cat([x] * copies, dim=dim)


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "not enough memory" in msg)


def _entropy(probs: Tensor, dim: int) -> Tensor:
    """Entropy in nats along ``dim`` with :math:`0 \\log 0 = 0` (rounding outside [0, 1] clipped)."""
    p = probs.clamp(0.0, 1.0)
    return -torch.special.xlogy(p, p).sum(dim)


def _to_probs(out: Tensor, output: str, class_dim: int) -> Tensor:
    if output == "logits":
        if out.dim() <= class_dim or out.shape[class_dim] < 2:
            raise ValueError(
                f"output='logits' needs at least 2 classes along class_dim={class_dim}, but the "
                f"model returned shape {tuple(out.shape)}; use output='binary_logits' for one logit"
            )
        return torch.softmax(out, dim=class_dim)
    if output == "binary_logits":
        q = torch.sigmoid(out.squeeze(-1) if out.dim() > 1 and out.shape[-1] == 1 else out)
        return torch.stack([1.0 - q, q], dim=class_dim)
    if out.dim() <= class_dim:
        raise ValueError(f"the model output {tuple(out.shape)} has no class_dim={class_dim}")
    total = out.sum(class_dim)
    tol = 1e-3 if out.dtype in (torch.float16, torch.bfloat16) else 1e-4
    dev = float((total - 1).abs().max()) if total.numel() else 0.0
    if bool((out < 0).any()) or dev > tol:
        raise ValueError(
            "output='probs' needs model outputs that are probabilities summing to one along "
            f"class_dim={class_dim}, but the largest deviation from one is {dev:.3g}"
        )
    return out


# --------------------------------------------------------------------------- the entry point
def mc_predict(
    model: nn.Module,
    x: Tensor | Sequence[Tensor],
    samples: int = 10,
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
) -> MCClassification | MCRegression:
    r"""Predict with ``samples`` stochastic passes of ``model`` (MC dropout for any dropout model).

    The passes run under :func:`mc_sampling` (dropout layers sample, every other module is in
    eval mode) and :func:`torch.no_grad`; every module's mode is restored afterwards.

    **Vectorisation.** The ``S`` passes are tiled into the batch (sample-major: rows
    ``s*B .. (s+1)*B - 1`` of a pass hold sample ``s``), as many per forward call as
    ``max_batch`` rows allow (all of them by default). When a tiled call runs out of memory the
    number of samples per call is halved and the call retried.

    **Randomness.** Pass ``s`` draws all its noise from generators seeded with
    ``seeds[s] = sample_seeds(S, generator)[s]``: its outputs equal exactly those of

    .. code-block:: python

        seeds = bayesdrop.uncertainty.sample_seeds(S, generator)
        with bayesdrop.uncertainty.mc_sampling(model), torch.no_grad():
            for s in range(S):
                torch.manual_seed(seeds[s])
                outputs.append(model(x))

    whatever the tiling (``max_batch``), because every random draw of a tiled call is split
    along the batch and each sample's slice comes from that sample's own stream (see
    :mod:`bayesdrop.uncertainty._randomness` for the draws covered). The noise is identical
    bit for bit; the outputs agree up to the floating-point rounding of kernels whose
    reduction order depends on the batch size (matrix products may differ in the last bit). Modules' own ``generator``
    attributes are overridden during the call. A model whose noise has no batch dimension (weight
    noise drawn once per pass) is run one sample per call automatically.

    ``exact=False`` trades the tiling invariance for speed on GPUs: each tiled call draws every
    noise tensor whole (one kernel instead of one per sample) from the stream seeded with the
    seed of its first sample. Results are then reproducible for a fixed ``generator`` and
    ``max_batch`` but change with the tiling; noise without a batch dimension still falls back
    to one sample per call, so the passes stay independent.

    **Moment models.** A model with an ``output_moments(x) -> (mean, var)`` method (the fast
    dropout modules) is answered from the Gaussian moments of its output without sampling:
    probabilities from :func:`bayesdrop.functional.fast_dropout.expected_softmax`, expected
    entropy and mutual information from the :math:`2K` unscented sigma points
    :math:`m \pm \sqrt{K v_k}\,e_k` (:math:`\bar p_\sigma` their mean softmax, MI
    :math:`= H[\bar p_\sigma] - \overline{H[p_\sigma]} \ge 0`); regression gives ``mean`` and
    ``var + 1/noise_precision``.

    Args:
        model: the network; its forward takes ``x`` (a tuple/list is unpacked) and returns a
            Tensor.
        x: a batch, or a tuple/list of tensors sharing the batch dimension ``batch_dim``.
        samples: number of passes :math:`S \ge 1`.
        task: ``"classification"`` or ``"regression"``.
        output: for classification, what the model returns: ``"logits"`` (softmax is applied
            along ``class_dim``; log-probabilities work too), ``"probs"`` or ``"binary_logits"``.
        class_dim: class dimension of the output (1: ``(N, C)`` and ``(N, C, H, W)``).
        noise_precision: regression only: homoscedastic noise precision :math:`\tau > 0`
            added to the variance as :math:`1/\tau`.
        generator: source of the per-pass seeds (CPU or the device's generator); ``None`` uses
            the global generator (so ``torch.manual_seed`` makes results reproducible).
        max_batch: at most this many rows per forward call (at least one sample, ``B`` rows, is
            always run together); ``None`` tiles all samples into one call.
        batch_dim: batch dimension of ``x`` (1 for sequence-first RNN inputs).
        output_batch_dim: batch dimension of the model output (default ``batch_dim``).
        keep_samples: keep the per-pass outputs (``samples``); ``False`` keeps running sums only.
        moments_method: ``method=`` passed to ``expected_softmax`` for moment models.
        exact: per-sample random streams (tiling-invariant, the default) or one stream per
            tiled call (faster on GPUs, see above).

    Returns:
        :class:`MCClassification` or :class:`MCRegression`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        >>> g = torch.Generator().manual_seed(0)
        >>> res = mc_predict(model, torch.randn(5, 4, generator=g), samples=20, generator=g)
        >>> res.probs.shape, res.samples.shape, res.mutual_information.shape
        (torch.Size([5, 3]), torch.Size([20, 5, 3]), torch.Size([5]))
        >>> bool((res.mutual_information >= 0).all())
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
    samples = check_int("samples", samples)
    check_choice("task", task, TASKS)
    check_choice("output", output, OUTPUTS)
    if isinstance(class_dim, bool) or not isinstance(class_dim, int):
        raise TypeError(f"class_dim must be an int, but got {type(class_dim).__name__}")
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
    inputs = _check_inputs(x)
    for t in inputs:
        if t.dim() <= batch_dim:
            raise ValueError(f"x has no batch dimension {batch_dim}: shape {tuple(t.shape)}")
    batch = int(inputs[0].shape[batch_dim])
    if batch < 1:
        raise ValueError("x must hold at least one example")
    if any(int(t.shape[batch_dim]) != batch for t in inputs):
        raise ValueError(
            f"all tensors in x must share the batch size along batch_dim={batch_dim}, got "
            f"{[tuple(t.shape) for t in inputs]}"
        )
    obd = batch_dim if output_batch_dim is None else output_batch_dim
    noise_var = 0.0 if noise_precision is None else 1.0 / noise_precision

    moments = getattr(model, "output_moments", None)
    if callable(moments):
        return _from_moments(model, inputs, task, class_dim, noise_var, moments_method)

    seeds = sample_seeds(samples, generator)
    acc = _Accumulator(task, output, class_dim, keep_samples)
    per_call = samples if max_batch is None else max(1, max_batch // batch)
    done = 0
    with mc_sampling(model), torch.no_grad():
        while done < samples:
            c = min(per_call, samples - done)
            try:
                out = _tiled_pass(model, inputs, seeds[done : done + c], batch, batch_dim, exact)
            except Untileable:
                if c == 1:
                    raise
                per_call = 1
                continue
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
                if not _is_oom(err) or c == 1:
                    raise
                per_call = max(1, c // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if not isinstance(out, Tensor):
                raise TypeError(f"model must return a Tensor, but it returned {type(out).__name__}")
            if out.dim() <= obd or out.shape[obd] != c * batch:
                raise ValueError(
                    f"the model output {tuple(out.shape)} has no batch dimension "
                    f"output_batch_dim={obd} of size {c * batch}; set output_batch_dim"
                )
            acc.add(out.unflatten(obd, (c, batch)).movedim(obd, 0))
            done += c
    return acc.result(noise_var)


def _tiled_pass(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    seeds: list[int],
    batch: int,
    batch_dim: int,
    exact: bool,
) -> Any:
    tiled = [_tile(t, len(seeds), batch_dim) for t in inputs]
    with PerSampleRandomness(seeds, batch, batch_dim, split=exact):
        return model(*tiled)


class _Accumulator:
    """Running statistics over passes (keeps the passes themselves when asked)."""

    def __init__(self, task: str, output: str, class_dim: int, keep: bool) -> None:
        self.task, self.output, self.class_dim, self.keep = task, output, class_dim, keep
        self.parts: list[Tensor] = []
        self.n = 0
        self.sum: Tensor | None = None
        self.sum2: Tensor | None = None  # squared outputs (regression) or entropies

    @property
    def _stacked_class_dim(self) -> int:
        return self.class_dim + 1 if self.class_dim >= 0 else self.class_dim

    def add(self, outs: Tensor) -> None:
        """``outs``: ``(c, *out_shape)`` outputs of ``c`` passes."""
        if self.task == "classification":
            cd = self._stacked_class_dim
            outs = _to_probs(outs, self.output, cd)
            second = _entropy(outs, cd).sum(0)
        else:
            second = outs.pow(2).sum(0)
        first = outs.sum(0)
        self.sum = first if self.sum is None else self.sum + first
        self.sum2 = second if self.sum2 is None else self.sum2 + second
        self.n += outs.shape[0]
        if self.keep:
            self.parts.append(outs)

    def result(self, noise_var: float) -> MCClassification | MCRegression:
        assert self.sum is not None and self.sum2 is not None
        stacked = torch.cat(self.parts, 0) if self.keep else None
        if self.task == "classification":
            probs = stacked.mean(0) if stacked is not None else self.sum / self.n
            pred_h = _entropy(probs, self.class_dim)
            if stacked is not None:
                exp_h = _entropy(stacked, self._stacked_class_dim).mean(0)
            else:
                exp_h = self.sum2 / self.n
            mi = (pred_h - exp_h).clamp_min(0.0)
            return MCClassification(probs, stacked, pred_h, exp_h, mi, self.n, self.class_dim)
        if stacked is not None:
            mean = stacked.mean(0)
            model_var = stacked.var(0, correction=0)
        else:
            mean = self.sum / self.n
            model_var = (self.sum2 / self.n - mean.pow(2)).clamp_min(0.0)
        return MCRegression(mean, model_var + noise_var, model_var, noise_var, stacked, self.n)


def _from_moments(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    task: str,
    class_dim: int,
    noise_var: float,
    method: str,
) -> MCClassification | MCRegression:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            mean, var = model.output_moments(*inputs)  # type: ignore[operator]
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
