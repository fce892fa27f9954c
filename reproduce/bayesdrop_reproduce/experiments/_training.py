"""The reproduction suite's one training loop.

Every experiment (and the demo) trains through :func:`fit`: minibatches of indices into the
training tensors, the per-example loss of :func:`bayesdrop.objective` (or a loss of the
experiment's own, such as the EM passes of ``uci-regression``), and one
:func:`training_step` per minibatch. What differs between experiments is passed in, not
rewritten: where the minibatches come from (:func:`shuffled_epochs`: every example once per
epoch, in a fresh random order; :func:`sampled_batches`: drawn with replacement), the
optimiser, a KL weight or learning-rate schedule, and callbacks after each step and epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from bayesdrop import objective

__all__ = ["shuffled_epochs", "sampled_batches", "training_step", "fit", "linear_decay"]


def shuffled_epochs(
    n: int, batch_size: int, epochs: int, generator: torch.Generator, device: torch.device | str
) -> Iterator[Iterator[Tensor]]:
    """``epochs`` epochs, each the minibatches of one random permutation of ``range(n)``.

    The permutation of an epoch is drawn from ``generator`` when that epoch starts; the last
    minibatch of an epoch is smaller when ``batch_size`` does not divide ``n``.
    """
    for _ in range(epochs):
        yield _epoch(n, batch_size, generator, device)


def _epoch(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str
) -> Iterator[Tensor]:
    perm = torch.randperm(n, generator=generator).to(device)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


def sampled_batches(
    n: int, batch_size: int, steps: int, generator: torch.Generator, device: torch.device | str
) -> Iterator[Iterator[Tensor]]:
    """One "epoch" of ``steps`` minibatches of ``min(batch_size, n)`` indices drawn with
    replacement from ``range(n)`` (each drawn from ``generator`` when it is needed)."""
    yield (
        torch.randint(0, n, (min(batch_size, n),), generator=generator).to(device)
        for _ in range(steps)
    )


def linear_decay(
    optimizer: torch.optim.Optimizer, total: float, start: float = 0.5
) -> Callable[[float], None]:
    r"""A :func:`fit` ``schedule``: every group's learning rate stays at its initial value until
    ``start * total`` (in :func:`fit`'s progress units, epochs), then falls linearly to zero at
    ``total``:

    .. math::
        \eta(t) = \eta_0 \min\Bigl(1, \max\Bigl(0, \frac{T - t}{(1 - s)T}\Bigr)\Bigr).

    A constant step leaves stochastic-gradient noise in learned dropout rates, so that they jitter
    about their optimum instead of settling; decaying the step (Robbins & Monro, "A Stochastic
    Approximation Method", 1951) lets them converge. The ``medium`` budget uses it.

    Raises:
        ValueError: ``total`` not positive or ``start`` outside ``[0, 1)``.
    """
    if not total > 0:
        raise ValueError(f"total must be positive, got {total}")
    if not 0 <= start < 1:
        raise ValueError(f"start must lie in [0, 1), got {start}")
    base = [g["lr"] for g in optimizer.param_groups]

    def schedule(progress: float) -> None:
        left = min(1.0, max(0.0, (total - progress) / ((1.0 - start) * total)))
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * left

    return schedule


def training_step(
    optimizer: torch.optim.Optimizer, loss: Tensor, params: Sequence[Tensor] | None = None
) -> None:
    """One optimiser step on ``loss``: gradients of every parameter (``loss.backward()``), or,
    given ``params``, of those only (the other parameters' ``.grad`` is left alone)."""
    optimizer.zero_grad(set_to_none=True)
    if params is None:
        loss.backward()
    else:
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
    optimizer.step()


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    batches: Iterable[Iterable[Tensor]],
    *,
    nll: Callable[[Tensor, Tensor], Tensor] | None = None,
    n_data: int | None = None,
    kl_weight: float | Callable[[float], float] = 1.0,
    loss: Callable[[Tensor], Tensor] | None = None,
    params: Sequence[Tensor] | None = None,
    schedule: Callable[[float], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, Tensor], None] | None = None,
    max_steps: int | None = None,
) -> int:
    """Train ``model`` on ``(x, y)``; returns the number of optimiser steps taken.

    For each epoch of ``batches`` (an iterable of epochs, each an iterable of index tensors, e.g.
    :func:`shuffled_epochs`) the model is put in training mode, then for each minibatch ``idx``:

    1. ``schedule(progress)``, if given, where ``progress`` is the number of epochs done so far
       (``epoch + examples already seen in this epoch / len(y)``) — e.g. a learning-rate decay;
    2. the loss: ``loss(idx)`` if given, else ``bayesdrop.objective(model, x[idx], y[idx], nll,
       n_data=n_data, kl_weight=w)`` with ``w = kl_weight(progress)`` when ``kl_weight`` is a
       function (a KL warm-up), else ``kl_weight``;
    3. :func:`training_step` (restricted to ``params`` when given);
    4. ``on_step(steps)`` with the number of steps taken so far (a callback that evaluates the
       model is expected to put it back into training mode).

    After each epoch, ``on_epoch(epoch, last_loss)``. ``max_steps`` stops after that many steps
    (the epoch in progress still gets its ``on_epoch``).
    """
    if loss is None and (nll is None or n_data is None):
        raise TypeError("fit needs either loss= or both nll= and n_data=")
    n = len(y)
    steps = 0
    for epoch, epoch_batches in enumerate(batches):
        model.train()
        seen = 0
        last = torch.zeros(())
        for idx in epoch_batches:
            progress = epoch + seen / n
            if schedule is not None:
                schedule(progress)
            if loss is not None:
                last = loss(idx)
            else:
                assert nll is not None and n_data is not None
                w = kl_weight(progress) if callable(kl_weight) else kl_weight
                last = objective(model, x[idx], y[idx], nll, n_data=n_data, kl_weight=w)
            training_step(optimizer, last, params)
            steps += 1
            seen += len(idx)
            if on_step is not None:
                on_step(steps)
            if max_steps is not None and steps >= max_steps:
                break
        if on_epoch is not None:
            on_epoch(epoch, last.detach())
        if max_steps is not None and steps >= max_steps:
            break
    return steps
