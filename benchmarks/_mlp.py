"""The training-step benchmarks' common model: MLP 784-1024-1024-10, batch 128, Adam, trained
through :func:`bayesdrop.objective` (the baseline too), with either ``nn.Dropout`` before every
Linear or a bayesdrop wrapper around it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop import objective

SIZES = [(784, 1024), (1024, 1024), (1024, 10)]


def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def mlp(wrap: Callable[[nn.Linear], nn.Module] | None, dropout_p: float = 0.5) -> nn.Module:
    """ReLU MLP over :data:`SIZES`: ``wrap(Linear)`` per layer, or ``nn.Dropout(dropout_p)``
    before every ``Linear`` when ``wrap`` is ``None``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(SIZES):
        if wrap is None:
            layers += [nn.Dropout(dropout_p), nn.Linear(a, b)]
        else:
            layers.append(wrap(nn.Linear(a, b)))
        if i < len(SIZES) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> Callable[[], None]:
    """One Adam step of ``objective(model, x, y, nll, 60000, **kw)``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        objective(model, x, y, nll, 60000, **kw).backward()
        opt.step()

    return step


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of 128 random inputs and labels."""
    torch.manual_seed(0)
    return torch.randn(128, 784), torch.randint(0, 10, (128,))
