"""The single training entry point: :func:`objective`, and :func:`kl_divergence`.

Scaling convention (stated once, used everywhere): the objective is a **per-example** loss,

.. math::
    \\mathcal L = \\frac1B\\sum_{i=1}^B \\mathrm{nll}_i + \\frac{\\text{kl\\_weight}}{N}\\,\\mathrm{KL},

i.e. the negative ELBO divided by the data-set size :math:`N` (``n_data``). Modules' ``kl()``
are plain sums that never see :math:`N`; the division happens here and only here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._validation import check_choice, check_positive
from .adapters.batches import batch_size, call_model, check_batch, prediction, tile_batch
from .functional.bernoulli import uniform_dtype
from .functional.ghost_batch_norm import ghost_groups
from .nn._base import DropoutModule
from .nn.ghost_batch_norm import GhostBatchNorm
from .nn.learnable_bernoulli import AntitheticPair, LearnableBernoulliDropout, PairStreams

__all__ = [
    "objective",
    "kl_divergence",
    "dropout_rates",
    "rate_parameters",
    "rate_param_groups",
    "register_batch_coupled",
    "batch_coupled_modules",
    "PAIR_MODES",
]

#: How :func:`objective` evaluates the antithetic pair of LBD masks (see its docstring).
PAIR_MODES = ("concat", "nograd")


def kl_divergence(model: nn.Module) -> Tensor:
    """Sum of ``kl()`` over every bayesdrop dropout module in ``model`` (a 0-dim tensor).

    Never scaled by the data-set size. Zero (on the model's device) when there is none.
    """
    _check_model(model)
    total: Tensor | None = None
    for m in model.modules():
        if isinstance(m, DropoutModule):
            k = m.kl()
            total = k if total is None else total + k.to(total.device)
    if total is None:
        ref = next(model.parameters(), None)
        return torch.zeros(()) if ref is None else ref.new_zeros(())
    return total


def dropout_rates(model: nn.Module) -> dict[str, Tensor]:
    """Drop probabilities of every dropout module, by module name (``nn.Dropout*`` included).

    Example:
        >>> from torch import nn
        >>> from bayesdrop.nn import LearnableBernoulliDropout
        >>> model = nn.Sequential(nn.Dropout(0.2), LearnableBernoulliDropout(nn.Linear(3, 1)))
        >>> {k: v.shape for k, v in dropout_rates(model).items()}
        {'0': torch.Size([1]), '1': torch.Size([3])}
    """
    _check_model(model)
    rates: dict[str, Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, DropoutModule):
            rates[name] = m.p
        elif isinstance(m, nn.modules.dropout._DropoutNd):
            rates[name] = torch.tensor([float(m.p)])
    return rates


def rate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` that sets a dropout rate (each once), in module order.

    These are the ``rate_parameters()`` of every bayesdrop dropout module inside: ``logit_p``,
    ``log_alpha`` and ``log_sigma2``; the weights of wrapped layers are not among them.
    """
    _check_model(model)
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, DropoutModule):
            for p in m.rate_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def rate_param_groups(
    model: nn.Module,
    *,
    rate_lr: float | None = None,
    rate_weight_decay: float = 0.0,
    rate_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    r"""Two optimiser parameter groups: the dropout-rate parameters and everything else.

    Pass the result to any ``torch.optim`` optimiser::

        opt = torch.optim.Adam(rate_param_groups(model, rate_lr=5e-2), lr=1e-3)

    Why a group of their own: a rate parameter (``logit_p``, ``log_alpha``, ``log_sigma2``)
    receives the gradient of the whole data term through one scalar per unit, and its KL
    gradient is divided by the data-set size :math:`N`; with the learning rate suited to the
    weights (about 1e-3 for Adam), rates typically move by a few thousandths in a training run
    that fits the weights, so the "learned" rates stay at their initial values. A larger step
    for the rates (1e-2 to 1e-1 for Adam) lets them settle in the same number of steps, and
    weight decay on them would pull the logits to zero (``p = 0.5``), a prior nobody asked for,
    so it is off by default.

    Args:
        model: the model (any ``nn.Module``).
        rate_lr: learning rate of the rate group; ``None`` keeps the optimiser's default.
        rate_weight_decay: weight decay of the rate group (default 0).
        rate_options: other options of the rate group (e.g. ``{"momentum": 0.9}``), stated
            explicitly: the rate group never takes the other group's ``options``; options not
            given to either group are the optimiser's defaults.
        \*\*options: options of the other group (e.g. ``weight_decay=1e-4``, ``momentum=0.9``);
            the rate group does not inherit them.

    Returns:
        Two dicts, ``{"params": others, "name": "weights", **options}`` and
        ``{"params": rates, "lr": rate_lr, "weight_decay": rate_weight_decay, "name": "rates",
        **rate_options}``. The rate group is omitted when the model has no rate parameters, and
        ``"lr"`` is omitted from it when ``rate_lr`` is ``None``.

    Raises:
        ValueError: an option that no ``torch.optim`` optimiser takes (a misspelling such as
            ``weight_decy`` would otherwise be ignored by the optimiser without a word), or
            ``lr``/``weight_decay`` given in ``rate_options`` instead of ``rate_lr``/
            ``rate_weight_decay``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesdrop.nn import LearnableBernoulliDropout
        >>> model = nn.Sequential(LearnableBernoulliDropout(nn.Linear(3, 2)))
        >>> groups = rate_param_groups(model, rate_lr=5e-2, weight_decay=1e-4)
        >>> [(g["name"], len(g["params"])) for g in groups]
        [('weights', 2), ('rates', 1)]
        >>> opt = torch.optim.Adam(groups, lr=1e-3)
        >>> [g["lr"] for g in opt.param_groups], [g["weight_decay"] for g in opt.param_groups]
        ([0.001, 0.05], [0.0001, 0.0])
    """
    rates = rate_parameters(model)
    _check_optimizer_options(options, "")
    rate_options = dict(rate_options or {})
    _check_optimizer_options(rate_options, "rate_options: ")
    for key, instead in (("lr", "rate_lr"), ("weight_decay", "rate_weight_decay")):
        if key in rate_options:
            raise ValueError(f"rate_options: give {key!r} as {instead}=..., not in rate_options")
    if rate_lr is not None:
        rate_lr = check_positive("rate_lr", rate_lr)
    rate_weight_decay = check_positive("rate_weight_decay", rate_weight_decay, allow_zero=True)
    ids = {id(p) for p in rates}
    others = [p for p in model.parameters() if id(p) not in ids]
    groups: list[dict[str, Any]] = [{"params": others, "name": "weights", **options}]
    if rates:
        group: dict[str, Any] = {
            "params": rates,
            "weight_decay": rate_weight_decay,
            "name": "rates",
            **rate_options,
        }
        if rate_lr is not None:
            group["lr"] = rate_lr
        groups.append(group)
    return groups


def _optimizer_options() -> frozenset[str]:
    """Every keyword a ``torch.optim`` optimiser's constructor takes (besides ``params``)."""
    import inspect

    names: set[str] = set()
    for obj in vars(torch.optim).values():
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
            names.update(inspect.signature(obj.__init__).parameters)
    return frozenset(names - {"self", "params", "args", "kwargs", "defaults"})


def _check_optimizer_options(options: Mapping[str, Any], where: str) -> None:
    import difflib

    known = _optimizer_options()
    for key in options:
        if key in ("params", "name"):
            raise ValueError(f"{where}{key!r} is set by rate_param_groups itself")
        if key not in known:
            extra = {"rate_lr", "rate_weight_decay", "rate_options"}
            close = difflib.get_close_matches(key, sorted(known | extra), 1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{where}unknown optimiser option {key!r}{hint} (no torch.optim optimiser takes "
                "it; the optimiser would ignore it)"
            )


# ---------------------------------------------------------------------------------------------
# Layers that couple the examples of a batch
# ---------------------------------------------------------------------------------------------

_COUPLED_TYPES: list[type[nn.Module]] = [_BatchNorm]


def register_batch_coupled(*module_types: type[nn.Module]) -> None:
    """Declare module types whose training-mode output for one example depends on the others.

    :func:`objective` then uses the whole-batch ARM/DisARM form for the LBD draws whose output
    reaches one of them in training mode (see its ``coupled`` argument); instances of subclasses
    count as the registered type. Every torch BatchNorm variant
    (``BatchNorm1d/2d/3d``, their lazy forms, ``SyncBatchNorm``: every subclass of torch's
    ``_BatchNorm``) is registered already; a BatchNorm without running statistics couples the
    batch in eval mode too. Per-example normalisations (LayerNorm, GroupNorm, InstanceNorm) do
    not couple examples and need no declaration.

    Example:
        >>> from torch import nn
        >>> class BatchCentre(nn.Module):  # subtracts the batch mean: couples the examples
        ...     def forward(self, x):
        ...         return x - x.mean(0)
        >>> register_batch_coupled(BatchCentre)
        >>> [name for name, _ in batch_coupled_modules(nn.Sequential(nn.Linear(2, 2), BatchCentre()))]
        ['1']
    """
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(
                f"module_types must be nn.Module subclasses, but got {t!r} ({type(t).__name__})"
            )
        if t not in _COUPLED_TYPES:
            _COUPLED_TYPES.append(t)


def batch_coupled_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module of ``model`` that couples the examples of a batch now.

    A registered type (:func:`register_batch_coupled`, every BatchNorm variant) in training mode;
    a BatchNorm without running statistics also in eval mode (it always uses batch statistics).
    """
    _check_model(model)
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            if m.training or m.running_mean is None or m.running_var is None:
                found.append((name, m))
        elif m.training and any(isinstance(m, t) for t in _COUPLED_TYPES):
            found.append((name, m))
    return found


# ---------------------------------------------------------------------------------------------
# Helpers of the antithetic pair
# ---------------------------------------------------------------------------------------------


def _check_model(model: Any, name: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be an nn.Module, but got {type(model).__name__}")


@contextmanager
def _pair_context(
    modules: Sequence[LearnableBernoulliDropout],
    mode: str,
    batch_dim: int,
    batch_size: int | None,
    model: nn.Module | None = None,
) -> Iterator[tuple[PairStreams, list[int]]]:
    """Opens an :class:`AntitheticPair` on every LBD module, with the step's own streams of
    uniforms (seeded now, before any other noise of the step) and a shared clock (both yielded);
    ``model`` is searched for generators that other modules share with the LBD modules."""
    shared: set[int] = set()
    if model is not None and any(m.generator is not None for m in modules):
        lbd_ids = {id(m) for m in modules}
        shared = {id(g) for g in _held_generators(model, skip=lbd_ids)}
    streams = PairStreams(list(modules), shared)
    clock = [0]
    try:
        for m in modules:
            m._pair = AntitheticPair(
                mode=mode,
                batch_dim=batch_dim,
                batch_size=batch_size,
                streams=streams,
                clock=clock,
            )
        yield streams, clock
    finally:
        for m in modules:
            m._pair = None


def _held_generators(model: nn.Module, skip: set[int] | None = None) -> list[torch.Generator]:
    """Every ``torch.Generator`` an attribute of a module of ``model`` holds, under any name,
    directly or inside a list, tuple, set or dict (three levels deep), each once; modules whose
    ``id`` is in ``skip`` are not searched (their children are)."""
    found: dict[int, torch.Generator] = {}

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, torch.Generator):
            found.setdefault(id(value), value)
        elif depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
            for v in value:
                visit(v, depth + 1)
        elif depth < 3 and isinstance(value, dict):
            for v in value.values():
                visit(v, depth + 1)

    for m in model.modules():
        if skip is not None and id(m) in skip:
            continue
        for name, value in vars(m).items():
            if name not in ("_parameters", "_buffers", "_modules"):
                visit(value, 0)
    return list(found.values())


class _RandomState:
    """Snapshot of every random stream the model draws from: the global CPU generator, the CUDA
    generators (when CUDA is initialised) and every generator a module holds
    (:func:`_held_generators`) but those in ``exclude`` (the LBD modules' dedicated generators,
    which only the first evaluation draws from)."""

    def __init__(self, model: nn.Module, exclude: set[int]) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )
        self.generators = [
            (g, g.get_state()) for g in _held_generators(model) if id(g) not in exclude
        ]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for g, state in self.generators:
            g.set_state(state)


def _concat_targets(y: Any, dim: int, batch: int) -> Any:
    """Targets doubled along ``dim`` when they have it with the batch's size, else along dim 0."""
    if isinstance(y, Tensor):
        if y.dim() > dim and y.shape[dim] == batch:
            return torch.cat([y, y], dim=dim)
        if y.dim() > 0 and y.shape[0] == batch:
            return torch.cat([y, y], dim=0)
        raise ValueError(
            f"targets of shape {tuple(y.shape)} have no dimension of the batch size {batch} "
            f"(looked at batch_dim={dim} and 0)"
        )
    if isinstance(y, (tuple, list)):
        return type(y)(_concat_targets(v, dim, batch) for v in y)
    if y is None:
        return None
    raise TypeError(
        f"targets must be a Tensor, a tuple/list of Tensors or None, got {type(y).__name__}"
    )


def _per_example(losses: Any, batch: int) -> Tensor:
    if not isinstance(losses, Tensor):
        raise TypeError(f"nll must return a Tensor, but got {type(losses).__name__}")
    if losses.shape != (batch,):
        raise ValueError(
            f"nll must return per-example losses of shape (batch,) = ({batch},), but got "
            f"{tuple(losses.shape)}; use reduction='none' (e.g. F.cross_entropy(..., "
            "reduction='none'))"
        )
    return losses


def _check_n_data(n_data: Any) -> int:
    if (
        isinstance(n_data, Tensor)
        and n_data.dim() == 0
        and not n_data.is_floating_point()
        and not n_data.is_complex()
        and n_data.dtype != torch.bool
    ):
        n_data = int(n_data.item())  # a 0-dim integer tensor
    if isinstance(n_data, bool) or not isinstance(n_data, numbers.Integral):
        raise TypeError(
            f"n_data must be a positive integer (the data-set size), but got {n_data!r} "
            f"({type(n_data).__name__})"
        )
    n = int(n_data)
    if n < 1:
        raise ValueError(f"n_data must be a positive integer (the data-set size), but got {n}")
    return n


def _sequential_split(
    model: nn.Module, inputs: Any, lbd: Sequence[LearnableBernoulliDropout]
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]] | None:
    """``(head, tail)`` of a plain ``nn.Sequential``: the children before the first one that
    holds an LBD module, and the rest; ``None`` when there is nothing before it."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return None
    if not isinstance(inputs, Tensor):
        return None
    ids = {id(m) for m in lbd}
    children = list(model)
    k = next(
        (i for i, c in enumerate(children) if any(id(m) in ids for m in c.modules())),
        len(children),
    )
    if k == 0:
        return None
    head, tail = children[:k], children[k:]

    def run(mods: list[nn.Module], x: Any) -> Any:
        for m in mods:
            x = m(x)
        return x

    return (lambda x: run(head, x)), (lambda x: run(tail, x))


def _whole_batch_delta(f1: Tensor, f2: Tensor, coupled: list[tuple[str, nn.Module]]) -> Tensor:
    """:math:`\\bar f^{(1)} - \\bar f^{(2)}`; summed over processes when a SyncBatchNorm couples
    the batches of a process group (each process's share of the global batch mean, times the
    world size that ``DistributedDataParallel``'s gradient average divides by)."""
    d = f1.mean() - f2.mean()
    if (
        any(isinstance(m, nn.SyncBatchNorm) for _, m in coupled)
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        d = d.clone()
        torch.distributed.all_reduce(d)
    return d


# ---------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------


def objective(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    nll: Callable[[Any, Any], Tensor],
    n_data: int,
    kl_weight: float = 1.0,
    *,
    batch_dim: int = 0,
    pair: str = "nograd",
    coupled: bool | None = None,
    common_random_numbers: bool = True,
    split: tuple[Callable[[Any], Any], Callable[[Any], Any]] | Literal[False] | None = None,
    output_key: str = "logits",
) -> Tensor:
    r"""Per-example training loss whose gradient is the right estimator for every module inside.

    .. math::
        \mathcal L = \frac1B\sum_i \mathrm{nll}_i + \text{kl\_weight}\cdot\frac{\mathrm{KL}}{N}

    Continuous families (Concrete, Gaussian, variational, sparse) get pathwise gradients by
    ordinary back-propagation. When ``model`` is in training mode and contains
    :class:`~bayesdrop.nn.LearnableBernoulliDropout` modules, the batch is evaluated as an
    antithetic pair of masks :math:`z^{(1)} = 1[u > \sigma(-\phi)]`,
    :math:`z^{(2)} = 1[u < \sigma(\phi)]` (uniforms drawn in float32, shared by the pair) and a
    surrogate :math:`\sum_k \phi_k\,\mathrm{sg}(\hat g_k)` is added, where :math:`\hat g` is the
    ARM or DisARM estimate (each module's ``estimator``). The surrogate has value zero, so the
    returned number is the loss itself, and one ``.backward()`` gives unbiased gradients for the
    rates and ordinary gradients for everything else (the pathwise dependence of the inverted
    dropout scale on the rates included).

    Three forms of the estimate, each unbiased where it is used, chosen per LBD draw:

    * **per-example** (the draw reaches no layer that couples examples: example :math:`i`
      depends only on its own masks of this draw):
      :math:`\hat g_k = \frac1B\sum_i (f_i(z^{(1)}) - f_i(z^{(2)}))\,c_{ik}`, with :math:`c`
      ARM's :math:`u - \tfrac12` or DisARM's coefficient; the lower-variance form.
    * **whole-batch** (the draw's output reaches a layer that couples the examples, e.g.
      BatchNorm in training mode): all masks of the batch are one Bernoulli vector whose loss is
      the batch mean, so every coefficient multiplies the same number,
      :math:`\hat g_k = (\bar f(z^{(1)}) - \bar f(z^{(2)}))\sum_i c_{ik}`; its variance is about
      :math:`B` times the per-example form's. With ``pair="nograd"`` each evaluation of the pair
      sees its own batch statistics, which is exactly the function being differentiated.
    * **per ghost batch** (the draw reaches only :class:`~bayesdrop.nn.GhostBatchNorm` layers,
      whose statistics are over contiguous ghost batches :math:`G` of :math:`g` examples):
      :math:`\hat g_k = \frac1B\sum_{i} \big(\sum_{j \in G(i)} f_j(z^{(1)}) - f_j(z^{(2)})\big)
      c_{ik}`; about :math:`g` times the per-example form's variance.

    A draw reaches a coupled layer when that layer finishes its forward after the draw in the
    first evaluation (a superset of the layers its output flows into, so the choice errs only
    towards the whole batch): an LBD module after the last BatchNorm of a network gets the
    per-example form, one before it the whole-batch form.

    The LBD uniforms come from streams that no other noise reads, so they are independent of all
    other noise of the model whatever it does: a module's own ``generator`` when only LBD modules
    hold it, else a stream of the step's own, seeded by one draw from the global generator (or
    the shared generator) when the pair opens
    (:class:`~bayesdrop.nn.learnable_bernoulli.PairStreams`). The gradient-free evaluation
    leaves the model's buffers as it found them (BatchNorm running statistics are updated once
    per step, by the evaluation that trains), and with ``common_random_numbers`` it replays the
    random state of the first evaluation (the global CPU and CUDA generators and every
    ``torch.Generator`` a module of ``model`` holds, under any attribute name, also inside a
    list, tuple or dict), so that other noise in the model (``nn.Dropout``, Concrete masks, a VAE's
    :math:`\epsilon`) is the same in both and only the LBD masks differ (lower variance). A
    generator held elsewhere (a closure, a global variable) is not replayed: its noise then
    differs between the two evaluations, which costs variance but no bias. For a plain
    ``nn.Sequential`` (or a ``split`` you declare) the layers before the first LBD module run
    once, and only the rest runs twice; the gradients are bit-identical to re-running the whole
    model.

    Args:
        model: any module (also a ``DistributedDataParallel`` wrapper).
        inputs: the batch, at least one example: a tensor (``model(inputs)``), a mapping such
            as a dict or a Hugging Face ``BatchEncoding`` (keyword batch, ``model(**inputs)``), or
            a tuple/list (``model(*inputs)``). The batch size is that of the first tensor with
            dimension ``batch_dim``; see :mod:`bayesdrop.adapters.batches`.
        targets: passed to ``nll`` (a tensor, a tuple/list of tensors, or ``None``).
        nll: ``nll(outputs, targets)`` returning per-example losses of shape ``(batch,)``.
            ``outputs`` is the model's prediction: a tensor as returned, the entry
            ``output_key`` of a mapping output (a Hugging Face ``ModelOutput``: its ``logits``
            by default), and any other output as it is (a model returning several tensors, e.g.
            a VAE's reconstruction, mean and log-variance, needs them all in its loss).
        n_data: data-set size :math:`N`, any positive integer (Python or NumPy); the KL is
            divided by it, once, here.
        kl_weight: multiplier of the KL term (e.g. for annealing); ``>= 0``.
        batch_dim: batch dimension of ``inputs`` (e.g. 1 for sequence-first ``(T, B, F)``
            inputs). It reaches the LBD modules of linear and bare form (their masks are laid out
            and paired along it; a 2-d ``(batch, features)`` input of such a module uses dimension
            0); convolutions use 0 and RNNs their own ``batch_first``. ``pair="concat"`` doubles
            ``inputs`` along it, and ``targets`` along it when they have it with the batch's size,
            else along their first dimension.
        pair: ``"nograd"`` (default) runs the :math:`z^{(1)}` evaluation without autograd and the
            :math:`z^{(2)}` evaluation as an ordinary pass (only that one trains the other
            parameters); ``"concat"`` runs the pair as one doubled batch (both halves train the
            ordinary parameters, a lower-variance gradient for them; a single forward). Refused
            with batch-coupled layers, whose statistics would pool both halves.
        coupled: ``None`` (default) detects batch-coupled layers
            (:func:`batch_coupled_modules`: every BatchNorm variant in training mode and the types
            given to :func:`register_batch_coupled`) and chooses the form per draw as above;
            ``True`` declares a coupling the detection cannot see (a custom layer, a model that
            reshapes its batch) and always uses the whole-batch form, which is unbiased for every
            model; ``False`` asserts that no example's loss depends on another's masks (the
            per-example form everywhere).
        common_random_numbers: replay the random state for the second evaluation of
            ``pair="nograd"`` (default ``True``); ``False`` draws other noise afresh. Either way
            the rate gradient is unbiased; the replay lowers its variance.
        split: ``(head, tail)`` with ``model(inputs) == tail(head(inputs))`` (``head`` receives
            ``inputs`` as the model would, ``tail`` one argument) and no LBD module in ``head``:
            ``head`` then runs once per step with ``pair="nograd"``. ``None`` splits a plain
            ``nn.Sequential`` automatically before its first child that holds an LBD module;
            ``False`` never splits.
        output_key: the entry of a mapping output (``dict``, Hugging Face ``ModelOutput``) that
            ``nll`` receives (default ``"logits"``); not used for outputs of other types.

    Returns:
        A 0-dim tensor.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``nll`` not callable, ``n_data`` not an
            integer.
        ValueError: an empty batch, ``n_data < 1``, ``kl_weight < 0``, an unknown ``pair``,
            ``pair="concat"`` with batch-coupled layers, a batch dimension the LBD modules'
            inputs do not have.
    """
    _check_model(model)
    n_data = _check_n_data(n_data)
    if isinstance(kl_weight, numbers.Real) and not isinstance(kl_weight, bool):
        kl_weight = float(kl_weight)  # NumPy scalars too
    kl_weight = check_positive("kl_weight", kl_weight, allow_zero=True)
    check_choice("pair", pair, PAIR_MODES)
    if isinstance(batch_dim, bool) or not isinstance(batch_dim, int) or batch_dim < 0:
        raise ValueError(f"batch_dim must be a non-negative int, but got {batch_dim!r}")
    if not callable(nll):
        raise TypeError("nll must be callable as nll(outputs, targets) -> (batch,) losses")
    if coupled is not None and not isinstance(coupled, bool):
        raise TypeError(f"coupled must be None, True or False, but got {coupled!r}")
    if not isinstance(common_random_numbers, bool):
        raise TypeError(
            f"common_random_numbers must be True or False, but got {common_random_numbers!r}"
        )
    if split is not None and split is not False:
        if not (isinstance(split, tuple) and len(split) == 2 and all(callable(f) for f in split)):
            raise TypeError("split must be None, False or a (head, tail) tuple of callables")
    check_batch(inputs, "inputs")
    if not isinstance(output_key, str):
        raise TypeError(f"output_key must be a string, but got {type(output_key).__name__}")
    batch = batch_size(inputs, batch_dim, "inputs")
    if batch == 0:
        raise ValueError(
            f"inputs hold an empty batch (size 0 along batch_dim={batch_dim}); objective needs "
            "at least one example"
        )

    def run(x: Any) -> Any:
        out = call_model(model, x)
        return prediction(out, output_key) if isinstance(out, Mapping) else out

    lbd = [m for m in model.modules() if isinstance(m, LearnableBernoulliDropout)]
    surrogate: Tensor | None = None
    if not lbd or not any(m.sampling for m in lbd):
        data_loss = _per_example(nll(run(inputs), targets), batch).mean()
    else:
        found = batch_coupled_modules(model)
        whole_batch = bool(found) if coupled is None else coupled
        if pair == "concat":
            if whole_batch:
                what = (
                    f"{type(found[0][1]).__name__} at {found[0][0]!r} in training mode"
                    if found
                    else "coupled=True"
                )
                raise ValueError(
                    f"pair='concat' cannot be used with batch-coupled layers ({what}): the doubled "
                    "batch would pool the statistics of both halves of the antithetic pair and "
                    "bias the rate gradient; use pair='nograd' (the default)"
                )
            with _pair_context(lbd, "concat", batch_dim, batch, model):
                out = run(tile_batch(inputs, 2, batch_dim, batch))
                for m in lbd:
                    assert m._pair is not None
                    m._pair.check_draws()
                both = _per_example(nll(out, _concat_targets(targets, batch_dim, batch)), 2 * batch)
                f1, f2 = both[:batch], both[batch:]
                dt = uniform_dtype(both.dtype)
                delta = (f1.detach().to(dt) - f2.detach().to(dt)) / batch
                surrogate = _sum_surrogates(lbd, delta)
            data_loss = both.mean()
        else:
            data_loss, surrogate = _nograd_pair(
                model,
                run,
                inputs,
                targets,
                nll,
                batch,
                lbd,
                batch_dim=batch_dim,
                found=found,
                coupled=coupled,
                replay=common_random_numbers,
                split=split,
            )

    loss = data_loss
    if kl_weight:
        loss = loss + kl_weight * kl_divergence(model).to(loss.dtype) / n_data
    if surrogate is not None:
        loss = loss + (surrogate - surrogate.detach()).to(loss.dtype)
    return loss


def _sum_surrogates(
    lbd: Sequence[LearnableBernoulliDropout], delta: Tensor | Callable[[Any], Tensor]
) -> Tensor:
    """Sum of the modules' rate surrogates: ``delta`` is the loss difference of every draw (per
    example or whole batch), or a function giving the one for each recorded draw."""
    total: Tensor | None = None
    for m in lbd:
        assert m._pair is not None
        d = delta if isinstance(delta, Tensor) else [delta(draw) for draw in m._pair.draws]
        s = m.rate_surrogate(d)
        total = s if total is None else total + s.to(total.device)
    assert total is not None
    return total


class _CouplingLog:
    """Forward hooks on the batch-coupled modules that log, on the pair's clock, when each one
    finished during the first evaluation and which examples it coupled: ``None`` for the whole
    batch, an int ``g`` for contiguous ghost batches of ``g`` examples."""

    def __init__(
        self,
        found: list[tuple[str, nn.Module]],
        clock: list[int],
        batch: int,
        batch_dim: int,
    ) -> None:
        self.events: list[tuple[int, int | None]] = []
        self.recording = True
        self._clock, self._batch, self._batch_dim = clock, batch, batch_dim
        self._handles = [m.register_forward_hook(self._hook) for _, m in found]

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.recording:
            return
        group: int | None = None
        x = args[0] if args else None
        if (
            isinstance(module, GhostBatchNorm)
            and self._batch_dim == 0
            and isinstance(x, Tensor)
            and x.dim() >= 2
            and x.shape[0] == self._batch
            and module.ghost_size < self._batch
        ):
            group = module.ghost_size
        self._clock[0] += 1
        self.events.append((self._clock[0], group))

    def group_after(self, tick: int) -> int | None:
        """The coupling of a draw made at ``tick``: the join of every coupling logged after it
        (``1``: none; ``None``: the whole batch; ``g``: contiguous blocks of ``g`` examples)."""
        g = 1
        for t, group in self.events:
            if t > tick:
                if group is None:
                    return None
                g = g * group // math.gcd(g, group)
        return None if g >= self._batch else g

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _nograd_pair(
    model: nn.Module,
    run: Callable[[Any], Any],
    inputs: Any,
    targets: Any,
    nll: Callable[[Any, Any], Tensor],
    batch: int,
    lbd: Sequence[LearnableBernoulliDropout],
    *,
    batch_dim: int,
    found: list[tuple[str, nn.Module]],
    coupled: bool | None,
    replay: bool,
    split: tuple[Callable[[Any], Any], Callable[[Any], Any]] | Literal[False] | None,
) -> tuple[Tensor, Tensor]:
    """The pair as a gradient-free evaluation with :math:`z^{(1)}` and an ordinary one with
    :math:`z^{(2)}`; returns the data loss and the rate surrogate.

    The form of each draw's estimate: ``coupled=True`` whole batch, ``False`` per example, and
    ``None`` per draw, from the batch-coupled modules (``found``) that finished after the draw in
    the first evaluation (a module that consumes the draw's output finishes after it): none, the
    per-example form; ghost batch normalisations only, the difference summed per ghost batch;
    any other, the whole batch."""
    parts = None if split is False else split
    if parts is None and split is None:
        parts = _sequential_split(model, inputs, lbd)
    auto = coupled is None and bool(found)
    checked = None if coupled or auto else batch
    with _pair_context(lbd, "first", batch_dim, checked, model) as (streams, clock):
        log = _CouplingLog(found, clock, batch, batch_dim) if auto else None
        try:
            if parts is not None:
                head, tail = parts
                x = call_model(head, inputs)
                if any(m._pair is not None and m._pair.draws for m in lbd):
                    raise ValueError(
                        "the head of split called an LBD module; split before the first LBD module"
                    )
                forward: Callable[[Any], Any] = tail
            else:
                x, forward = inputs, run
            state = _RandomState(model, streams.dedicated) if replay else None
            # Buffers the gradient-free pass updates in place (BatchNorm running statistics) are
            # put back, so that only the trained evaluation updates them. Only changed buffers
            # are written: an unchanged one (in a split's head) may be saved for backward already.
            buffers = [(b, b.clone()) for b in model.buffers()]
            with torch.no_grad():
                f1 = _per_example(nll(forward(x), targets), batch)
                for b, saved in buffers:
                    if not torch.equal(b, saved):
                        b.copy_(saved)
            if log is not None:
                log.recording = False
            if state is not None:
                state.restore()
            for m in lbd:
                assert m._pair is not None
                m._pair.check_draws()
                m._pair.mode = "second"
            f2 = _per_example(nll(forward(x), targets), batch)
        finally:
            if log is not None:
                log.remove()
        for m in lbd:
            assert m._pair is not None
            if m._pair.cursor != len(m._pair.draws):
                raise RuntimeError(
                    "the second pass of the antithetic pair called an LBD module fewer times "
                    "than the first"
                )
        dt = uniform_dtype(f2.dtype)
        a, b2 = f1.detach().to(dt), f2.detach().to(dt)
        per_example = (a - b2) / batch
        if coupled is True:
            surrogate = _sum_surrogates(lbd, _whole_batch_delta(a, b2, found))
        elif log is None:
            surrogate = _sum_surrogates(lbd, per_example)
        else:
            forms: dict[int | None, Tensor] = {}

            def delta(draw: Any) -> Tensor:
                group = log.group_after(draw.tick)
                if group is not None and draw.u.shape[draw.batch_dim] != batch:
                    group = None  # not one entry per example: the whole batch (always exact)
                if group not in forms:
                    if group is None:
                        forms[group] = _whole_batch_delta(a, b2, found)
                    elif group == 1:
                        forms[group] = per_example
                    else:
                        ids = ghost_groups(batch, group, per_example.device)
                        sums = per_example.new_zeros(int(ids[-1]) + 1).index_add(
                            0, ids, per_example
                        )
                        forms[group] = sums[ids]
                return forms[group]

            surrogate = _sum_surrogates(lbd, delta)
    return f2.mean(), surrogate
