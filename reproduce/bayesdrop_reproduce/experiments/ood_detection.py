"""``ood-detection``: does MC-dropout uncertainty tell held-out digits from Fashion-MNIST images?

An experiment beyond the papers, asked by users of MC dropout (Gal and Ghahramani, "Dropout as a
Bayesian Approximation: Representing Model Uncertainty in Deep Learning", 2016). A
``784-H-H-10`` MLP with dropout in front of its 2nd and 3rd Linear layers is converted to each
dropout family by :func:`bayesdrop.convert` (MC dropout; LBD, Boluki et al., "Learnable
Bernoulli Dropout for Bayesian Deep Learning", 2020; Concrete dropout, Gal, Hron and Kendall,
2017; Gaussian dropout, Srivastava et al., 2014; variational dropout, Kingma, Salimans and
Welling, 2015), trained on MNIST digits through the suite's one training loop (Adam on
:func:`bayesdrop.objective`, the rates in their own group by :func:`bayesdrop.rate_param_groups`)
and evaluated with :func:`bayesdrop.mc_predict` on held-out digits (in distribution) and on
Fashion-MNIST test images (out of distribution). With the MC probabilities
:math:`\\bar p = \\frac1S\\sum_s p_s` the two scores are the predictive entropy
:math:`H[\\bar p]` and the mutual information :math:`H[\\bar p] - \\frac1S\\sum_s H[p_s]`; a higher
score means "more likely out of distribution". Reported per family, mean ± standard error
(seed-to-seed standard deviation / sqrt(seeds)): accuracy, NLL, ECE and mean PAvPU on the digits
(:mod:`bayesdrop.metrics`), and :func:`~bayesdrop.metrics.ood_auroc`,
:func:`~bayesdrop.metrics.ood_aupr` (out of distribution as the positive class) and
:func:`~bayesdrop.metrics.fpr_at_tpr` at 95% from each score.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import bayesdrop
from bayesdrop import RateTracker, dropout_rates, metrics
from bayesdrop.uncertainty import MCClassification

from ..datasets.images import load_fashion_mnist, load_images
from ._common import STAND_IN, train
from ._framework import SETTLE_FRACTION, Result, RunConfig, progress, rate_settling

__all__ = [
    "NAME",
    "TITLE",
    "FAMILIES",
    "LEARNED",
    "METRICS",
    "SCORES",
    "load_sets",
    "build",
    "scores",
    "evaluate",
    "summarize",
    "run",
]

NAME = "ood-detection"
TITLE = (
    "Beyond the papers: out-of-distribution detection (held-out MNIST digits vs Fashion-MNIST) "
    "by MC-dropout entropy and mutual information, five dropout families"
)

#: The families compared (names of :func:`bayesdrop.convert`) and their report labels.
FAMILIES = {
    "mc": "MC dropout",
    "lbd": "LBD",
    "concrete": "Concrete",
    "gaussian": "Gaussian",
    "variational": "Variational",
}
#: The families whose drop rates are learned (their trajectories are recorded); Gaussian dropout
#: keeps the fixed rates of the base network.
LEARNED = ("lbd", "concrete", "variational")
#: The OOD scores: predictive entropy and mutual information of the MC prediction.
SCORES = ("entropy", "mi")
#: Every number measured per family and seed.
METRICS = (
    "accuracy",
    "nll",
    "ece",
    "mean_pavpu",
    *(f"{m}_{s}" for s in SCORES for m in ("auroc", "aupr", "fpr95")),
)
P = (0.2, 0.5)  # the initial / fixed rates of the two dropout layers


def load_sets(
    n_train: int, n_in: int, n_out: int, seed: int, device: str = "cpu"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_in, y_in, x_out)``, flattened pixels in [0, 1] on ``device``.

    Digits: ``n_train`` training and ``n_in`` disjoint held-out images of the 5,000 MNIST digits
    (split by ``seed``); ``x_out``: ``n_out`` Fashion-MNIST test images drawn by ``seed``.

    Raises:
        FileNotFoundError: Fashion-MNIST or the digits are not installed; the message says the
            experiment was skipped and how to install them.
    """
    try:
        fashion, _ = load_fashion_mnist("test")
        digits = load_images("mnist-5k", n_train=n_train, n_test=n_in, seed=seed)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{NAME} skipped: {err}") from err
    if n_out > len(fashion):
        raise ValueError(f"n_out must be at most {len(fashion)}, got {n_out}")
    pick = torch.randperm(len(fashion), generator=torch.Generator().manual_seed(seed))[:n_out]
    x_out = torch.from_numpy(fashion[pick.numpy()].astype("float32") / 255.0).flatten(1)
    dev = torch.device(device)
    return (
        digits.x_train.flatten(1).to(dev),
        digits.y_train.to(dev),
        digits.x_test.flatten(1).to(dev),
        digits.y_test.to(dev),
        x_out.to(dev),
    )


def build(family: str, hidden: int, in_features: int = 784, classes: int = 10) -> nn.Module:
    """``in-hidden-hidden-classes`` MLP, dropout ``P`` before Linear 2 and 3, as ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {tuple(FAMILIES)}, but got {family!r}")
    base = nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(P[0]),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(P[1]),
        nn.Linear(hidden, classes),
    )
    return bayesdrop.convert(base, family)[0]


@torch.no_grad()
def scores(
    model: nn.Module, x_in: Tensor, x_out: Tensor, samples: int, seed: int
) -> dict[str, Tensor]:
    """MC predictions of both sets (:func:`bayesdrop.mc_predict`, ``samples`` passes, seeded):
    ``probs_in`` ``(N, C)`` and, per score in :data:`SCORES`, ``<score>_in`` and ``<score>_out``."""
    gen = torch.Generator(x_in.device).manual_seed(seed)
    res = {}
    for which, x in (("in", x_in), ("out", x_out)):
        out = bayesdrop.mc_predict(model, x, num_samples=samples, generator=gen, keep_samples=False)
        if not isinstance(out, MCClassification):
            raise TypeError("mc_predict returned a regression result for a classifier")
        res[f"probs_{which}"] = out.probs.double().cpu()
        res[f"entropy_{which}"] = out.predictive_entropy.double().cpu()
        res[f"mi_{which}"] = out.mutual_information.double().cpu()
    return res


def evaluate(s: dict[str, Tensor], y_in: Tensor) -> dict[str, float]:
    """Every metric of :data:`METRICS` from :func:`scores`' output and the digits' labels."""
    probs, y = s["probs_in"], y_in.cpu()
    row = {
        "accuracy": float(metrics.accuracy(probs, y)),
        "nll": float(metrics.nll(probs, y)),
        "ece": float(metrics.ece(probs, y)),
        "mean_pavpu": float(metrics.pavpu_curve(probs, y).mean),
    }
    for name in SCORES:
        a, b = s[f"{name}_in"], s[f"{name}_out"]
        row[f"auroc_{name}"] = float(metrics.ood_auroc(a, b))
        row[f"aupr_{name}"] = float(metrics.ood_aupr(a, b))
        row[f"fpr95_{name}"] = float(metrics.fpr_at_tpr(a, b, 0.95))
    return row


def _mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    se = (t.std() / len(values) ** 0.5).item() if len(values) > 1 else float("nan")
    return t.mean().item(), se


def summarize(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``{metric: (mean, standard error)}`` over the seeds' rows (SE is NaN for one seed)."""
    return {m: _mean_se([r[m] for r in rows]) for m in METRICS}


def _pm(pair: tuple[float, float], digits: int = 3) -> str:
    mean, se = pair
    if se != se:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _beyond(pair: tuple[float, float]) -> bool:
    mean, se = pair
    return se == se and abs(mean) > 2 * se


def run(cfg: RunConfig) -> Result:
    """Train each family on each seed (same initial weights across families per seed)."""
    n_train, n_in = cfg.pick(4000, 4000, 300), cfg.pick(1000, 1000, 100)
    n_out = cfg.pick(2000, 1000, 100)
    hidden = cfg.pick(512, 128, 16)
    epochs = cfg.pick(20, 3, 1, medium=30)
    seeds = cfg.pick(5, 3, 2)
    samples = cfg.pick(50, 20, 5)
    batch_size, lr, rate_lr = 64, 1e-3, 5e-2
    per_seed: dict[str, list[dict[str, Any]]] = {f: [] for f in FAMILIES}
    kept: dict[str, dict[str, Tensor]] = {}
    trackers: dict[str, list[RateTracker]] = {f: [] for f in LEARNED}
    sets = [load_sets(n_train, n_in, n_out, cfg.seed + s, cfg.device) for s in range(seeds)]
    jobs = [(s, f) for s in range(seeds) for f in FAMILIES]
    for s, family in progress(jobs, cfg, f"{NAME} seed × family"):
        x, y, x_in, y_in, x_out = sets[s]
        torch.manual_seed(cfg.seed + s)
        model = build(family, hidden).to(cfg.device)
        tracker = RateTracker(model) if family in LEARNED else None
        if tracker is not None:
            tracker.record(0)
        t = train(
            model,
            x,
            y,
            cfg,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            rate_lr=rate_lr,
            desc=f"{family} (seed {s})",
            offset=s,
            on_step=None if tracker is None else tracker.record,
            lr_decay_from=cfg.decay_from,
        )
        sc = scores(model, x_in, x_out, samples, cfg.seed + 100 * s + 1)
        row: dict[str, Any] = evaluate(sc, y_in)
        row["drop_rates"] = {k: float(v.double().mean()) for k, v in dropout_rates(model).items()}
        row["train_seconds"] = t["seconds"]
        if tracker is not None:
            trackers[family].append(tracker)
            row["rate_drift_last_quarter"] = tracker.drift(SETTLE_FRACTION)
        per_seed[family].append(row)
        if s == 0:
            kept[family] = {k: v for k, v in sc.items() if not k.startswith("probs")}

    summary = {f: summarize(per_seed[f]) for f in FAMILIES}

    def paired(key_a: str, fam_a: str, key_b: str, fam_b: str) -> tuple[float, float]:
        return _mean_se(
            [a[key_a] - b[key_b] for a, b in zip(per_seed[fam_a], per_seed[fam_b], strict=True)]
        )

    # entropy vs mutual information, per family (paired by seed): positive = MI separates better
    mi_minus_entropy = {f: paired("auroc_mi", f, "auroc_entropy", f) for f in FAMILIES}
    # each family vs MC dropout on the better score (paired by seed)
    vs_mc = {
        score: {f: paired(f"auroc_{score}", f, f"auroc_{score}", "mc") for f in FAMILIES}
        for score in SCORES
    }

    table = []
    for f, label in FAMILIES.items():
        r = summary[f]
        table.append(
            {
                "family": label,
                "quantity": "OOD AUROC (entropy / MI)",
                "paper": "— (not in the papers)",
                "ours": f"{_pm(r['auroc_entropy'])} / {_pm(r['auroc_mi'])}",
                "accuracy": _pm(r["accuracy"]),
                "NLL": _pm(r["nll"]),
                "ECE": _pm(r["ece"]),
                "mean PAvPU": _pm(r["mean_pavpu"]),
                "AUPR (entropy / MI)": f"{_pm(r['aupr_entropy'])} / {_pm(r['aupr_mi'])}",
                "FPR95 (entropy / MI)": f"{_pm(r['fpr95_entropy'])} / {_pm(r['fpr95_mi'])}",
                "mean drop rate (dropout 1 / 2)": " / ".join(
                    f"{sum(col) / len(col):.2f}"
                    for col in zip(*(list(x["drop_rates"].values()) for x in per_seed[f]))
                ),
            }
        )

    settling = {f: rate_settling(trackers[f], what=FAMILIES[f]) for f in LEARNED}
    rates_settled = rate_settling(
        [t for f in LEARNED for t in trackers[f]],
        what=f"{', '.join(FAMILIES[f] for f in LEARNED)} rates, {seeds} seed(s) each",
    )
    better_mi = [f for f in FAMILIES if mi_minus_entropy[f][0] > 0]
    sig = [f for f in FAMILIES if _beyond(mi_minus_entropy[f])]
    best_score = "mi" if len(better_mi) * 2 > len(FAMILIES) else "entropy"
    best_fam = max(FAMILIES, key=lambda f: summary[f][f"auroc_{best_score}"][0])
    differ = [
        f"{FAMILIES[f]} {gap[0]:+.3f} ± {gap[1]:.3f}"
        for f, gap in vs_mc[best_score].items()
        if f != "mc" and _beyond(gap)
    ]
    score_name = {"entropy": "predictive entropy", "mi": "mutual information"}
    verdict = (
        f"Measured ({seeds} seed(s), means ± SE, {cfg.mode} budget): the mutual information "
        f"gives a higher AUROC than the predictive entropy for {len(better_mi)} of "
        f"{len(FAMILIES)} families ({', '.join(FAMILIES[f] for f in better_mi) or 'none'}; "
        f"beyond 2 SE of the paired difference for "
        f"{', '.join(FAMILIES[f] for f in sig) or 'none'}); MI minus entropy AUROC: "
        + ", ".join(f"{FAMILIES[f]} {g[0]:+.3f} ± {g[1]:.3f}" for f, g in mi_minus_entropy.items())
        + f". By the {score_name[best_score]} the highest AUROC is {FAMILIES[best_fam]}'s "
        f"({_pm(summary[best_fam][f'auroc_{best_score}'])}); against MC dropout (paired by "
        f"seed) "
        + (
            f"these families differ by more than 2 SE: {'; '.join(differ)}."
            if differ
            else "no family differs by more than 2 SE."
        )
        + f" FPR at 95% TPR by the {score_name[best_score]} ranges from "
        f"{min(summary[f][f'fpr95_{best_score}'][0] for f in FAMILIES):.3f} to "
        f"{max(summary[f][f'fpr95_{best_score}'][0] for f in FAMILIES):.3f}: the share of "
        "held-out digits flagged when 95% of Fashion-MNIST images are. The learned rates "
        f"{'settled' if rates_settled['settled'] else 'did not all settle'} by the suite's "
        f"criterion (largest drift {rates_settled['max_drift']:.3f}, threshold "
        f"{rates_settled['tol']})."
    )
    settings = {
        "architecture": f"784-{hidden}-{hidden}-10, dropout {P[0]} / {P[1]} before Linear 2 / 3",
        "families": list(FAMILIES),
        "n_train_digits": n_train,
        "n_in_digits": n_in,
        "n_out_fashion": n_out,
        "epochs": epochs,
        "seeds": seeds,
        "batch_size": batch_size,
        "lr": lr,
        "rate_lr": rate_lr,
        "mc_samples": samples,
        "ece_bins": 15,
        "fpr_at_tpr": 0.95,
    }
    metrics_out = {
        "summary": summary,
        "per_seed": per_seed,
        "mi_minus_entropy_auroc": mi_minus_entropy,
        "auroc_minus_mc": vs_mc,
        "rates_settled": {"all": rates_settled, **settling},
        "scores_seed0": {f: {k: v.tolist() for k, v in d.items()} for f, d in kept.items()},
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="none (not in the papers)",
        stand_in=(
            f"{STAND_IN['mnist-5k']}: {n_train} train / {n_in} held-out digits; "
            f"{n_out} Fashion-MNIST test images (Debian dataset-fashion-mnist) as OOD"
        ),
        settings=settings,
        metrics=metrics_out,
        table=table,
        verdict=verdict,
        figure=_figure(summary, kept[best_fam], FAMILIES[best_fam]),
        rates=rates_settled,
    )


def _figure(summary: dict[str, dict[str, tuple[float, float]]], sc: dict, label: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(17, 4.2))
    width = 0.38
    xs = range(len(FAMILIES))
    for k, (score, name) in enumerate((("entropy", "entropy"), ("mi", "mutual information"))):
        means = [summary[f][f"auroc_{score}"][0] for f in FAMILIES]
        ses = [summary[f][f"auroc_{score}"][1] for f in FAMILIES]
        ses = [0.0 if e != e else e for e in ses]
        ax.bar([i + (k - 0.5) * width for i in xs], means, width, yerr=ses, capsize=3, label=name)
    lo = min(summary[f][f"auroc_{s}"][0] for f in FAMILIES for s in SCORES)
    ax.set(
        xticks=list(xs),
        xticklabels=list(FAMILIES.values()),
        ylim=(max(0.0, lo - 0.1), 1.0),
        ylabel="OOD AUROC (mean ± SE)",
        title="digits vs Fashion-MNIST: AUROC per family",
    )
    ax.legend(fontsize=8)
    for axis, score, name in ((bx, "entropy", "predictive entropy"), (cx, "mi", "mutual info")):
        a, b = sc[f"{score}_in"], sc[f"{score}_out"]
        top = float(torch.cat([a, b]).max())
        bins = torch.linspace(0.0, max(top, 1e-6), 31).tolist()
        axis.hist(a.numpy(), bins=bins, density=True, alpha=0.6, label="held-out digits")
        axis.hist(b.numpy(), bins=bins, density=True, alpha=0.6, label="Fashion-MNIST")
        auroc = float(metrics.ood_auroc(a, b))
        axis.set(
            xlabel=f"{name} (nats)",
            ylabel="density",
            title=f"{label}, seed 0: AUROC {auroc:.3f}",
        )
        axis.legend(fontsize=8)
    return fig
