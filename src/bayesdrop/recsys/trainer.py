"""Training and evaluation loop for the collaborative-filtering models.

* every epoch: shuffled training users in batches (``batch_size`` users per step across all
  processes), Adam, the KL weight :math:`\\beta` annealed linearly to ``anneal_cap`` over
  ``anneal_steps`` updates (Liang et al. 2018), then NDCG@100 on the validation users; the
  best-epoch weights are kept;
* an atomic checkpoint (write to a temporary file, then ``os.replace``) after every epoch, and
  ``resume=True`` continues from it with the same data order and random streams;
* data parallel: under ``torchrun`` (``WORLD_SIZE > 1``) each process takes an interleaved share
  of every batch, gradients are averaged with ``all_reduce`` (gloo on CPU, nccl on GPU) and the
  validation users are sharded, so the result matches a single process up to sampling noise;
* finally the best weights are scored on the test users: Recall@20, Recall@50 and NDCG@100
  (:mod:`bayesdrop.metrics`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..metrics.ranking import ndcg_at_k, recall_at_k
from .baselines import EASE, Popularity
from .data import CFSplit
from .models import MultDAE, MultVAE, csr_batch
from .sivae import SIVAE

__all__ = ["MODELS", "TrainConfig", "build_model", "evaluate", "train", "beta_at"]

logger = logging.getLogger(__name__)

#: Model names understood by :func:`build_model` and the CLI.
MODELS = (
    "mult-dae",
    "mult-vae",
    "sivae-lbd",
    "sivae-concrete",
    "sivae-gaussian",
    "ease",
    "popularity",
)
_NEURAL = MODELS[:5]


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in checkpoints and the result JSON)."""

    model: str = "mult-vae"
    epochs: int = 50
    batch_size: int = 500
    lr: float = 1e-3
    hidden: int = 600
    latent: int = 200
    dropout: float = 0.5
    l2: float | None = None  # None: 0.01 for mult-dae, 0 otherwise (the reference code)
    anneal_steps: int = 200_000
    anneal_cap: float = 0.2
    n_extra: int = 5
    estimator: str = "arm"
    arm_product: str = "per-user"
    init_p: float = 0.5
    temperature: float = 0.1
    ease_l2: float = 500.0
    seed: int = 0
    eval_batch_size: int = 2000
    device: str = "cpu"
    checkpoint: str | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}, but got {self.model!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, but got {v!r}")
        if self.anneal_steps < 0 or not 0.0 <= self.anneal_cap:
            raise ValueError("anneal_steps must be >= 0 and anneal_cap >= 0")
        if self.resume and not self.checkpoint:
            raise ValueError("resume needs a checkpoint path")


def beta_at(update: int, anneal_steps: int, anneal_cap: float) -> float:
    """KL weight after ``update`` optimiser steps: ``min(cap, update / anneal_steps)``."""
    if anneal_steps == 0:
        return anneal_cap
    return min(anneal_cap, update / anneal_steps)


def build_model(cfg: TrainConfig, n_items: int) -> MultDAE | MultVAE | SIVAE | EASE | Popularity:
    """The model named by ``cfg.model`` for ``n_items`` items."""
    name = cfg.model
    if name == "popularity":
        return Popularity()
    if name == "ease":
        return EASE(cfg.ease_l2)
    l2 = cfg.l2 if cfg.l2 is not None else (0.01 if name == "mult-dae" else 0.0)
    if name == "mult-dae":
        return MultDAE(n_items, cfg.hidden, cfg.latent, dropout=cfg.dropout, l2=l2)
    if name == "mult-vae":
        return MultVAE(n_items, cfg.hidden, cfg.latent, dropout=cfg.dropout, l2=l2)
    return SIVAE(
        n_items,
        cfg.hidden,
        cfg.latent,
        noise=name.split("-", 1)[1],
        init_p=cfg.init_p,
        n_extra=cfg.n_extra,
        estimator=cfg.estimator,
        arm_product=cfg.arm_product,
        temperature=cfg.temperature,
        l2=l2,
    )


# --------------------------------------------------------------------------------------- dist
def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed(device: str) -> bool:
    """Join the process group when launched by torchrun; returns whether we created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    return True


def _all_reduce_sum(t: Tensor) -> Tensor:
    if _dist()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# --------------------------------------------------------------------------------------- eval
_METRICS = (
    ("recall@20", recall_at_k, 20),
    ("recall@50", recall_at_k, 50),
    ("ndcg@100", ndcg_at_k, 100),
)


@torch.no_grad()
def evaluate(
    model: nn.Module | EASE | Popularity,
    fold_in: sp.csr_matrix,
    heldout: sp.csr_matrix,
    *,
    batch_size: int = 2000,
    device: str = "cpu",
    shard: bool = True,
) -> dict[str, float]:
    """Recall@20, Recall@50 and NDCG@100 over users with a held-out item (fold-in excluded).

    Each metric ``m`` comes with ``m_se``, its standard error over the users
    (:math:`s/\\sqrt n`, the test users' sampling noise), and ``users``, their number.

    Under torch.distributed (and ``shard=True``) each process scores an interleaved share of the
    users and the per-user sums are all-reduced, so every process returns the same numbers.
    """
    rank, world = _dist() if shard else (0, 1)
    n_items = fold_in.shape[1]
    users = np.arange(fold_in.shape[0])[rank::world]
    k_metrics = len(_METRICS)
    # per metric: sum and sum of squares over users; last entry: number of users
    sums = torch.zeros(2 * k_metrics + 1, dtype=torch.float64)
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
    for start in range(0, len(users), batch_size):
        rows = users[start : start + batch_size]
        held = heldout[rows]
        has = np.asarray(held.getnnz(axis=1)) > 0
        if not has.any():
            continue
        rows, held = rows[has], held[has]
        fin = fold_in[rows]
        if isinstance(model, nn.Module):
            scores = model(csr_batch(fin, device=device)).double().cpu()
        else:
            scores = model.scores(fin)
        for j, (_, fn, k) in enumerate(_METRICS):
            per_user = fn(scores, held, min(k, n_items), exclude=fin, reduction="none")
            sums[j] += per_user.sum()
            sums[k_metrics + j] += per_user.pow(2).sum()
        sums[-1] += len(rows)
    if isinstance(model, nn.Module) and was_training:
        model.train()
    sums = _all_reduce_sum(sums)
    n = float(sums[-1])
    if n == 0:
        raise ValueError("no evaluation user has a held-out item")
    out: dict[str, float] = {}
    for j, (name, _, _) in enumerate(_METRICS):
        mean = float(sums[j]) / n
        var = max(float(sums[k_metrics + j]) / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)
        out[name] = mean
        out[f"{name}_se"] = math.sqrt(var / n)
    out["users"] = int(n)
    return out


# --------------------------------------------------------------------------------------- ckpt
def _save_atomic(obj: dict[str, Any], path: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, p)


def _average_gradients(model: nn.Module, weight: float) -> None:
    """Gradients of the global-batch mean: each process's gradient times its share, summed."""
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) * weight
    _all_reduce_sum(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _broadcast_parameters(model: nn.Module) -> None:
    if _dist()[1] > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


# --------------------------------------------------------------------------------------- train
def train(split: CFSplit, cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``split`` and return the result dictionary (the CLI's JSON).

    Keys: ``model``, ``config``, ``data``, ``best_epoch``, ``val`` (best validation metrics),
    ``test`` (Recall@20, Recall@50, NDCG@100 and the number of test users), ``history`` (per-epoch
    loss, beta and validation NDCG@100), ``seconds``, ``world_size`` and, for SIVAE, summary
    statistics of the learned drop rates.
    """
    created = _init_distributed(cfg.device)
    try:
        return _train(split, cfg)
    finally:
        if created:
            dist.destroy_process_group()


def _train(split: CFSplit, cfg: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    rank, world = _dist()
    device = cfg.device
    if device == "cuda" and world > 1:  # one GPU per process under torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, split.n_items)
    result: dict[str, Any] = {
        "model": cfg.model,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "data": split.summary(),
        "world_size": world,
    }
    if not isinstance(model, nn.Module):
        model.fit(split.train)
        result["val"] = evaluate(model, split.val_fold_in, split.val_heldout, shard=False)
        result["test"] = evaluate(model, split.test_fold_in, split.test_heldout, shard=False)
        result["best_epoch"] = None
        result["history"] = []
        result["seconds"] = time.perf_counter() - t0
        return result

    model.to(device)
    _broadcast_parameters(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for q in model.parameters():  # every process all-reduces the same gradient list
        q.grad = torch.zeros_like(q)
    state: dict[str, Any] = {
        "epoch": 0,
        "update": 0,
        "best_ndcg": -math.inf,
        "best_epoch": None,
        "best_state": None,
        "history": [],
    }
    if cfg.resume and cfg.checkpoint and Path(cfg.checkpoint).exists():
        ckpt = torch.load(cfg.checkpoint, map_location=device, weights_only=False)
        if ckpt["model_name"] != cfg.model or ckpt["n_items"] != split.n_items:
            raise ValueError(
                f"checkpoint {cfg.checkpoint} is for model {ckpt['model_name']!r} with "
                f"{ckpt['n_items']} items, not {cfg.model!r} with {split.n_items}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        if rank == 0:
            logger.info("resumed from %s after epoch %d", cfg.checkpoint, state["epoch"])

    n_train = split.train.shape[0]
    show = cfg.progress and rank == 0
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        model.train()
        # Same user order on every process, its own noise stream; reproducible on resume.
        order = np.random.RandomState(cfg.seed * 100_003 + epoch).permutation(n_train)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)
        n_batches = math.ceil(n_train / cfg.batch_size)
        total, count = 0.0, 0
        bar = tqdm(
            range(n_batches),
            desc=f"{cfg.model} epoch {epoch}/{cfg.epochs}",
            disable=not show,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )
        for b in bar:
            rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            mine = rows[rank::world]
            beta = beta_at(state["update"], cfg.anneal_steps, cfg.anneal_cap)
            optimizer.zero_grad(set_to_none=False)
            if len(mine):
                x = csr_batch(split.train, mine, device=device)
                loss = model.training_loss(x, beta)
                loss.backward()
                total += float(loss.detach()) * len(mine)
                count += len(mine)
            _average_gradients(model, len(mine) / len(rows))
            optimizer.step()
            state["update"] += 1
            if show and b % 10 == 0:
                bar.set_postfix(loss=f"{total / max(count, 1):.2f}", beta=f"{beta:.3f}")
        bar.close()
        sums = _all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64))
        val = evaluate(
            model,
            split.val_fold_in,
            split.val_heldout,
            batch_size=cfg.eval_batch_size,
            device=device,
        )
        record = {
            "epoch": epoch,
            "loss": float(sums[0] / max(float(sums[1]), 1.0)),
            "beta": beta_at(state["update"], cfg.anneal_steps, cfg.anneal_cap),
            "val_ndcg@100": val["ndcg@100"],
        }
        if isinstance(model, SIVAE):
            record["mean_p"] = float(model.p.mean())
        state["history"].append(record)
        if val["ndcg@100"] > state["best_ndcg"]:
            state["best_ndcg"] = val["ndcg@100"]
            state["best_epoch"] = epoch
            state["best_val"] = val
            state["best_state"] = {
                k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            }
        state["epoch"] = epoch
        if rank == 0:
            msg = (
                f"epoch {epoch}: loss {record['loss']:.3f}, beta {record['beta']:.3f}, "
                f"val NDCG@100 {val['ndcg@100']:.4f} (best {state['best_ndcg']:.4f} at epoch "
                f"{state['best_epoch']})"
            )
            if cfg.progress:
                tqdm.write(msg, file=sys.stderr)
            logger.info(msg)
            if cfg.checkpoint:
                _save_atomic(
                    {
                        "model_name": cfg.model,
                        "n_items": split.n_items,
                        "config": asdict(cfg),
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "state": copy.deepcopy(state),
                    },
                    cfg.checkpoint,
                )
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    result["best_epoch"] = state["best_epoch"]
    result["val"] = state.get("best_val")
    result["test"] = evaluate(
        model,
        split.test_fold_in,
        split.test_heldout,
        batch_size=cfg.eval_batch_size,
        device=device,
    )
    result["history"] = state["history"]
    if isinstance(model, SIVAE):
        p = model.p.cpu()
        result["drop_rates"] = {
            "mean": float(p.mean()),
            "min": float(p.min()),
            "max": float(p.max()),
            "std": float(p.std()),
        }
    result["seconds"] = time.perf_counter() - t0
    return result
