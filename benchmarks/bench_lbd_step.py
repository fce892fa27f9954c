"""Training-step time: nn.Dropout MLP versus the same MLP with LBD (ARM, DisARM).

MLP 784-1024-1024-10, batch 128, CPU, Adam. LBD is timed with both ways of evaluating the
antithetic pair in :func:`bayesdrop.objective`: ``pair="concat"`` (one doubled batch) and
``pair="nograd"`` (a gradient-free half plus an ordinary half). Prints ms/step and ratios.

    python benchmarks/bench_lbd_step.py [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_median  # noqa: E402

from bayesdrop import LearnableBernoulliDropout, objective  # noqa: E402


def nll(out, y):
    return F.cross_entropy(out, y, reduction="none")


def mlp(kind: str) -> nn.Module:
    sizes = [(784, 1024), (1024, 1024), (1024, 10)]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(sizes):
        if kind == "dropout":
            layers += [nn.Dropout(0.5), nn.Linear(a, b)]
        else:
            layers.append(LearnableBernoulliDropout(nn.Linear(a, b), estimator=kind))
        if i < 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def step_fn(model, x, y, pair="concat"):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        objective(model, x, y, nll, 60000, pair=pair).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    fns = {
        "nn.Dropout": step_fn(mlp("dropout"), x, y),
        "LBD ARM concat": step_fn(mlp("arm"), x, y, "concat"),
        "LBD DisARM concat": step_fn(mlp("disarm"), x, y, "concat"),
        "LBD ARM nograd": step_fn(mlp("arm"), x, y, "nograd"),
        "LBD DisARM nograd": step_fn(mlp("disarm"), x, y, "nograd"),
    }
    t = interleaved_median(fns, rounds=args.rounds)
    base = t["nn.Dropout"]
    print(
        f"MLP 784-1024-1024-10, batch 128, CPU threads={torch.get_num_threads()}, process CPU time"
    )
    print(f"{'variant':<20} {'ms/step':>8} {'ratio':>6}")
    for k, v in t.items():
        print(f"{k:<20} {1000 * v:>8.2f} {v / base:>6.2f}")


if __name__ == "__main__":
    main()
