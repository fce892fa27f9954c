"""Training-step time: nn.Dropout MLP versus the same MLP with ConcreteDropout.

MLP 784-1024-1024-10, batch 128, CPU, Adam, one dropout before each linear layer (inputs
included), trained through :func:`bayesdrop.objective` in both cases. ConcreteDropout learns one
rate per layer (``granularity="layer"``, the default) and adds Gal's regulariser; the variant
with a rate per unit is timed too, and the per-layer variant without its regulariser (``kl_weight=0``:
the share of the weight term's gradient). Prints ms/step and the ratio to nn.Dropout (target
<= 1.2).

    python benchmarks/bench_concrete.py [--threads N] [--rounds R]
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

from bayesdrop import ConcreteDropout  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = inputs()

    def concrete(granularity: str) -> nn.Module:
        return mlp(lambda layer: ConcreteDropout(layer, granularity=granularity))

    fns = {
        "nn.Dropout": step_fn(mlp(None, dropout_p=0.1), x, y),
        "Concrete layer": step_fn(concrete("layer"), x, y),
        "Concrete unit": step_fn(concrete("unit"), x, y),
        "Concrete no KL": step_fn(concrete("layer"), x, y, kl_weight=0.0),
    }
    t = interleaved_median(fns, rounds=args.rounds)
    base = t["nn.Dropout"]
    print(
        f"MLP 784-1024-1024-10, batch 128, CPU threads={torch.get_num_threads()}, process CPU time"
    )
    print(f"{'variant':<16} {'ms/step':>8} {'ratio':>6}")
    for k, v in t.items():
        print(f"{k:<16} {1000 * v:>8.2f} {v / base:>6.2f}")


if __name__ == "__main__":
    main()
