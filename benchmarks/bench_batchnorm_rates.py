"""Do per-channel LBD rates learn a reproducible signal behind batch normalisation?

A small CNN on scikit-learn's 8x8 digits (1,797 images), LBD on the input channels of the second
convolution, a normalisation after each convolution:

    Conv(1, C1, 3) -> norm -> ReLU -> LBD(Conv(C1, C2, 3)) -> norm -> ReLU -> pool
                   -> LBD(Linear(C2 * 16, 10))

trained with :func:`bayesdrop.objective` (Adam, batch 64, ``rate_lr`` 5e-2 via
:func:`bayesdrop.rate_param_groups`), the same initial weights and the same data order for every
run; only the mask seed differs (3 seeds). For each normalisation the per-channel rate moves
:math:`p_{\\mathrm{end}} - p_{\\mathrm{start}}` of the second convolution are compared across
seeds (Pearson correlation of each pair of seeds): a rate gradient whose signal exceeds its noise
moves the rates the same way whatever the masks.

Normalisations (every ARM/DisARM form is unbiased for the model as trained, except the
explicitly biased reference):

* ``batchnorm``: ``nn.BatchNorm2d``; the draws before it reach it, whole-batch form (variance
  about B = 64 times the per-example form's);
* ``ghost-g``: :class:`bayesdrop.nn.GhostBatchNorm` with ghost batches of ``g`` examples; the
  difference is summed per ghost batch (about g times);
* ``groupnorm``: ``nn.GroupNorm(4, C)``, per-example normalisation, per-example form;
* ``batchnorm-frozen``: ``nn.BatchNorm2d`` trained as usual for the first quarter of the steps
  (rates held), then its statistics frozen (eval mode, as in fine-tuning) while the rates learn:
  no coupling, the per-example form, exact for the model with frozen statistics;
* ``batchnorm-per-example``: ``nn.BatchNorm2d`` with ``coupled=False`` (the per-example form,
  biased behind BatchNorm; a reference, never a default).

Also reports the mean absolute move and the final training accuracy (eval mode, whole data
set). One thread; the default run (5 normalisations x 3 seeds) takes about 2 CPU minutes:

    nice -n 10 python benchmarks/bench_batchnorm_rates.py [--steps 800] [--norms ...]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesdrop import objective, rate_param_groups
from bayesdrop.nn import GhostBatchNorm, LearnableBernoulliDropout

C1, C2 = 16, 16  # channels of the two convolutions (--channels)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind.startswith("batchnorm"):  # batchnorm, batchnorm-frozen, batchnorm-per-example
        return nn.BatchNorm2d(channels)
    if kind.startswith("ghost-"):
        return GhostBatchNorm(channels, int(kind.split("-")[1]))
    if kind == "groupnorm":
        return nn.GroupNorm(4, channels)
    raise ValueError(f"unknown normalisation {kind!r}")


def make_model(kind: str) -> nn.Sequential:
    torch.manual_seed(0)  # the same initial weights for every normalisation and seed
    return nn.Sequential(
        nn.Conv2d(1, C1, 3, padding=1),
        make_norm(kind, C1),
        nn.ReLU(),
        LearnableBernoulliDropout(nn.Conv2d(C1, C2, 3, padding=1), init_p=0.3),
        make_norm(kind, C2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        LearnableBernoulliDropout(nn.Linear(C2 * 16, 10), init_p=0.3),
    )


def nll(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def train(
    kind: str, seed: int, x: Tensor, y: Tensor, steps: int, batch: int
) -> tuple[Tensor, float]:
    """Per-channel rate moves of the second convolution, and the final accuracy."""
    model = make_model(kind)
    lbd = model[3]
    start = lbd.p.clone()
    opt = torch.optim.Adam(rate_param_groups(model, rate_lr=5e-2), lr=1e-3)
    order = torch.Generator().manual_seed(123)  # the same data order for every seed
    torch.manual_seed(1000 + seed)  # the masks
    coupled = False if kind.endswith("per-example") else None
    warm = steps // 4 if kind == "batchnorm-frozen" else 0
    rate_group = opt.param_groups[1]
    if warm:
        rate_group["lr"] = 0.0  # the rates wait while the statistics settle
    for step in range(steps):
        if warm and step == warm:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()  # frozen statistics: no coupling, the exact per-example form
            rate_group["lr"] = 5e-2
        idx = torch.randint(0, len(x), (batch,), generator=order)
        opt.zero_grad()
        objective(model, x[idx], y[idx], nll, len(x), coupled=coupled).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    return lbd.p - start, acc


def main() -> None:
    global C1, C2
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--channels", type=int, nargs=2, default=[C1, C2], metavar=("C1", "C2"))
    ap.add_argument(
        "--norms",
        nargs="+",
        default=["batchnorm", "ghost-2", "ghost-4", "groupnorm", "batchnorm-frozen"],
    )
    args = ap.parse_args()
    C1, C2 = args.channels
    torch.set_num_threads(1)
    from sklearn.datasets import load_digits

    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y_np)
    print(
        f"per-channel rate moves of LBD(conv2) ({C1} channels), {args.steps} steps, batch "
        f"{args.batch}, rate_lr 5e-2, {args.seeds} mask seeds; Pearson correlation per pair"
    )
    print(
        f"{'normalisation':<24} {'correlations':<24} {'mean':>6} {'|move|':>7} {'acc':>6} {'s/run':>6}"
    )
    for kind in args.norms:
        moves, accs = [], []
        t0 = time.process_time()
        for seed in range(args.seeds):
            m, a = train(kind, seed, x, y, args.steps, args.batch)
            moves.append(m)
            accs.append(a)
        secs = (time.process_time() - t0) / args.seeds
        corr = [
            float(np.corrcoef(moves[i].numpy(), moves[j].numpy())[0, 1])
            for i, j in itertools.combinations(range(args.seeds), 2)
        ]
        size = float(torch.stack(moves).abs().mean())
        print(
            f"{kind:<24} {' '.join(f'{c:+.2f}' for c in corr):<24} {np.mean(corr):>+6.2f} "
            f"{size:>7.3f} {np.mean(accs):>6.3f} {secs:>6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
