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
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _mlp import inputs, mlp, step_fn  # noqa: E402
from _timing import interleaved_median  # noqa: E402

from bayesdrop import LearnableBernoulliDropout  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = inputs()

    def lbd(estimator: str) -> nn.Module:
        return mlp(lambda layer: LearnableBernoulliDropout(layer, estimator=estimator))

    fns = {
        "nn.Dropout": step_fn(mlp(None), x, y, pair="concat"),
        "LBD ARM concat": step_fn(lbd("arm"), x, y, pair="concat"),
        "LBD DisARM concat": step_fn(lbd("disarm"), x, y, pair="concat"),
        "LBD ARM nograd": step_fn(lbd("arm"), x, y, pair="nograd"),
        "LBD DisARM nograd": step_fn(lbd("disarm"), x, y, pair="nograd"),
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
