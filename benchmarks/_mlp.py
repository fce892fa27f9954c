"""The training-step benchmarks' common model: MLP 784-1024-1024-10, batch 128, Adam (or plain
SGD), trained through :func:`bayesdrop.objective` (the baseline too), with either ``nn.Dropout``
before the chosen Linear layers or a bayesdrop wrapper around them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop import objective

SIZES = [(784, 1024), (1024, 1024), (1024, 10)]


def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def mlp(
    wrap: Callable[[nn.Linear], nn.Module] | None,
    dropout_p: float = 0.5,
    at: Sequence[int] = (0, 1, 2),
) -> nn.Module:
    """ReLU MLP over :data:`SIZES`: ``wrap(Linear)`` for the layers whose index is in ``at``, or
    ``nn.Dropout(dropout_p)`` before them when ``wrap`` is ``None``; other layers are plain."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(SIZES):
        lin = nn.Linear(a, b)
        if i not in at:
            layers.append(lin)
        elif wrap is None:
            layers += [nn.Dropout(dropout_p), lin]
        else:
            layers.append(wrap(lin))
        if i < len(SIZES) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: str = "adam", **kw: Any
) -> Callable[[], None]:
    """One ``optimizer`` step (``"adam"``, lr 1e-3, or plain ``"sgd"``, lr 1e-2) of
    ``objective(model, x, y, nll, 60000, **kw)``."""
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', but got {optimizer!r}")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        objective(model, x, y, nll, 60000, **kw).backward()
        opt.step()

    return step


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of 128 random inputs and labels."""
    torch.manual_seed(0)
    return torch.randn(128, 784), torch.randint(0, 10, (128,))
