"""MC prediction: ``mc_predict`` versus the loop a user would write, as ratios in one run.

Ways to get S = 20 stochastic passes of the same model and their mean probabilities, timed side
by side in one run (interleaved medians, so machine load hits all of them), reported as
``time / loop time`` (below 1 is faster than the loop):

* ``loop``: ``for _ in range(S): softmax(model(x))`` under ``mc_sampling``, then the mean — the
  plain loop a user would write (it computes no entropies and has no per-pass random streams);
* ``mc_predict``: ``bayesdrop.mc_predict`` as called by default (``max_batch=None``): the tile
  (passes per forward call) is measured on the first calls and cached per model and input shape
  (the benchmark makes those calls first and prints the choice);
* ``+ entropies``: the same, reading ``mutual_information`` (the entropies of the kept passes
  are computed when first read; this is their cost, which the loop does not pay);
* ``tile all``: ``mc_predict(max_batch=S*B)``, all passes in one forward call — what
  ``max_batch=None`` did before the tile was measured;
* ``exact=False``: one random stream per tiled call (all passes in one call);
* ``naive tiling``: ``model(x.repeat(S, 1))`` under ``mc_sampling`` — vectorisation without
  per-pass streams or entropies.

Models: an MLP 784-512-512-10 with ``nn.Dropout`` and LBD (batch 64), a small CNN for 10-class
32x32 segmentation maps with BatchNorm, ``Dropout2d`` and LBD (batch 16), and a tiny MLP
4-8-3 (batch 5) where the cost of a call, not of an example, dominates.

Measured on the 2-core development CPU (one thread, process CPU time, S = 20, torch 2.13, a
machine shared with other jobs, so ratios carry a few per cent of noise), time / loop time:

========================  ==========  ==========  ===========  ========  ===========  ======
model, batch              before      mc_predict  + entropies  tile all  exact=False  tile
========================  ==========  ==========  ===========  ========  ===========  ======
MLP 784-512-512-10, 64    1.01        1.01        1.01         1.08      see below    1
CNN 3x32x32, 16           3.44        1.03        1.07         3.08      see below    1
tiny MLP 4-8-3, 5         0.9-1.3     0.99        1.07         0.92      see below    20
========================  ==========  ==========  ===========  ========  ===========  ======

"before" is the previous default (all passes tiled into one call, entropies of every pass
computed with ``xlogy``), measured the same way before the change; "tile" is the tile that
``mc_predict`` chose. Over three runs of the final code ``mc_predict`` / loop was 0.99-1.06
(MLP), 1.03-1.05 (CNN) and 0.99-1.00 (tiny model, once it had finished measuring). One pass per
call wins for the two larger models on a CPU; the tiny model gains from all passes in one call.
``exact=False`` (one random stream per call, all passes in one call) and naive tiling took
0.8-1.0 (MLP), 2.4-3.3 (CNN) and 0.2-0.7 (tiny) of the loop's time over the runs. On a GPU
tiling pays (a previous measurement on one H100 found all passes in one call 2.7x (MLP) and 3.3x
(CNN) faster than the loop at these batch sizes); there the measured tile is the largest that
keeps gaining. This session had no GPU to measure the tile search on.

Run: ``python benchmarks/bench_mc_predict.py [--device cpu|cuda] [--samples S] [--threads T]
[--scale K]`` (``--scale`` multiplies the batch sizes; ``--threads`` defaults to 1 on a CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from _timing import interleaved_median  # noqa: E402

import bayesdrop  # noqa: E402
from bayesdrop.nn import LearnableBernoulliDropout  # noqa: E402
from bayesdrop.uncertainty import mc_sampling, tile_choice  # noqa: E402


def models(device: torch.device, scale: int = 1) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Dropout(0.5),
        LearnableBernoulliDropout(nn.Linear(512, 512), init_p=0.3),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, 10),
    ).to(device)
    cnn = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Dropout2d(0.2),
        LearnableBernoulliDropout(nn.Conv2d(32, 32, 3, padding=1), init_p=0.2),
        nn.ReLU(),
        nn.Conv2d(32, 10, 1),
    ).to(device)
    tiny = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).to(device)
    b1, b2, b3 = 64 * scale, 16 * scale, 5 * scale
    return {
        f"MLP 784-512-512-10, batch {b1}": (mlp, torch.randn(b1, 784, device=device)),
        f"CNN segmentation 3x32x32, batch {b2}": (cnn, torch.randn(b2, 3, 32, 32, device=device)),
        f"tiny MLP 4-8-3, batch {b3}": (tiny, torch.randn(b3, 4, device=device)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU default: 1)")
    ap.add_argument("--scale", type=int, default=1, help="multiply the batch sizes")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    device = torch.device(args.device)
    threads = args.threads if args.threads else (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    S = args.samples
    # a CPU side's cost is its process CPU time; a GPU's is wall time after synchronising
    clock = time.process_time if device.type == "cpu" else time.perf_counter

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(
        f"device {device}, S = {S}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"clock {clock.__name__}"
    )
    print(f"\n{'model':40s} {'method':13s} {'ms':>8s}  time / loop")
    for name, (model, x) in models(device, args.scale).items():
        B = x.shape[0]

        def loop(model=model, x=x) -> None:
            with mc_sampling(model), torch.no_grad():
                outs = [torch.softmax(model(x), 1) for _ in range(S)]
            torch.stack(outs).mean(0)
            sync()

        def measured(model=model, x=x) -> None:
            bayesdrop.mc_predict(model, x, S)
            sync()

        def with_entropies(model=model, x=x) -> None:
            bayesdrop.mc_predict(model, x, S).mutual_information  # noqa: B018 (computed on read)
            sync()

        def tile_all(model=model, x=x, rows=S * B) -> None:
            bayesdrop.mc_predict(model, x, S, max_batch=rows)
            sync()

        def inexact(model=model, x=x) -> None:
            bayesdrop.mc_predict(model, x, S, exact=False)
            sync()

        def naive(model=model, x=x) -> None:
            with mc_sampling(model), torch.no_grad():
                out = model(torch.cat([x] * S))
            torch.softmax(out.unflatten(0, (S, x.shape[0])), 2).mean(0)
            sync()

        for _ in range(40):  # the calls that measure the tile (their passes are real results)
            if tile_choice(model, x) is not None:
                break
            measured()
        fns = {
            "loop": loop,
            "mc_predict": measured,
            "+ entropies": with_entropies,
            "tile all": tile_all,
            "exact=False": inexact,
            "naive tiling": naive,
        }
        t = interleaved_median(fns, rounds=args.rounds, reps=3, clock=clock)
        for k, v in t.items():
            print(f"{name:40s} {k:13s} {1e3 * v:8.2f}  {v / t['loop']:5.2f}")
        print(f"{name:40s} tile chosen by mc_predict: {tile_choice(model, x)} passes per call\n")


if __name__ == "__main__":
    main()
