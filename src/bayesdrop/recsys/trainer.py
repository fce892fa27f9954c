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

import contextlib
import copy
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_positive, check_probability
from ..metrics.ranking import ndcg_at_k, recall_at_k
from ..objectives import rate_param_groups
from .baselines import EASE, Popularity
from .checkpoint import FORMAT as CKPT_FORMAT
from .checkpoint import VERSION as CKPT_VERSION
from .checkpoint import (
    CheckpointError,
    RunLockedError,
    check_writable_file,
    describe_changes,
    load_checkpoint_file,
    run_lock,
    save_atomic,
    split_fingerprint,
    split_to_dict,
)
from .data import CFSplit
from .models import MultDAE, MultVAE, csr_batch
from .sivae import SIVAE

__all__ = [
    "MODELS",
    "RESUMABLE_CHANGES",
    "PAPER_ANNEAL_STEPS",
    "TrainConfig",
    "TrainingDivergedError",
    "build_model",
    "check_device",
    "check_resumable",
    "evaluate",
    "per_user_metrics",
    "train",
    "beta_at",
    "resolve_anneal_steps",
]

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


#: Fields of :class:`TrainConfig` that may differ between a checkpoint and the run resuming it,
#: when named in ``allow_change`` (``--allow-change``); ``world_size`` is the number of processes.
RESUMABLE_CHANGES = ("epochs", "eval_batch_size", "device", "world_size")
#: Fields of :class:`TrainConfig` that say how to run, not what the run is.
_NOT_RUN = ("checkpoint", "resume", "allow_change", "progress")
#: The anneal steps of Liang et al. (2018), with a cap of 0.2 on ML-20M. There 116,677 training
#: users in batches of 500 (234 updates per epoch) for 200 epochs are 46,800 updates, so the KL
#: weight reaches the cap after 40,000 updates, 85.5% of the run.
PAPER_ANNEAL_STEPS = 200_000
PAPER_RUN_UPDATES = 46_800
_SEED_MAX = 2**32 - 1
_DEVICE_TYPES = ("cpu", "cuda", "mps")


class TrainingDivergedError(RuntimeError):
    """The training loss (or the parameters) became NaN or infinite."""


def _check_device_name(device: object) -> str:
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        d = None
    if d is None or d.type not in _DEVICE_TYPES:
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, but got {device!r}")
    return device


def check_device(device: str) -> str:
    """``device`` after checking its name and that this machine has it (else ``ValueError``)."""
    d = torch.device(_check_device_name(device))
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} needs CUDA, but torch.cuda.is_available() is False (no GPU "
                "or a CPU-only torch build); use device 'cpu'"
            )
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available on this machine; use 'cpu'")
    return device


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in checkpoints and the result JSON).

    Defaults follow Liang et al. (2018), "Variational Autoencoders for Collaborative Filtering",
    and the SIVAE experiments of Boluki et al. (2020), "Learnable Bernoulli Dropout for Bayesian
    Deep Learning": 200 epochs, batches of 500 users, Adam at 1e-3, ``[items-600-200]``, KL
    weight annealed to 0.2.

    Args:
        model: one of :data:`MODELS`.
        epochs: total epochs of the run, counted across resumes (a run resumed after epoch 30
            of ``epochs=50`` trains 20 more).
        batch_size: training users per update (over all processes).
        lr: Adam learning rate of the weights.
        rate_lr: Adam learning rate of the SIVAE drop rates (their own parameter group,
            :func:`bayesdrop.rate_param_groups`); ``None`` uses ``lr``.
        hidden, latent: layer sizes.
        dropout: Mult-DAE/VAE input drop probability.
        l2: weight L2; ``None`` is 0.01 for Mult-DAE and 0 otherwise (the reference code).
        anneal_steps: the KL weight after ``t`` updates is
            :math:`\\beta_t = \\min(\\text{anneal\\_cap},\\ t/\\text{anneal\\_steps})`
            (:func:`beta_at`). Liang et al. use 200,000 (:data:`PAPER_ANNEAL_STEPS`), which on
            ML-20M (46,800 updates in 200 epochs) reaches the cap at 85.5% of the run, but on a
            small data set keeps :math:`\\beta` near 0 for the whole run. ``"auto"`` (default)
            scales the paper's schedule to this run: the cap is reached after the same 85.5%
            of the run's updates (``round(0.855 * updates / anneal_cap)``; exactly 200,000 on
            ML-20M with the paper's settings). ``0`` uses the cap from the first update.
        anneal_cap: the largest KL weight :math:`\\beta_{max}` (0.2).
        n_extra, estimator, arm_product, init_p, temperature: SIVAE options
            (:class:`~bayesdrop.recsys.sivae.SIVAE`).
        ease_l2: EASE's :math:`\\lambda`.
        seed: seed of the initialisation, the user order and the noise, in ``[0, 2**32 - 1]``.
        eval_batch_size: users per evaluation batch.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        checkpoint: file written atomically after every epoch (and locked during the run).
        resume: continue the run saved in ``checkpoint`` (which must exist and be the same run).
        allow_change: fields of :data:`RESUMABLE_CHANGES` that may differ from the checkpoint.
        progress: show a progress bar on stderr (needs the optional ``tqdm`` package; without
            it the per-epoch lines are printed and there is no bar).
    """

    model: str = "mult-vae"
    epochs: int = 200
    batch_size: int = 500
    lr: float = 1e-3
    rate_lr: float | None = None
    hidden: int = 600
    latent: int = 200
    dropout: float = 0.5
    l2: float | None = None  # None: 0.01 for mult-dae, 0 otherwise (the reference code)
    anneal_steps: int | str = "auto"
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
    allow_change: tuple[str, ...] = ()
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODELS)
        for name in ("epochs", "batch_size", "eval_batch_size", "hidden", "latent"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("n_extra", self.n_extra, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if self.seed > _SEED_MAX:
            raise ValueError(f"seed must be in [0, 2**32 - 1], but got {self.seed}")
        self.lr = check_positive("lr", self.lr)
        if self.rate_lr is not None:
            self.rate_lr = check_positive("rate_lr", self.rate_lr)
        self.dropout = check_probability("dropout", self.dropout, low_open=False)
        if self.l2 is not None:
            self.l2 = check_positive("l2", self.l2, allow_zero=True)
        if self.anneal_steps != "auto":
            if isinstance(self.anneal_steps, str):
                raise ValueError(
                    f"anneal_steps must be an int >= 0 or 'auto', but got {self.anneal_steps!r}"
                )
            check_int("anneal_steps", self.anneal_steps, minimum=0)
        self.anneal_cap = check_positive("anneal_cap", self.anneal_cap, allow_zero=True)
        check_choice("estimator", self.estimator, ("arm", "disarm"))
        check_choice("arm_product", self.arm_product, ("per-user", "batch-mean"))
        self.init_p = check_probability("init_p", self.init_p)
        self.temperature = check_positive("temperature", self.temperature)
        self.ease_l2 = check_positive("ease_l2", self.ease_l2)
        _check_device_name(self.device)
        if self.checkpoint is not None:
            if not isinstance(self.checkpoint, (str, os.PathLike)) or not str(self.checkpoint):
                raise TypeError(f"checkpoint must be a file path, but got {self.checkpoint!r}")
            self.checkpoint = str(self.checkpoint)
        if self.resume and not self.checkpoint:
            raise ValueError("resume needs a checkpoint path")
        if isinstance(self.allow_change, str):
            raise TypeError("allow_change must be a sequence of field names, not a str")
        self.allow_change = tuple(self.allow_change)
        for name in self.allow_change:
            check_choice("allow_change entries", name, RESUMABLE_CHANGES)
        if self.allow_change and not self.resume:
            raise ValueError("allow_change applies to a resumed run only (resume=True)")

    def run_config(self) -> dict[str, Any]:
        """The fields that define the run (not where it is checkpointed or how it is shown)."""
        return {k: v for k, v in asdict(self).items() if k not in _NOT_RUN}


def resolve_anneal_steps(cfg: TrainConfig, n_train_users: int) -> int:
    """``cfg.anneal_steps``, with ``"auto"`` turned into updates for this run (see
    :class:`TrainConfig`)."""
    if cfg.anneal_steps != "auto":
        return int(cfg.anneal_steps)
    if cfg.anneal_cap == 0.0:
        return 0
    updates = cfg.epochs * math.ceil(n_train_users / cfg.batch_size)
    fraction = (PAPER_ANNEAL_STEPS / PAPER_RUN_UPDATES) * 0.2  # 0.855: share of the run
    return max(1, round(fraction * updates / cfg.anneal_cap))


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


def per_user_metrics(
    model: nn.Module | EASE | Popularity,
    fold_in: sp.csr_matrix,
    heldout: sp.csr_matrix,
    *,
    batch_size: int = 2000,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Recall@20, Recall@50 and NDCG@100 of every user with a held-out item (fold-in items
    excluded), in row order, single process: what :func:`evaluate` averages. Two models scored
    on the same users give paired differences."""
    n_items = fold_in.shape[1]
    users = np.flatnonzero(np.asarray(heldout.getnnz(axis=1)) > 0)
    out: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in _METRICS}
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            rows = users[start : start + batch_size]
            fin, held = fold_in[rows], heldout[rows]
            if isinstance(model, nn.Module):
                scores = model(csr_batch(fin, device=device)).double().cpu()
            else:
                scores = model.scores(fin)
            for name, fn, k in _METRICS:
                per_user = fn(scores, held, min(k, n_items), exclude=fin, reduction="none")
                out[name].append(per_user.numpy())
    if isinstance(model, nn.Module) and was_training:
        model.train()
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


# --------------------------------------------------------------------------------------- step
def _average_gradients(model: nn.Module, weight: float, bad: float = 0.0) -> bool:
    """Gradients of the global-batch mean: each process's gradient times its share, summed.

    ``bad`` (1.0 when this process's loss was not finite) is summed with them, so every process
    learns together whether any process diverged; returns that verdict.
    """
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    if _dist()[1] == 1:
        return bad > 0
    flat = torch.cat([g.reshape(-1) * weight for g in grads] + [grads[0].new_full((1,), bad)])
    _all_reduce_sum(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
    return bool(flat[-1] > 0)


def _broadcast_parameters(model: nn.Module) -> None:
    if _dist()[1] > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


def _all_agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (an all-reduce of the flags)."""
    if _dist()[1] == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], dtype=torch.float64)
    return float(_all_reduce_sum(flag)) == 0.0


def _derived_seed(*words: int) -> int:
    """A 64-bit seed derived from ``words`` by :class:`numpy.random.SeedSequence` (no overflow,
    independent streams for different words)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0])


# --------------------------------------------------------------------------------------- ckpt
def check_resumable(
    ckpt: dict[str, Any],
    cfg: TrainConfig,
    *,
    world_size: int = 1,
    fingerprint: str | None = None,
    summary: dict[str, int] | None = None,
) -> None:
    """Refuse to resume ``ckpt`` (from :func:`~bayesdrop.recsys.checkpoint.load_checkpoint_file`)
    with ``cfg`` unless it is the same run: every field of :meth:`TrainConfig.run_config` and the
    number of processes must match, except those in ``cfg.allow_change``, and (when
    ``fingerprint`` is given) the data split. The :class:`~bayesdrop.recsys.checkpoint.CheckpointError` names every
    difference."""
    run = {**cfg.run_config(), "world_size": world_size}
    path = cfg.checkpoint
    saved = dict(ckpt["config"])
    problems = []
    allowed = set(cfg.allow_change)
    changed = describe_changes(
        {k: v for k, v in saved.items() if k not in allowed},
        {k: v for k, v in run.items() if k not in allowed},
    )
    problems.extend(changed)
    data = ckpt["data"]
    if fingerprint is not None and data.get("fingerprint") != fingerprint:
        sizes = describe_changes(data.get("summary", {}), summary or {})
        detail = "; ".join(sizes) if sizes else "same sizes, different users or interactions"
        problems.append(f"data split: fingerprint differs ({detail})")
    if problems:
        safe = [c.split(":", 1)[0] for c in changed if c.split(":", 1)[0] in RESUMABLE_CHANGES]
        hint = (
            f" To change {', '.join(safe)} on purpose, pass allow_change (--allow-change "
            f"{' '.join(safe)})."
            if safe
            else ""
        )
        raise CheckpointError(
            f"checkpoint {path} was written by a different run; refusing to resume it: "
            + "; ".join(problems)
            + f". Only {', '.join(RESUMABLE_CHANGES)} may change on resume.{hint}"
        )
    done = int(ckpt["state"]["epoch"])
    if cfg.epochs < done:
        raise CheckpointError(
            f"checkpoint {path} has already completed {done} epochs, more than epochs={cfg.epochs}"
            " (epochs counts the total across resumes)"
        )


def _checkpoint_dict(
    cfg: TrainConfig,
    run: dict[str, Any],
    anneal_steps: int,
    data: dict[str, Any],
    model_state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": CKPT_FORMAT,
        "version": CKPT_VERSION,
        "model_name": cfg.model,
        "config": run,
        "anneal_steps": anneal_steps,
        "data": data,
        "model": model_state,
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "state": copy.deepcopy(state),
    }


# --------------------------------------------------------------------------------------- train
def train(
    split: CFSplit,
    cfg: TrainConfig,
    *,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg.model`` on ``split`` and return the result dictionary (the CLI's JSON).

    ``on_step(step, model)``, when given, is called with ``step = 0`` before the first update of
    a fresh run (not of a resumed one) and then after every optimiser step with the number of
    updates done so far (counted across resumes) and the model being trained (e.g. to record
    its drop rates with :class:`bayesdrop.RateTracker`). It is called on every process, is not
    called for the non-neural baselines, and must not change the model or draw random numbers
    from torch's global generator: it then leaves the run exactly as it is without it.

    Keys: ``model``, ``config`` (:meth:`TrainConfig.run_config`), ``anneal_steps`` (resolved),
    ``data``, ``best_epoch``, ``val`` (best validation metrics), ``test`` (Recall@20, Recall@50,
    NDCG@100 with standard errors and the number of test users), ``history`` (per-epoch loss,
    beta and validation NDCG@100), ``seconds``, ``world_size``, ``checkpoint``,
    ``resumed_after_epoch`` and, for SIVAE, summary statistics of the learned drop rates.

    With ``cfg.checkpoint`` the file is locked for the run (:func:`~bayesdrop.recsys.checkpoint.run_lock`), refused if it exists and ``resume`` is false (nothing is overwritten), and
    rewritten atomically after every epoch. ``resume=True`` continues it only if it is the same
    run: every field of :meth:`TrainConfig.run_config` and the split's fingerprint must match,
    except the fields named in ``allow_change``; the continued run then equals an
    uninterrupted one (same user order and noise streams per epoch).

    Raises:
        CheckpointError: missing, corrupt or foreign checkpoint, or one from another run.
        RunLockedError: another run holds the checkpoint.
        TrainingDivergedError: the loss or the parameters became non-finite (the checkpoint
            keeps the last finite epoch).
    """
    if not isinstance(split, CFSplit):
        raise TypeError(f"split must be a CFSplit, but got {type(split).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, but got {type(cfg).__name__}")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be callable or None, but got {type(on_step).__name__}")
    created = _init_distributed(cfg.device)
    try:
        return _train(split, cfg, on_step)
    finally:
        if created:
            dist.destroy_process_group()


def _train(
    split: CFSplit, cfg: TrainConfig, on_step: Callable[[int, nn.Module], None] | None = None
) -> dict[str, Any]:
    check_device(cfg.device)
    if cfg.rate_lr is not None and not cfg.model.startswith("sivae"):
        raise ValueError(
            f"rate_lr applies to models with learned drop rates (sivae-*), not {cfg.model!r}"
        )
    rank, world = _dist()
    with contextlib.ExitStack() as stack:
        if cfg.checkpoint:
            error: Exception | None = None
            if rank == 0:
                try:
                    check_writable_file(cfg.checkpoint, "checkpoint")
                    stack.enter_context(run_lock([cfg.checkpoint]))
                except (ValueError, RunLockedError) as exc:
                    error = exc
            if not _all_agree(error is None):
                raise error or RunLockedError(f"checkpoint {cfg.checkpoint} is not usable")
        return _train_locked(split, cfg, rank, world, on_step)
    raise AssertionError("unreachable")  # pragma: no cover


def _progress_bar(n: int, desc: str, show: bool) -> Any:
    """A ``tqdm`` bar over ``range(n)`` on stderr when ``show`` and tqdm is installed (it is an
    optional dependency), else the plain range."""
    if show:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return range(n)
        return tqdm(
            range(n), desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, disable=False
        )
    return range(n)


def _write_line(msg: str) -> None:
    """Print ``msg`` on stderr without breaking a tqdm bar (when tqdm is installed)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(msg, file=sys.stderr)
        return
    tqdm.write(msg, file=sys.stderr)


def _train_locked(
    split: CFSplit,
    cfg: TrainConfig,
    rank: int,
    world: int,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    device = cfg.device
    if device == "cuda" and world > 1:  # one GPU per process under torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    run = {**cfg.run_config(), "world_size": world}
    summary = split.summary()
    n_train = split.train.shape[0]
    anneal_steps = resolve_anneal_steps(cfg, n_train)
    ckpt: dict[str, Any] | None = None
    fingerprint = ""
    if cfg.checkpoint:
        fingerprint = split_fingerprint(split)
        if cfg.resume:
            ckpt = load_checkpoint_file(cfg.checkpoint, map_location=device)
            check_resumable(ckpt, cfg, world_size=world, fingerprint=fingerprint, summary=summary)
            anneal_steps = int(ckpt["anneal_steps"])  # the schedule the run started with
        elif Path(cfg.checkpoint).exists():
            raise CheckpointError(
                f"checkpoint {cfg.checkpoint} already exists; resume it (resume=True, --resume) "
                "or choose another path (nothing is overwritten)"
            )
    data = {"fingerprint": fingerprint, "summary": summary}
    if cfg.checkpoint and rank == 0:
        data["split"] = split_to_dict(split)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, split.n_items)
    result: dict[str, Any] = {
        "model": cfg.model,
        "config": cfg.run_config(),
        "anneal_steps": anneal_steps,
        "data": summary,
        "world_size": world,
        "checkpoint": cfg.checkpoint,
        "resumed_after_epoch": None if ckpt is None else int(ckpt["state"]["epoch"]),
    }
    if not isinstance(model, nn.Module):
        if ckpt is not None:
            _load_baseline(model, ckpt, cfg.checkpoint)
        else:
            model.fit(split.train)
            if cfg.checkpoint and rank == 0:
                fitted: dict[str, Any] = {"epoch": 0, "update": 0, "best_epoch": None}
                save_atomic(
                    _checkpoint_dict(
                        cfg, run, anneal_steps, data, baseline_state(model), None, fitted
                    ),
                    cfg.checkpoint,
                )
        result["val"] = evaluate(model, split.val_fold_in, split.val_heldout, shard=False)
        result["test"] = evaluate(model, split.test_fold_in, split.test_heldout, shard=False)
        result["best_epoch"] = None
        result["history"] = []
        result["seconds"] = time.perf_counter() - t0
        return result

    model.to(device)
    _broadcast_parameters(model)
    optimizer = torch.optim.Adam(rate_param_groups(model, rate_lr=cfg.rate_lr), lr=cfg.lr)
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
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {cfg.checkpoint}: its weights do not fit this model: "
                f"{str(exc).splitlines()[0][:200]}"
            ) from None
        state = ckpt["state"]
        if rank == 0:
            logger.info("resumed from %s after epoch %d", cfg.checkpoint, state["epoch"])

    show = cfg.progress and rank == 0
    if on_step is not None and state["update"] == 0:
        on_step(0, model)
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        model.train()
        # Same user order on every process, its own noise stream; reproducible on resume.
        order = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, 0])).permutation(
            n_train
        )
        torch.manual_seed(_derived_seed(cfg.seed, epoch, rank, 1))
        n_batches = math.ceil(n_train / cfg.batch_size)
        total, count = 0.0, 0
        bar = _progress_bar(n_batches, f"{cfg.model} epoch {epoch}/{cfg.epochs}", show)
        for b in bar:
            rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            mine = rows[rank::world]
            beta = beta_at(state["update"], anneal_steps, cfg.anneal_cap)
            optimizer.zero_grad(set_to_none=False)
            bad = 0.0
            if len(mine):
                x = csr_batch(split.train, mine, device=device)
                loss = model.training_loss(x, beta)
                if bool(torch.isfinite(loss.detach())):
                    loss.backward()
                    total += float(loss.detach()) * len(mine)
                    count += len(mine)
                else:
                    bad = 1.0
            if _average_gradients(model, len(mine) / len(rows), bad):
                if hasattr(bar, "close"):
                    bar.close()
                raise TrainingDivergedError(
                    f"loss became non-finite at epoch {epoch} (update {state['update'] + 1}, "
                    f"beta {beta:.3g}); the run diverged: lower the learning rate (lr={cfg.lr:g},"
                    f" --lr){_kept(cfg, epoch)}"
                )
            optimizer.step()
            state["update"] += 1
            if on_step is not None:
                on_step(state["update"], model)
            if b % 10 == 0 and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / max(count, 1):.2f}", beta=f"{beta:.3f}")
        if hasattr(bar, "close"):
            bar.close()
        if not all(bool(torch.isfinite(q).all()) for q in model.parameters()):
            raise TrainingDivergedError(
                f"loss became non-finite at epoch {epoch}: the parameters hold NaN or inf after "
                f"update {state['update']}; the run diverged: lower the learning rate "
                f"(lr={cfg.lr:g}, --lr){_kept(cfg, epoch)}"
            )
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
            "beta": beta_at(state["update"], anneal_steps, cfg.anneal_cap),
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
                _write_line(msg)
            logger.info(msg)
            if cfg.checkpoint:
                save_atomic(
                    _checkpoint_dict(
                        cfg, run, anneal_steps, data, model.state_dict(), optimizer, state
                    ),
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


def _kept(cfg: TrainConfig, epoch: int) -> str:
    if cfg.checkpoint and epoch > 1:
        return f"; checkpoint {cfg.checkpoint} keeps epoch {epoch - 1}"
    return ""


def baseline_state(model: EASE | Popularity) -> dict[str, Tensor]:
    """The fitted arrays of a baseline as tensors (what its checkpoint stores)."""
    if isinstance(model, EASE):
        if model.weights is None:
            raise RuntimeError("EASE is not fitted")
        return {"weights": torch.from_numpy(np.asarray(model.weights))}
    if model.counts is None:
        raise RuntimeError("Popularity is not fitted")
    return {"counts": torch.from_numpy(np.asarray(model.counts))}


def _load_baseline(model: EASE | Popularity, ckpt: dict[str, Any], path: str | None) -> None:
    key = "weights" if isinstance(model, EASE) else "counts"
    value = ckpt["model"].get(key) if isinstance(ckpt["model"], dict) else None
    if not isinstance(value, Tensor):
        raise CheckpointError(f"checkpoint {path} holds no {type(model).__name__} {key}")
    arr = value.detach().cpu().numpy().astype(np.float64)
    if isinstance(model, EASE):
        model.weights = arr
    else:
        model.counts = arr


def load_trained_model(
    ckpt: dict[str, Any], path: str | os.PathLike[str], device: str = "cpu"
) -> tuple[TrainConfig, MultDAE | MultVAE | SIVAE | EASE | Popularity]:
    """The model of a checkpoint (from :func:`~bayesdrop.recsys.checkpoint.load_checkpoint_file`)
    with its best-epoch weights (the last ones if no epoch was validated), in eval mode."""
    saved = {k: v for k, v in ckpt["config"].items() if k != "world_size"}
    try:
        cfg = TrainConfig(**{**saved, "device": device, "progress": False})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} holds an invalid configuration: {exc}") from None
    n_items = int(ckpt["data"]["summary"]["items"])
    model = build_model(cfg, n_items)
    if isinstance(model, nn.Module):
        best = ckpt["state"].get("best_state")
        try:
            model.load_state_dict(best if best is not None else ckpt["model"])
        except (RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {path}: its weights do not fit a {cfg.model} with {n_items} items: "
                f"{str(exc).splitlines()[0][:200]}"
            ) from None
        model.to(device).eval()
    else:
        _load_baseline(model, ckpt, str(path))
    return cfg, model
