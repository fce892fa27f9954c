"""Training-step time: nn.Dropout MLP versus the same MLP with LBD (DisARM default, ARM).

MLP 784-1024-1024-10, batch 128, CPU, dropout (or LBD) before layers 2 and 3, plain SGD and
Adam, one torch thread by default, process CPU time, interleaved rounds (ratios measured side by
side in one run). LBD is timed with both ways of evaluating the antithetic pair in
:func:`bayesdrop.objective`: ``pair="nograd"`` (the default: a gradient-free evaluation plus an
ordinary one; in an ``nn.Sequential`` the gradient-free one starts from the activations before
the first LBD module) and ``pair="concat"`` (one doubled batch); ``"nograd, whole model"`` re-runs
the whole network (``split=False``), the straightforward path the split must match bit for bit.

    python benchmarks/bench_lbd_step.py [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _mlp import inputs, mlp, step_fn  # noqa: E402
from _timing import interleaved_median  # noqa: E402

from bayesdrop import LearnableBernoulliDropout, objective  # noqa: E402

AT = (1, 2)  # dropout before layers 2 and 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = inputs()
    has_split = "split" in inspect.signature(objective).parameters

    def lbd(estimator: str) -> nn.Module:
        return mlp(lambda layer: LearnableBernoulliDropout(layer, estimator=estimator), at=AT)

    print(
        f"MLP 784-1024-1024-10, batch 128, dropout before layers 2 and 3, CPU threads="
        f"{torch.get_num_threads()}, process CPU time (median of {args.rounds} interleaved rounds)"
    )
    for optimizer in ("sgd", "adam"):
        torch.manual_seed(0)
        fns = {
            "nn.Dropout": step_fn(mlp(None, at=AT), x, y, optimizer),
            "LBD DisARM nograd": step_fn(lbd("disarm"), x, y, optimizer, pair="nograd"),
            "LBD ARM nograd": step_fn(lbd("arm"), x, y, optimizer, pair="nograd"),
            "LBD DisARM concat": step_fn(lbd("disarm"), x, y, optimizer, pair="concat"),
        }
        if has_split:
            fns["LBD DisARM nograd, whole model"] = step_fn(
                lbd("disarm"), x, y, optimizer, pair="nograd", split=False
            )
        t = interleaved_median(fns, rounds=args.rounds)
        base = t["nn.Dropout"]
        print(f"\n{optimizer.upper()}\n{'variant':<32} {'ms/step':>8} {'ratio':>6}")
        for k, v in t.items():
            print(f"{k:<32} {1000 * v:>8.2f} {v / base:>6.2f}")


if __name__ == "__main__":
    main()
