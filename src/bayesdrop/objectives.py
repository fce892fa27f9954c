"""The single training entry point: :func:`objective`, and :func:`kl_divergence`.

Scaling convention (stated once, used everywhere): the objective is a **per-example** loss,

.. math::
    \\mathcal L = \\frac1B\\sum_{i=1}^B \\mathrm{nll}_i + \\frac{\\text{kl\\_weight}}{N}\\,\\mathrm{KL},

i.e. the negative ELBO divided by the data-set size :math:`N` (``n_data``). Modules' ``kl()``
are plain sums that never see :math:`N`; the division happens here and only here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_positive
from .nn._base import DropoutModule
from .nn.learnable_bernoulli import AntitheticPair, LearnableBernoulliDropout

__all__ = [
    "objective",
    "kl_divergence",
    "dropout_rates",
    "rate_parameters",
    "rate_param_groups",
    "PAIR_MODES",
]

#: How :func:`objective` evaluates the antithetic pair of LBD masks (see its docstring).
PAIR_MODES = ("concat", "nograd")


def kl_divergence(model: nn.Module) -> Tensor:
    """Sum of ``kl()`` over every bayesdrop dropout module in ``model`` (a 0-dim tensor).

    Never scaled by the data-set size. Zero (on the model's device) when there is none.
    """
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
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
        **options: options of the other group (e.g. ``weight_decay=1e-4``); the rate group
            does not inherit them.

    Returns:
        ``[{"params": others, **options}, {"params": rates, "lr": rate_lr,
        "weight_decay": rate_weight_decay, "name": "rates"}]``; the first group is named
        ``"weights"``. The rate group is omitted when the model has no rate parameters, and
        ``"lr"`` is omitted from it when ``rate_lr`` is ``None``.

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
        }
        if rate_lr is not None:
            group["lr"] = rate_lr
        groups.append(group)
    return groups


@contextmanager
def _pair_context(modules: Sequence[LearnableBernoulliDropout], mode: str) -> Iterator[None]:
    try:
        for m in modules:
            m._pair = AntitheticPair(mode=mode)
        yield
    finally:
        for m in modules:
            m._pair = None


def _concat(x: Any, dim: int, name: str) -> Any:
    if x is None:
        return None
    if isinstance(x, Tensor):
        return torch.cat([x, x], dim=dim)
    if isinstance(x, (tuple, list)):
        return type(x)(_concat(v, dim, name) for v in x)
    raise TypeError(f"{name} must be a Tensor or a tuple/list of Tensors, got {type(x).__name__}")


def _batch_size(x: Any, dim: int, name: str) -> int:
    if isinstance(x, Tensor):
        if x.dim() <= dim:
            raise ValueError(f"{name} has no batch dimension {dim}: shape {tuple(x.shape)}")
        return int(x.shape[dim])
    if isinstance(x, (tuple, list)) and x:
        return _batch_size(x[0], dim, name)
    raise TypeError(f"{name} must be a Tensor or a non-empty tuple/list of Tensors")


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
) -> Tensor:
    r"""Per-example training loss whose gradient is the right estimator for every module inside.

    .. math::
        \mathcal L = \frac1B\sum_i \mathrm{nll}_i + \text{kl\_weight}\cdot\frac{\mathrm{KL}}{N}

    Continuous families (Concrete, Gaussian, variational, sparse) get pathwise gradients by
    ordinary back-propagation. When ``model`` is in training mode and contains
    :class:`~bayesdrop.nn.LearnableBernoulliDropout` modules, the batch is evaluated as an
    antithetic pair of masks :math:`z^{(1)} = 1[u > \sigma(-\phi)]`,
    :math:`z^{(2)} = 1[u < \sigma(\phi)]` (one uniform vector per example, shared by the pair) and
    a surrogate :math:`\sum_k \phi_k\,\mathrm{sg}(\hat g_k)` is added, where :math:`\hat g` is the
    per-example ARM or DisARM estimate (each module's ``estimator``) built from
    :math:`\mathrm{nll}_i(z^{(1)}) - \mathrm{nll}_i(z^{(2)})`. The surrogate has value zero, so the
    returned number is the loss itself, and one ``.backward()`` gives unbiased gradients for the
    rates and ordinary gradients for everything else (the pathwise dependence of the inverted
    dropout scale on the rates included).

    Args:
        model: any module (also a ``DistributedDataParallel`` wrapper).
        inputs: a tensor, or tuple/list of tensors, passed as ``model(inputs)`` (a tuple/list is
            unpacked: ``model(*inputs)``).
        targets: passed to ``nll`` (a tensor, a tuple/list of tensors, or ``None``).
        nll: ``nll(outputs, targets)`` returning per-example losses of shape ``(batch,)``.
        n_data: data-set size :math:`N` (the KL is divided by it, once, here).
        kl_weight: multiplier of the KL term (e.g. for annealing); ``>= 0``.
        batch_dim: batch dimension of ``inputs``/``targets`` (for the pair's concatenation).
        pair: ``"concat"`` runs the pair as one doubled batch (both halves train the ordinary
            parameters); ``"nograd"`` runs the :math:`z^{(1)}` half without autograd and the
            :math:`z^{(2)}` half as an ordinary pass (only that half trains the other
            parameters). The default is ``"nograd"``: in ``benchmarks/bench_lbd_step.py`` it
            costs about 1.5× an ``nn.Dropout`` step against about 1.65× for ``"concat"``
            (784-1024-1024-10 MLP, batch 128, 2 CPU cores). ``"concat"`` gives the ordinary
            parameters a lower-variance gradient and runs a single forward (simplest under
            DistributedDataParallel).

    Returns:
        A 0-dim tensor.
    """
    if isinstance(n_data, bool) or not isinstance(n_data, int) or n_data < 1:
        raise ValueError(f"n_data must be a positive int (the data-set size), but got {n_data!r}")
    kl_weight = check_positive("kl_weight", kl_weight, allow_zero=True)
    check_choice("pair", pair, PAIR_MODES)
    if not callable(nll):
        raise TypeError("nll must be callable as nll(outputs, targets) -> (batch,) losses")
    batch = _batch_size(inputs, batch_dim, "inputs")

    def run(x: Any) -> Any:
        return model(*x) if isinstance(x, (tuple, list)) else model(x)

    lbd = [m for m in model.modules() if isinstance(m, LearnableBernoulliDropout)]
    if not lbd or not any(m.sampling for m in lbd):
        data_loss = _per_example(nll(run(inputs), targets), batch).mean()
        surrogate = None
    elif pair == "concat":
        with _pair_context(lbd, "concat"):
            out = run(_concat(inputs, batch_dim, "inputs"))
            both = _per_example(nll(out, _concat(targets, batch_dim, "targets")), 2 * batch)
            f1, f2 = both[:batch], both[batch:]
            delta = (f1 - f2).detach() / batch
            surrogate = sum(m.rate_surrogate(delta) for m in lbd)
        data_loss = both.mean()
    else:
        with _pair_context(lbd, "first"):
            with torch.no_grad():
                f1 = _per_example(nll(run(inputs), targets), batch)
            for m in lbd:
                assert m._pair is not None
                m._pair.mode = "second"
            f2 = _per_example(nll(run(inputs), targets), batch)
            delta = (f1 - f2).detach() / batch
            surrogate = sum(m.rate_surrogate(delta) for m in lbd)
        data_loss = f2.mean()

    loss = data_loss
    if kl_weight:
        loss = loss + kl_weight * kl_divergence(model).to(loss.dtype) / n_data
    if surrogate is not None:
        surrogate = torch.as_tensor(surrogate).to(loss.dtype)
        loss = loss + (surrogate - surrogate.detach())
    return loss
