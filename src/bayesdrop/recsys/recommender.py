"""Top-k recommendations from a trained model, in the data's own user and item ids.

A checkpoint written by :func:`~bayesdrop.recsys.trainer.train` (``bayesdrop recsys train
--checkpoint``) holds the model, its best-epoch weights and the split with the data's ids, so it
answers on its own::

    recommend("run/ckpt.pt", users=[196, 186], k=10)
    # {196: ['275', '283', ...], 186: [...]}: MovieLens-100K from RecBole has string item ids

A user's history is every interaction of the split that the model knows: the training row of a
training user, or the fold-in and held-out items of a validation or test user. The model scores
all items from that history; with ``exclude_seen=True`` the history's items are never
recommended. Ties are broken by the item order of the split (first appearance in the data).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .._validation import check_int
from .baselines import EASE, Popularity
from .checkpoint import CheckpointError, load_checkpoint_file, split_from_dict
from .data import CFSplit
from .models import MultDAE, MultVAE, csr_batch
from .sivae import SIVAE
from .trainer import TrainConfig, check_device, load_trained_model

__all__ = ["TrainedRun", "load_run", "recommend", "user_histories"]

Model = MultDAE | MultVAE | SIVAE | EASE | Popularity


@dataclass
class TrainedRun:
    """A checkpoint opened for use: its configuration, model (best weights, eval mode), split.

    Attributes:
        path: the checkpoint file.
        config: the run's :class:`~bayesdrop.recsys.trainer.TrainConfig`.
        model: the model with its best-epoch weights.
        split: the split it was trained on, with the data's ids.
        best_epoch: the epoch whose weights these are (``None`` for EASE and popularity).
        epochs_done: epochs completed when the checkpoint was written.
        best_val: validation metrics of the best epoch (``None`` for the baselines).
        fingerprint: SHA-256 of the split
            (:func:`~bayesdrop.recsys.checkpoint.split_fingerprint`).
    """

    path: str
    config: TrainConfig
    model: Model
    split: CFSplit
    best_epoch: int | None
    epochs_done: int
    best_val: dict[str, float] | None
    fingerprint: str


def load_run(path: str | os.PathLike[str], device: str = "cpu") -> TrainedRun:
    """Open a checkpoint of :func:`~bayesdrop.recsys.trainer.train` (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, corrupt, truncated or not such a checkpoint.
    """
    check_device(device)
    ckpt = load_checkpoint_file(path, map_location=device)
    if "split" not in ckpt["data"]:
        raise CheckpointError(f"checkpoint {path} holds no split (written by another process?)")
    try:
        split = split_from_dict(ckpt["data"]["split"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its split cannot be read: {exc}") from None
    cfg, model = load_trained_model(ckpt, path, device)
    state = ckpt["state"]
    return TrainedRun(
        str(path),
        cfg,
        model,
        split,
        state.get("best_epoch"),
        int(state.get("epoch", 0)),
        state.get("best_val"),
        str(ckpt["data"].get("fingerprint", "")),
    )


def user_histories(split: CFSplit) -> tuple[dict[Any, int], sp.csr_matrix]:
    """Every user of ``split`` mapped to a row of one ``(users, items)`` history matrix.

    Rows: the training users (training matrix), then the validation and the test users (fold-in
    plus held-out items).
    """
    hist = sp.vstack(
        [
            split.train,
            split.val_fold_in + split.val_heldout,
            split.test_fold_in + split.test_heldout,
        ],
        format="csr",
    )
    hist.data[:] = 1.0
    ids = np.concatenate(
        [np.asarray(split.train_user_ids), split.val_user_ids, split.test_user_ids]
    ).tolist()
    return {u: i for i, u in enumerate(ids)}, hist


def _lookup(users: Sequence[Any], index: dict[Any, int], example: Any) -> np.ndarray:
    if isinstance(users, (str, bytes)) or not isinstance(users, (Sequence, np.ndarray)):
        raise TypeError(
            f"users must be a list of user ids, but got {type(users).__name__} "
            f"(wrap a single id in a list: [{users!r}])"
        )
    if len(users) == 0:
        raise ValueError("users must name at least one user, but got an empty list")
    rows = []
    seen: set[Any] = set()
    for u in list(users):
        key = _same_id(u.item() if isinstance(u, np.generic) else u, index, example)
        if key in seen:
            raise ValueError(f"users lists {key!r} more than once")
        seen.add(key)
        if key not in index:
            kind = "integers" if isinstance(example, int) else "strings"
            raise ValueError(
                f"user {key!r} ({type(key).__name__}) is not in the model's data "
                f"({len(index)} users; their ids are {kind}, e.g. {example!r})"
            )
        rows.append(index[key])
    return np.asarray(rows, dtype=np.int64)


def _same_id(key: Any, index: dict[Any, int], example: Any) -> Any:
    """``key`` as the data spells it: the int 196 is the id ``"196"`` of data whose ids are
    strings (MovieLens-100K read from RecBole), and ``"196"`` is 196 of data whose ids are ints.
    Only exact spellings match (``7`` is not ``"007"``); anything else is returned unchanged."""
    if key in index:
        return key
    if isinstance(example, str) and isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    if isinstance(example, int) and isinstance(key, str) and key.lstrip("-").isdigit():
        if str(int(key)) == key:
            return int(key)
    return key


def _n_items(model: Any) -> int | None:
    if isinstance(model, EASE):
        return None if model.weights is None else int(model.weights.shape[0])
    if isinstance(model, Popularity):
        return None if model.counts is None else int(model.counts.size)
    n = getattr(model, "n_items", None)
    return int(n) if isinstance(n, int) else None


@torch.no_grad()
def recommend(
    source: str | os.PathLike[str] | TrainedRun | nn.Module | EASE | Popularity,
    users: Sequence[Any],
    k: int = 10,
    *,
    exclude_seen: bool = True,
    split: CFSplit | None = None,
    device: str = "cpu",
) -> dict[Any, list[Any]]:
    """The ``k`` best-scored items for each user, in the data's own ids.

    For user :math:`u` with history :math:`x_u` the model's scores :math:`s = f(x_u)` are
    ranked in decreasing order (ties: the split's item order); with ``exclude_seen`` the items
    of :math:`x_u` are left out. A user with fewer than ``k`` unseen items gets all of them.

    Args:
        source: a checkpoint path, a :class:`TrainedRun`, or a trained model (then ``split``
            gives the ids and histories).
        users: user ids as in the data, each once. Ids are ints for the MovieLens formats and
            strings for csv and RecBole files (MovieLens-100K from the RecBole wheel); an int
            also names the string id that spells it (``196`` is ``"196"``) and a string of
            digits the int id, so ``users=[196, 186]`` works for both.
        k: items per user (>= 1).
        exclude_seen: leave out the items of the user's history.
        split: the split the model was trained on (only with a model as ``source``).
        device: where a checkpoint's model runs.

    Returns:
        ``{user: [item, ...]}`` in the order of ``users`` and keyed as given, items best first
        in the data's own item ids.

    Example:
        >>> import numpy as np
        >>> from bayesdrop.recsys import Interactions, Popularity, liang_split
        >>> inter = Interactions(
        ...     np.array([1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]),
        ...     np.array([10, 20, 10, 30, 20, 10, 40, 30, 10, 20, 10, 30, 10]),
        ...     None,
        ... )
        >>> split = liang_split(inter, 1, min_heldout_items=2, test_prop=0.5)
        >>> split.item_ids.tolist(), split.train_user_ids.tolist()
        ([10, 20, 30, 40], [5, 3, 2, 1])
        >>> model = Popularity().fit(split.train)  # items clicked by 4, 3, 1 and 1 users
        >>> recommend(model, [5, 3], k=2, split=split)  # user 5 saw 10, 20; user 3 saw 10, 40
        {5: [30, 40], 3: [20, 30]}
    """
    k = check_int("k", k, minimum=1)
    if not isinstance(exclude_seen, bool):
        raise TypeError(f"exclude_seen must be a bool, but got {type(exclude_seen).__name__}")
    if isinstance(source, (str, os.PathLike)):
        if split is not None:
            raise ValueError("split applies to a model source; a checkpoint holds its own split")
        source = load_run(Path(source), device=device)
    if isinstance(source, TrainedRun):
        model: Any = source.model
        split = source.split
    elif isinstance(source, (nn.Module, EASE, Popularity)):
        if split is None:
            raise ValueError("recommend(model, ...) needs split= (its item and user ids)")
        if not isinstance(split, CFSplit):
            raise TypeError(f"split must be a CFSplit, but got {type(split).__name__}")
        model = source
    else:
        raise TypeError(
            "source must be a checkpoint path, a TrainedRun or a trained model, but got "
            f"{type(source).__name__}"
        )
    n_model = _n_items(model)
    if n_model is not None and n_model != split.n_items:
        raise ValueError(
            f"the model scores {n_model} items but the split has {split.n_items}: they were not "
            "trained together"
        )
    index, hist = user_histories(split)
    example = next(iter(index)) if index else None
    rows = _lookup(users, index, example)
    x = hist[rows]
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device if any(True for _ in model.parameters()) else "cpu"
        scores = model(csr_batch(x, device=dev)).double().cpu().numpy()
        model.train(was_training)
    else:
        scores = model.scores(x).double().numpy()
    if scores.shape != x.shape:
        raise ValueError(
            f"the model scores {scores.shape[1]} items but the split has {x.shape[1]}: they "
            "were not trained together"
        )
    if np.isnan(scores).any():
        raise ValueError("the model's scores contain NaN (a diverged model?)")
    item_ids = np.asarray(split.item_ids).tolist()
    out: dict[Any, list[Any]] = {}
    for j, u in enumerate(list(users)):
        s = scores[j]
        order = np.argsort(-s, kind="stable")
        if exclude_seen:
            seen = np.zeros(len(s), dtype=bool)
            seen[x.indices[x.indptr[j] : x.indptr[j + 1]]] = True
            order = order[~seen[order]]
        key = u.item() if isinstance(u, np.generic) else u
        out[key] = [item_ids[i] for i in order[:k].tolist()]
    return out
