"""``classification-uncertainty``: the LBD paper's Table 1 (CIFAR-10 columns) and Fig. 2(a), small.

The paper replaces the two dropout layers in front of VGG19's classifier (each after a fully
connected layer and a ReLU) by five kinds of dropout and compares accuracy and the mean PAvPU
(eq. 9 averaged over entropy thresholds :math:`H_{\\min} + t(H_{\\max}-H_{\\min})`,
:math:`t \\in [0, 1]`) with 10 forward passes. Here the same head is the whole network,

``x → Linear → ReLU → dropout → Linear → ReLU → dropout → Linear``

trained on flattened images through :func:`bayesdrop.objective` with

* regular dropout (``nn.Dropout(0.5)``, one deterministic pass at test time),
* MC dropout (:class:`~bayesdrop.nn.MCDropout` ``(0.5)``, 10 passes),
* Gaussian (variational) dropout (:class:`~bayesdrop.nn.VariationalDropout` ``noise="A"``,
  learned α per layer),
* Concrete dropout (:class:`~bayesdrop.nn.ConcreteDropout`, learned rate per layer),
* LBD (:class:`~bayesdrop.nn.LearnableBernoulliDropout`, ARM as in the paper, rate per layer),

all learned rates initialised at the hand-tuned 0.5. Stochastic models are evaluated with
:func:`bayesdrop.mc_predict` (10 samples); accuracy, NLL, ECE and the mean PAvPU come from
:mod:`bayesdrop.metrics`. Every method is trained from the same initial weights on several
seeds; the table gives means ± standard errors over the seeds, and LBD's gap to the best other
method is paired by seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bayesdrop import RateTracker, dropout_rates, metrics
from bayesdrop.nn import ConcreteDropout, LearnableBernoulliDropout, MCDropout, VariationalDropout
from bayesdrop.uncertainty import MCClassification, mc_predict

from ._common import image_split, train
from ._framework import SETTLE_FRACTION, Result, RunConfig, progress, rate_settling

__all__ = ["NAME", "TITLE", "METHODS", "PAPER", "build", "predict", "evaluate", "run"]

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
#: The methods whose drop rates are learned (their trajectories are recorded).
LEARNED = ("LBD", "Concrete", "Gaussian")
P = 0.5  # the hand-tuned rate of the paper's regular and MC dropout, and every initial rate


def _dropout(method: str, layer: nn.Linear) -> list[nn.Module]:
    if method == "Regular Dropout":
        return [nn.Dropout(P), layer]
    if method == "MC Dropout":
        return [MCDropout(P), layer]
    if method == "Gaussian":
        return [VariationalDropout(layer, noise="A", granularity="layer", init_p=P)]
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
def predict(model: nn.Module, method: str, x: Tensor, samples: int, seed: int) -> Tensor:
    r"""Predictive probabilities ``(N, C)``: for regular dropout one deterministic pass
    :math:`\mathrm{softmax}(f(x))` in eval mode (inverted dropout needs no rescaling), otherwise the
    MC average :math:`\frac1S\sum_s\mathrm{softmax}(f(x; z_s))` of :func:`bayesdrop.mc_predict`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got {method!r}")
    if method == "Regular Dropout":
        model.eval()
        return torch.softmax(model(x), dim=1)
    gen = torch.Generator(x.device).manual_seed(seed)
    out = mc_predict(model, x, num_samples=samples, generator=gen, keep_samples=False)
    if not isinstance(out, MCClassification):
        raise TypeError("mc_predict returned a regression result for a classifier")
    return out.probs


def evaluate(probs: Tensor, y: Tensor, ts: Tensor) -> dict[str, Any]:
    """Accuracy, NLL, ECE (15 bins), the PAvPU curve over ``ts`` and its mean, from
    :mod:`bayesdrop.metrics`."""
    probs, y = probs.double().cpu(), y.cpu()
    curve = metrics.pavpu_curve(probs, y, ts)
    return {
        "accuracy": float(metrics.accuracy(probs, y)),
        "nll": float(metrics.nll(probs, y)),
        "ece": float(metrics.ece(probs, y)),
        "mean_pavpu": float(curve.mean),
        "pavpu_curve": curve.pavpu.tolist(),
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    se = (t.std() / len(values) ** 0.5).item() if len(values) > 1 else float("nan")
    return t.mean().item(), se


def _pm(pair: tuple[float, float], scale: float = 100.0, digits: int = 2) -> str:
    mean, se = pair
    if se != se:  # one seed
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * se:.{digits}f}"


def run(cfg: RunConfig) -> Result:
    """Train every method on ``seeds`` seeds (same initial weights across methods per seed)."""
    data = image_split(cfg, n_train=cfg.pick(None, None, 500), n_test=cfg.pick(None, 1000, 297))
    hidden = cfg.pick(512, 256, 32)
    epochs = cfg.pick(30, 8, 2, medium=60)
    seeds = cfg.pick(3, 3, 1)
    batch_size, lr, rate_lr = 64, 1e-3, 5e-2
    samples = 10
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    per_seed: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    trackers: dict[str, list[RateTracker]] = {m: [] for m in LEARNED}
    jobs = [(s, m) for s in range(seeds) for m in METHODS]
    for s, method in progress(jobs, cfg, f"{NAME} seed × method"):
        torch.manual_seed(cfg.seed + s)  # the same initial weights for every method
        model = build(method, data.in_features, hidden).to(cfg.device)
        tracker = RateTracker(model) if method in LEARNED else None
        if tracker is not None:
            tracker.record(0)
        t = train(
            model,
            data.x_train,
            data.y_train,
            cfg,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            rate_lr=rate_lr,
            desc=f"{method} (seed {s})",
            offset=s,
            on_step=None if tracker is None else tracker.record,
            lr_decay_from=cfg.decay_from,
        )
        probs = predict(model, method, data.x_test, samples, cfg.seed + 100 * s + 1)
        row = evaluate(probs, data.y_test, ts)
        row["drop_rates"] = {name: r.tolist() for name, r in dropout_rates(model).items()}
        row["train_seconds"] = t["seconds"]
        if tracker is not None:
            trackers[method].append(tracker)
            row["rate_drift_last_quarter"] = tracker.drift(SETTLE_FRACTION)
        per_seed[method].append(row)

    summary: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        rows = per_seed[m]
        summary[m] = {
            key: _mean_se([r[key] for r in rows])
            for key in ("accuracy", "nll", "ece", "mean_pavpu")
        }
        layer_rates = [[v[0] for v in r["drop_rates"].values()] for r in rows]
        summary[m]["drop_rates"] = [
            sum(col) / len(col) for col in zip(*layer_rates)
        ]  # mean over seeds, per dropout layer
        summary[m]["pavpu_curve"] = [
            sum(col) / len(col) for col in zip(*(r["pavpu_curve"] for r in rows))
        ]

    def mean_of(m: str, key: str) -> float:
        return float(summary[m][key][0])

    def paired_gap(key: str, other: str) -> tuple[float, float]:
        """LBD minus ``other``, mean and standard error over the seeds (paired by seed)."""
        return _mean_se(
            [a[key] - b[key] for a, b in zip(per_seed["LBD"], per_seed[other], strict=True)]
        )

    best_acc = max(METHODS, key=lambda m: mean_of(m, "accuracy"))
    best_pavpu = max(METHODS, key=lambda m: mean_of(m, "mean_pavpu"))
    others = [m for m in METHODS if m != "LBD"]
    rival_acc = max(others, key=lambda m: mean_of(m, "accuracy"))
    rival_pavpu = max(others, key=lambda m: mean_of(m, "mean_pavpu"))
    acc_gap = paired_gap("accuracy", rival_acc)
    pav_gap = paired_gap("mean_pavpu", rival_pavpu)
    table = []
    for m in METHODS:
        r = summary[m]
        table.append(
            {
                "method": m,
                "quantity": "accuracy % | mean PAvPU %",
                "paper": f"{PAPER[m][0]:.2f} | {PAPER[m][1]:.2f}",
                "ours": f"{_pm(r['accuracy'])} | {_pm(r['mean_pavpu'])}",
                "NLL": _pm(r["nll"], scale=1.0, digits=3),
                "ECE": _pm(r["ece"], scale=1.0, digits=3),
                "drop rates (dropout 1 / 2)": " / ".join(f"{v:.2f}" for v in r["drop_rates"]),
            }
        )

    def significance(gap: tuple[float, float]) -> str:
        mean, se = gap
        if se != se:
            return "one seed, no standard error"
        return "more than 2 SE" if abs(mean) > 2 * se else "within 2 SE"

    settling = {m: rate_settling(trackers[m], what=m) for m in LEARNED}
    rates_settled = rate_settling(
        [t for m in LEARNED for t in trackers[m]],
        what=f"{', '.join(LEARNED)} rates of both dropout layers, {seeds} seed(s) each",
    )
    table.append(
        {
            "method": "learned rates",
            "quantity": "settled: mean |change| over the last quarter of training < 0.01 "
            "(largest drift)",
            "paper": "trained to convergence",
            "ours": "; ".join(
                f"{m} {'yes' if v['settled'] else 'no'} ({v['max_drift']:.3f})"
                for m, v in settling.items()
            )
            + f" ({cfg.mode} budget)",
        }
    )

    learned_better = all(
        mean_of(m, "mean_pavpu") > mean_of("MC Dropout", "mean_pavpu") for m in ("LBD", "Concrete")
    )
    reproduced = best_acc == "LBD" and best_pavpu == "LBD"
    verdict = (
        f"{'Reproduced' if reproduced else 'Not reproduced'} ({seeds} seed(s), means ± SE): "
        f"the paper has LBD first on both accuracy and mean PAvPU; here the best accuracy is "
        f"{best_acc} ({100 * mean_of(best_acc, 'accuracy'):.2f}%) and the best mean PAvPU "
        f"{best_pavpu} ({100 * mean_of(best_pavpu, 'mean_pavpu'):.2f}%). LBD minus the best "
        f"other: accuracy {100 * acc_gap[0]:+.2f} ± {100 * acc_gap[1]:.2f} points vs {rival_acc} "
        f"({significance(acc_gap)}), mean PAvPU {100 * pav_gap[0]:+.2f} ± {100 * pav_gap[1]:.2f} "
        f"vs {rival_pavpu} ({significance(pav_gap)}). Learned-rate methods (LBD, Concrete) "
        f"{'beat' if learned_better else 'do not both beat'} MC dropout on mean PAvPU. Absolute "
        f"PAvPU is not comparable with the paper's (a small MLP on a far easier data set). "
        f"The learned rates {'settled' if rates_settled['settled'] else 'did not all settle'} "
        f"by the suite's criterion (largest mean |change| over the last quarter of training "
        f"{rates_settled['max_drift']:.3f}, threshold {rates_settled['tol']}; {cfg.mode} budget)."
    )
    settings = {
        "architecture": f"{data.in_features}-{hidden}-{hidden}-10, dropout before Linear 2 and 3",
        "initial_and_fixed_p": P,
        "epochs": epochs,
        "seeds": seeds,
        "batch_size": batch_size,
        "lr": lr,
        "rate_lr": rate_lr,
        "mc_samples": samples,
        "pavpu_thresholds_t": ts.tolist(),
        "ece_bins": 15,
        "lbd_estimator": "arm",
        "regular_dropout_prediction": "one deterministic pass (eval mode)",
    }
    metrics_out = {
        "summary": summary,
        "per_seed": per_seed,
        "lbd_minus_best_other": {
            "accuracy": {"other": rival_acc, "mean": acc_gap[0], "se": acc_gap[1]},
            "mean_pavpu": {"other": rival_pavpu, "mean": pav_gap[0], "se": pav_gap[1]},
        },
        "paper": PAPER,
        "rates_settled": {"all": rates_settled, **settling},
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="CIFAR-10 (VGG19 pretrained on ImageNet)",
        stand_in=data.stand_in,
        settings=settings,
        metrics=metrics_out,
        table=table,
        verdict=verdict,
        figure=_figure(ts, summary, {m: trackers[m][0] for m in LEARNED}),
        rates=rates_settled,
    )


def _figure(ts: Tensor, summary: dict[str, dict[str, Any]], trackers: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(18, 4.2))
    for m in METHODS:
        ax.plot(ts.numpy(), summary[m]["pavpu_curve"], marker=".", label=m)
    ax.set(
        xlabel="threshold fraction t (entropy H_min + t (H_max - H_min))",
        ylabel="PAvPU",
        title="PAvPU vs uncertainty threshold (mean over seeds)",
    )
    ax.legend(fontsize=8)
    learned = [m for m in METHODS if m in ("LBD", "Concrete", "Gaussian")]
    width = 0.25
    for k, m in enumerate(learned):
        vals = summary[m]["drop_rates"]
        bx.bar([i + (k - 1) * width for i in range(len(vals))], vals, width, label=m)
    bx.axhline(P, color="k", ls="--", lw=1, label="initial / fixed p")
    bx.set(
        xticks=[0, 1],
        xticklabels=["dropout 1", "dropout 2"],
        ylabel="learned drop rate",
        title="learned rates per layer (mean over seeds)",
    )
    bx.legend(fontsize=8)
    for k, (m, tracker) in enumerate(trackers.items()):
        for j, h in enumerate(tracker.history.values()):
            cx.plot(
                tracker.steps,
                h.double().mean(1).numpy(),
                color=f"C{k}",
                ls=("-", "--")[j % 2],
                label=f"{m} dropout {j + 1}",
            )
    last = max(t.steps[-1] for t in trackers.values())
    cx.axvspan(last * (1 - SETTLE_FRACTION), last, color="0.9", zorder=0)
    cx.set(
        xlabel="step (last quarter shaded)",
        ylabel="drop rate",
        title="how the learned rates moved (seed 0)",
    )
    cx.legend(fontsize=7)
    return fig
