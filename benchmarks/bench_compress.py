"""Size and CPU speed of a model compressed by :func:`bayesdrop.sparsity.compress`.

An MLP 64-300-100-10 with :class:`~bayesdrop.nn.SparseVariationalDropout` (or ARD) on every layer
is trained briefly on scikit-learn's 8x8 digits (1,347 training images, 400 Adam steps of batch
128 through :func:`bayesdrop.objective`, KL weight annealed over the first 120), pruned, and
compressed in both forms. Prints the test accuracy, the parameters and the bytes of each
``state_dict`` (and of ``torch.save``), and the eval-mode forward time per batch as a ratio to
the same architecture with plain ``nn.Linear`` layers, measured side by side (process CPU time,
one thread, interleaved rounds).

    python benchmarks/bench_compress.py [--family svd|ard] [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_median  # noqa: E402

import bayesdrop  # noqa: E402
from bayesdrop.nn import ARDDropout, SparseVariationalDropout  # noqa: E402
from bayesdrop.sparsity import compress, compression_report, prune  # noqa: E402

STEPS, BATCH, LR = 400, 128, 1e-2


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    f = torch.float32
    return (
        torch.tensor(xtr / 16, dtype=f),
        torch.tensor(ytr),
        torch.tensor(xte / 16, dtype=f),
        torch.tensor(yte),
    )


def build(wrap) -> nn.Sequential:
    return nn.Sequential(
        wrap(nn.Linear(64, 300)),
        nn.ReLU(),
        wrap(nn.Linear(300, 100)),
        nn.ReLU(),
        wrap(nn.Linear(100, 10)),
    )


def train(wrap, data) -> nn.Sequential:
    xtr, ytr, _, _ = data
    torch.manual_seed(0)
    model = build(wrap)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, 2.0 * (1 - s / STEPS)))
    gen = torch.Generator().manual_seed(0)
    n = len(xtr)

    def nll(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none")

    for step in range(STEPS):
        idx = torch.randint(0, n, (BATCH,), generator=gen)
        kl_weight = min(1.0, step / (0.3 * STEPS))
        loss = bayesdrop.objective(model, xtr[idx], ytr[idx], nll, n, kl_weight=kl_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return model.eval()


def sizes(model: nn.Module) -> tuple[int, int, int]:
    state = model.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    params = sum(p.numel() for p in model.parameters())
    return params, sum(t.numel() * t.element_size() for t in state.values()), buf.tell()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", choices=("svd", "ard"), default="svd")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = digits()
    wrap = SparseVariationalDropout if args.family == "svd" else ARDDropout
    model = train(wrap, data)
    prune(model)
    print(compression_report(model))
    plain = build(lambda layer: layer).eval()  # same architecture, ordinary layers
    models = {
        "plain nn.Linear": plain,
        "trained (eval)": model,
        "compress dense": compress(model),
        "compress sparse": compress(model, form="sparse"),
    }
    print(models["compress dense"])
    xte, yte = data[2], data[3]
    with torch.no_grad():
        ref = model(xte)
        acc = float((ref.argmax(1) == yte).float().mean())
        for name in ("compress dense", "compress sparse"):
            diff = float((models[name](xte) - ref).abs().max())
            print(f"{name}: max |output - eval output| = {diff:.2e}")
    print(f"test accuracy (eval, = both compressed forms): {acc:.3f}")
    print(f"\n{'model':<18} {'params':>8} {'state bytes':>12} {'saved bytes':>12}")
    for name, m in models.items():
        p, b, s = sizes(m)
        print(f"{name:<18} {p:>8} {b:>12} {s:>12}")
    for batch in (1, 450):
        x = xte[:batch]
        fns = {}
        for name, m in models.items():
            fns[name] = lambda m=m, x=x: m(x)
        with torch.no_grad():
            t = interleaved_median(fns, rounds=args.rounds, reps=200 if batch == 1 else 50)
        base = t["plain nn.Linear"]
        print(f"\nbatch {batch}: eval forward, ratio to plain nn.Linear ({base * 1e6:.1f} us)")
        for name, v in t.items():
            print(f"  {name:<18} {v * 1e6:9.1f} us  {v / base:6.2f}x")


if __name__ == "__main__":
    main()
