"""``bayesdrop-demo``: nn.Dropout versus learnable Bernoulli dropout (ARM, DisARM) on digits.

Trains the same small MLP (64-128-128-10) on scikit-learn's 8×8 handwritten digits three times —
with fixed ``nn.Dropout``, and with :class:`~bayesdrop.nn.LearnableBernoulliDropout` whose rates
are learned with ARM and with DisARM through :func:`bayesdrop.objective` — and prints test
accuracy, NLL, the learned drop rates per layer and the time per training step (process CPU
time with one torch thread, so that it does not swing with the machine's load).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bayesdrop import dropout_rates, rate_param_groups
from bayesdrop.nn import LearnableBernoulliDropout

from .experiments._training import fit, shuffled_epochs

__all__ = ["main", "run_demo", "load_digits_split", "DemoRow"]

INIT_P = (0.2, 0.5, 0.5)  # input, hidden, hidden
RATE_LR = 5e-2  # drop logits move on a different scale from weights: their own Adam step size


def load_digits_split(seed: int = 0, n_test: int = 597) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn digits scaled to [0, 1], shuffled with ``seed``, split train/test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the demo needs scikit-learn: pip install scikit-learn (or: pip install -e reproduce)"
        ) from exc
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def _mlp(kind: str) -> nn.Module:
    sizes = [(64, 128), (128, 128), (128, 10)]
    layers: list[nn.Module] = []
    for i, ((d_in, d_out), p) in enumerate(zip(sizes, INIT_P)):
        if kind == "nn.Dropout":
            layers += [nn.Dropout(p), nn.Linear(d_in, d_out)]
        else:
            layers.append(
                LearnableBernoulliDropout(nn.Linear(d_in, d_out), init_p=p, estimator=kind)
            )
        if i < len(sizes) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _nll(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


@dataclass
class DemoRow:
    method: str
    accuracy: float
    nll: float
    rates: list[float]
    ms_per_step: float


def train_one(kind: str, epochs: int, seed: int, data, progress: bool = True) -> DemoRow:
    """Train one model of the demo and evaluate it on the test split."""
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = _mlp(kind)
    opt = torch.optim.Adam(rate_param_groups(model, rate_lr=RATE_LR), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    n, batch = len(y_tr), 64
    bar = tqdm(
        shuffled_epochs(n, batch, epochs, gen, x_tr.device),
        total=epochs,
        desc=f"{kind:>10}",
        leave=False,
        disable=not progress,
    )
    start = time.process_time()
    steps = fit(
        model,
        opt,
        x_tr,
        y_tr,
        bar,
        nll=_nll,
        n_data=n,
        on_epoch=lambda _epoch, loss: bar.set_postfix(loss=f"{loss.item():.3f}"),
    )
    elapsed = time.process_time() - start
    model.eval()
    with torch.no_grad():
        logits = model(x_te)
    rates = [float(v.mean()) for v in dropout_rates(model).values()]
    return DemoRow(
        method=kind if kind == "nn.Dropout" else f"LBD ({kind.upper()})",
        accuracy=float((logits.argmax(-1) == y_te).float().mean()),
        nll=float(_nll(logits, y_te).mean()),
        rates=rates,
        ms_per_step=1000 * elapsed / steps,
    )


def format_table(rows: list[DemoRow]) -> str:
    head = f"{'method':<14} {'test acc':>8} {'test NLL':>8}  {'mean drop rate per layer':<26} {'ms/step':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        rates = " ".join(f"{p:.3f}" for p in r.rates)
        lines.append(
            f"{r.method:<14} {r.accuracy:>8.4f} {r.nll:>8.4f}  {rates:<26} {r.ms_per_step:>7.2f}"
        )
    return "\n".join(lines)


def run_demo(epochs: int | None = None, seed: int = 0) -> int:
    """Run the demo and print its table; returns a process exit code."""
    epochs = 40 if epochs is None else epochs
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, but got {epochs}")
    data = load_digits_split(seed)
    print(
        f"scikit-learn digits: {len(data[1])} train / {len(data[3])} test, MLP 64-128-128-10, "
        f"{epochs} epochs, Adam (lr 2e-3; drop logits {RATE_LR}), batch 64; initial drop rates "
        f"{INIT_P}"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ms/step is process CPU time: one thread, no waiting counted
    try:
        rows = [train_one(kind, epochs, seed, data) for kind in ("nn.Dropout", "arm", "disarm")]
    finally:
        torch.set_num_threads(threads)
    print(format_table(rows))
    print(
        "LBD rows: rates learned per input unit (mean shown), eval = deterministic inverted dropout."
    )
    print("ms/step: process CPU time per training step, one torch thread.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``bayesdrop-demo [--epochs N] [--seed N]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="bayesdrop-demo",
        description="nn.Dropout vs LBD (ARM, DisARM) on scikit-learn digits",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 40)")
    parser.add_argument(
        "--seed", type=int, default=0, help=f"seed, in [0, {2**31 - 1}] (default 0)"
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, but got {args.epochs}")
    if not 0 <= args.seed <= 2**31 - 1:
        parser.error(f"--seed must be an integer in [0, {2**31 - 1}], but got {args.seed}")
    try:
        return run_demo(epochs=args.epochs, seed=args.seed)
    except ImportError as err:  # scikit-learn missing: say what to install, no traceback
        print(f"bayesdrop-demo: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
