"""Training-step time: nn.Dropout MLP versus the same MLP with SparseVariationalDropout / ARDDropout.

MLP 784-1024-1024-10, batch 128, CPU, Adam, trained through :func:`bayesdrop.objective` in every
case. The baseline is plain ``nn.Linear`` layers with ``nn.Dropout(0.5)`` before each; the
sparse variants wrap each ``nn.Linear`` (local reparameterisation: two matrix products per layer,
a per-weight KL and twice the parameters for Adam). Prints ms/step and the ratio to nn.Dropout
(target <= 2.3). ``bench_weight_noise.py`` measures the same step with plain SGD and Adam side by
side, against bayesian-torch and cplxmodule.

    python benchmarks/bench_sparse.py [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _mlp import inputs, mlp, step_fn  # noqa: E402
from _timing import interleaved_median  # noqa: E402

from bayesdrop import ARDDropout, SparseVariationalDropout  # noqa: E402

WRAPPERS = {
    "SparseVariationalDropout": SparseVariationalDropout,
    "ARDDropout": ARDDropout,
    "ARDDropout gamma": lambda layer: ARDDropout(layer, prior="gamma"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = inputs()
    fns = {"nn.Dropout": step_fn(mlp(None), x, y)}
    fns.update({kind: step_fn(mlp(wrap), x, y) for kind, wrap in WRAPPERS.items()})
    t = interleaved_median(fns, rounds=args.rounds)
    base = t["nn.Dropout"]
    print(
        f"MLP 784-1024-1024-10, batch 128, CPU threads={torch.get_num_threads()}, process CPU time"
    )
    print(f"{'variant':<26} {'ms/step':>8} {'ratio':>6}")
    for k, v in t.items():
        print(f"{k:<26} {1000 * v:>8.2f} {v / base:>6.2f}")


if __name__ == "__main__":
    main()
