"""``classification-uncertainty``: the LBD paper's Table 1 (CIFAR-10 columns) and Fig. 2(a), small.

The paper replaces the two dropout layers in front of VGG19's classifier (each after a fully
connected layer and a ReLU) by five kinds of dropout and compares accuracy and the mean PAvPU
(eq. 9 averaged over entropy thresholds :math:`H_{\\min} + t(H_{\\max}-H_{\\min})`,
:math:`t \\in [0, 1]`) with 10 forward passes. Here the same head is the whole network,

``x → Linear → ReLU → dropout → Linear → ReLU → dropout → Linear``

trained on flattened images through :func:`bayesdrop.objective` with

* regular dropout (``nn.Dropout(0.5)``, one deterministic pass at test time),
* MC dropout (:class:`~bayesdrop.nn.MCDropout` ``(0.5)``, 10 passes),
* Gaussian (variational) dropout (:class:`~bayesdrop.nn.VariationalDropout` ``kind="A"``,
  learned α per layer),
* Concrete dropout (:class:`~bayesdrop.nn.ConcreteDropout`, learned rate per layer),
* LBD (:class:`~bayesdrop.nn.LearnableBernoulliDropout`, ARM as in the paper, rate per layer),

all learned rates initialised at the hand-tuned 0.5. Stochastic models are evaluated with
:func:`bayesdrop.mc_predict` (10 samples); accuracy, NLL, ECE and the mean PAvPU come from
:mod:`bayesdrop.metrics`.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import metrics
from ..nn import ConcreteDropout, LearnableBernoulliDropout, MCDropout, VariationalDropout
from ..objectives import dropout_rates
from ..uncertainty import mc_predict
from ._common import image_split, train
from ._framework import Result, RunConfig, progress

__all__ = ["NAME", "TITLE", "METHODS", "PAPER", "build", "run"]

NAME = "classification-uncertainty"
TITLE = "LBD paper Table 1 / Fig. 2a: accuracy and PAvPU of five dropout methods (10 MC samples)"

METHODS = ("LBD", "Concrete", "Gaussian", "MC Dropout", "Regular Dropout")

#: LBD Table 1, CIFAR-10 (VGG19): accuracy %, mean PAvPU %.
PAPER = {
    "LBD": (93.47, 64.52),
    "Concrete": (92.72, 59.97),
    "Gaussian": (91.16, 52.71),
    "MC Dropout": (91.57, 52.08),
    "Regular Dropout": (91.61, 56.81),
}
P = 0.5  # the hand-tuned rate of the paper's regular and MC dropout, and every initial rate


def _dropout(method: str, layer: nn.Linear) -> list[nn.Module]:
    if method == "Regular Dropout":
        return [nn.Dropout(P), layer]
    if method == "MC Dropout":
        return [MCDropout(P), layer]
    if method == "Gaussian":
        return [VariationalDropout(layer, kind="A", granularity="layer", init_p=P)]
    if method == "Concrete":
        return [ConcreteDropout(layer, init_p=P, granularity="layer")]
    if method == "LBD":
        return [LearnableBernoulliDropout(layer, init_p=P, granularity="layer", estimator="arm")]
    raise ValueError(f"method must be one of {METHODS}, but got {method!r}")


def build(method: str, in_features: int, hidden: int, classes: int = 10) -> nn.Sequential:
    """The classifier head with ``method`` dropout in front of the 2nd and 3rd Linear layers."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        *_dropout(method, nn.Linear(hidden, hidden)),
        nn.ReLU(),
        *_dropout(method, nn.Linear(hidden, classes)),
    )


@torch.no_grad()
def _predict(
    model: nn.Module, method: str, x: torch.Tensor, samples: int, seed: int
) -> torch.Tensor:
    if method == "Regular Dropout":
        model.eval()
        return torch.softmax(model(x), dim=1)
    gen = torch.Generator(x.device).manual_seed(seed)
    return mc_predict(model, x, samples=samples, generator=gen, keep_samples=False).probs


def run(cfg: RunConfig) -> Result:
    data = image_split(cfg, n_train=cfg.pick(None, None, 500), n_test=cfg.pick(None, 1000, 297))
    hidden = cfg.pick(512, 256, 32)
    epochs = cfg.pick(30, 8, 2)
    samples = 10
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    rows: dict[str, dict] = {}
    curves: dict[str, list[float]] = {}
    for k, method in enumerate(progress(METHODS, cfg, f"{NAME} methods")):
        torch.manual_seed(cfg.seed)  # the same initial weights for every method
        model = build(method, data.in_features, hidden).to(cfg.device)
        t = train(
            model,
            data.x_train,
            data.y_train,
            cfg,
            epochs=epochs,
            batch_size=64,
            lr=1e-3,
            rate_lr=5e-2,
            desc=method,
            offset=0,
        )
        probs = _predict(model, method, data.x_test, samples, cfg.seed + k).double().cpu()
        y = data.y_test.cpu()
        curve = metrics.pavpu_curve(probs, y, ts)
        curves[method] = curve.pavpu.tolist()
        rates = {name: r.tolist() for name, r in dropout_rates(model).items()}
        rows[method] = {
            "accuracy": float(metrics.accuracy(probs, y)),
            "nll": float(metrics.nll(probs, y)),
            "ece": float(metrics.ece(probs, y)),
            "mean_pavpu": float(curve.pavpu.mean()),
            "drop_rates": rates,
            "train_seconds": t["seconds"],
        }
    best_acc = max(rows, key=lambda m: rows[m]["accuracy"])
    best_pavpu = max(rows, key=lambda m: rows[m]["mean_pavpu"])
    learned_better = all(
        rows[m]["mean_pavpu"] > max(rows["MC Dropout"]["mean_pavpu"], 0)
        for m in ("LBD", "Concrete")
    )
    table = []
    for m in METHODS:
        r = rows[m]
        rates = " / ".join(f"{v[0]:.2f}" for v in r["drop_rates"].values())
        table.append(
            {
                "method": m,
                "quantity": "accuracy % | mean PAvPU %",
                "paper": f"{PAPER[m][0]:.2f} | {PAPER[m][1]:.2f}",
                "ours": f"{100 * r['accuracy']:.2f} | {100 * r['mean_pavpu']:.2f}",
                "NLL": f"{r['nll']:.3f}",
                "ECE": f"{r['ece']:.3f}",
                "drop rates (layer 2 / 3)": rates,
            }
        )
    acc_gap = 100 * (
        rows["LBD"]["accuracy"] - max(rows[m]["accuracy"] for m in METHODS if m != "LBD")
    )
    pav_gap = 100 * (
        rows["LBD"]["mean_pavpu"] - max(rows[m]["mean_pavpu"] for m in METHODS if m != "LBD")
    )
    reproduced = best_acc == "LBD" and best_pavpu == "LBD"
    verdict = (
        f"{'Reproduced' if reproduced else 'Not reproduced'}: the paper has LBD first on both "
        f"accuracy and mean PAvPU; here the best accuracy is {best_acc} "
        f"({100 * rows[best_acc]['accuracy']:.2f}%, LBD {acc_gap:+.2f} points from the best "
        f"other) and the best mean PAvPU {best_pavpu} ({100 * rows[best_pavpu]['mean_pavpu']:.2f}%, "
        f"LBD {pav_gap:+.2f} points). Learned-rate methods (LBD, Concrete) "
        f"{'beat' if learned_better else 'do not both beat'} MC dropout on mean PAvPU."
    )
    settings = {
        "architecture": f"{data.in_features}-{hidden}-{hidden}-10, dropout before Linear 2 and 3",
        "initial_and_fixed_p": P,
        "epochs": epochs,
        "batch_size": 64,
        "lr": 1e-3,
        "rate_lr": 5e-2,
        "mc_samples": samples,
        "pavpu_thresholds_t": ts.tolist(),
        "lbd_estimator": "arm",
    }
    metrics_out = {"methods": rows, "pavpu_curves": curves, "paper": PAPER}
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="CIFAR-10 (VGG19 pretrained on ImageNet)",
        stand_in=data.stand_in,
        settings=settings,
        metrics=metrics_out,
        table=table,
        verdict=verdict,
        figure=_figure(ts, curves, rows),
    )


def _figure(ts, curves, rows):  # noqa: ANN001, ANN202 - plotting only
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    for m, c in curves.items():
        ax.plot(ts.numpy(), c, marker=".", label=m)
    ax.set(xlabel="threshold fraction t", ylabel="PAvPU", title="PAvPU vs uncertainty threshold")
    ax.legend(fontsize=8)
    learned = [m for m in METHODS if m in ("LBD", "Concrete", "Gaussian")]
    width = 0.25
    for k, m in enumerate(learned):
        vals = [v[0] for v in rows[m]["drop_rates"].values()]
        bx.bar([i + (k - 1) * width for i in range(len(vals))], vals, width, label=m)
    bx.axhline(P, color="k", ls="--", lw=1, label="initial / fixed p")
    bx.set(
        xticks=[0, 1],
        xticklabels=["dropout 1", "dropout 2"],
        ylabel="learned drop rate",
        title="learned rates per layer",
    )
    bx.legend(fontsize=8)
    return fig
