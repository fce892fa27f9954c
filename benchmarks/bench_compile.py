"""torch.compile versus eager: training step and MC prediction of an MLP, for each family.

MLP 784-512-512-10 with the family's dropout in front of every Linear, batch 128, CPU, Adam.
The model is compiled (``torch.compile(model)``, default settings); ``bayesdrop.objective`` stays
eager around it (for LBD the antithetic pair runs through the compiled model). Prints ms/step and
the ratio compiled / eager (< 1 means compile is faster), process CPU time, one thread, median of
interleaved rounds. Compilation time is excluded (warm-up). ``plain`` is the reference: the same
MLP with ``nn.Dropout``, trained through the same objective, so that what torch.compile itself
gains or loses on this CPU is visible next to the families. ``--dynamic`` first runs one short
batch of 7, as a data set's last batch would, so that the timed graphs are the ones with a
symbolic batch size that training uses from then on.

    python benchmarks/bench_compile.py [--families lbd concrete ...] [--dynamic]
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

import bayesdrop.nn as bnn  # noqa: E402
from bayesdrop import objective  # noqa: E402

FAMILIES = {
    "plain": lambda lin: nn.Sequential(nn.Dropout(0.5), lin),
    "mc": lambda lin: nn.Sequential(bnn.MCDropout(0.5), lin),
    "lbd": lambda lin: bnn.LearnableBernoulliDropout(lin),
    "concrete": lambda lin: bnn.ConcreteDropout(lin),
    "gaussian": lambda lin: bnn.GaussianDropout(lin, p=0.5),
    "variational": lambda lin: bnn.VariationalDropout(lin, noise="B"),
    "sparse": lambda lin: bnn.SparseVariationalDropout(lin),
    "ard": lambda lin: bnn.ARDDropout(lin),
    "fast": lambda lin: bnn.FastDropoutLinear(lin.in_features, lin.out_features, p=0.5),
}


def nll(out, y):
    return F.cross_entropy(out, y, reduction="none")


def mlp(family: str) -> nn.Module:
    wrap = FAMILIES[family]
    return nn.Sequential(
        wrap(nn.Linear(784, 512)),
        nn.ReLU(),
        wrap(nn.Linear(512, 512)),
        nn.ReLU(),
        wrap(nn.Linear(512, 10)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--dynamic", action="store_true", help="time the symbolic-batch graphs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    shapes = "symbolic batch (after a batch of 7)" if args.dynamic else "batch 128"
    print(f"MLP 784-512-512-10, {shapes}, CPU threads={torch.get_num_threads()}, process CPU time")
    print(f"{'family':<12} {'eager ms':>9} {'compiled ms':>12} {'ratio':>6}")
    for fam in args.families:
        torch._dynamo.reset()  # each family compiles afresh (the recompile limit is shared)
        torch.manual_seed(0)
        eager = mlp(fam)
        compiled = torch.compile(mlp(fam))
        fns = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(model=model, opt=opt):
                opt.zero_grad(set_to_none=True)
                objective(model, x, y, nll, 60000).backward()
                opt.step()

            fns[name] = step
            if args.dynamic:
                objective(model, x[:7], y[:7], nll, 60000).backward()
        t = interleaved_median(fns, rounds=args.rounds, reps=5, warmup=3)
        print(
            f"{fam:<12} {1000 * t['eager']:>9.2f} {1000 * t['compiled']:>12.2f} {t['compiled'] / t['eager']:>6.2f}"
        )


if __name__ == "__main__":
    main()
