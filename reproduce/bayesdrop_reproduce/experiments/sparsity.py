r"""``sparsity``: the ARD paper's Tables 1–2 (Kharitonov, Molchanov & Vetrov 2018) at small scale.

Sparse variational dropout (:class:`~bayesdrop.nn.SparseVariationalDropout`, log-uniform prior,
KL of eq. (4)), ARD dropout (:class:`~bayesdrop.nn.ARDDropout`, eq. (3):
:math:`\mathrm{KL} = \sum \tfrac12\log(1 + \alpha^{-1})`) and ARD with a Gamma(a, b = 1e-8)
hyperprior (MAP-II, §4) are put on every weight of LeNet-300-100 and of a LeNet-5-Caffe-style
network and trained through :func:`bayesdrop.objective` following Appendix A: the additive
parameterisation with :math:`\log\sigma \sim \mathcal N(-5, 0.1^2)` (so
:math:`\log\sigma^2 \sim \mathcal N(-10, 0.2^2)`), the same initialisation for every method, Adam
with learning rate :math:`10^{-3}` and minibatches of 100, the regulariser annealed in linearly
over the first tenth of training and the learning rate decayed linearly to zero over the second
half; the Gamma runs clip :math:`\log\sigma^2 \le -8` (:math:`\log\sigma < -4`). A dense network
trained on the same schedule gives the stand-in's reference error.

The networks are evaluated in deterministic mode, with two pruning rules side by side:

* Molchanov et al. (2017): drop the weights with :math:`\log\alpha > 3` (eval mode of the
  modules, counted by :func:`bayesdrop.sparsity.compression_report`);
* the ARD paper: weights at their means, those with :math:`|\theta| < 10^{-2}` set to zero
  (:func:`trimmed`).

Compression is the total number of weights divided by the number of non-zero weights (biases
not counted).

Settings: full — the paper's 200 epochs and LeNet-5-Caffe (20, 50 channels, 500 hidden), every
method on both networks, on a GPU; on a CPU 30 epochs (LeNet-300-100) and 10 (LeNet-5) without
the LeNet-5 a-sweep. Quick — Fashion-MNIST all the same (the KL is divided by :math:`N`, and on a
few thousand images it prunes these networks to near-chance accuracy: tried on the 4,000
MNIST digits), 3 epochs of LeNet-300-100 and one of a
half-width LeNet-5 (10, 20 channels, 100 hidden), a ∈ {0.505, 0.52}. Tiny — scikit-learn digits,
one epoch, code paths only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bayesdrop import RateTracker
from bayesdrop.nn import ARDDropout, SparseVariationalDropout
from bayesdrop.sparsity import compression_report

from ._common import evaluate_classifier, image_split, train
from ._framework import SETTLE_FRACTION, Result, RunConfig, progress, rate_settling

__all__ = [
    "NAME",
    "TITLE",
    "PAPER",
    "METHODS",
    "mlp",
    "lenet_300_100",
    "lenet5",
    "init_log_sigma2",
    "trimmed",
    "comparable",
    "layer_labels",
    "fit",
    "run",
]

NAME = "sparsity"
TITLE = "ARD paper Tables 1–2: Sparse VD vs ARD vs Gamma hyperprior, error and compression"

#: Published numbers: (network, method) -> (error %, compression ×, source and pruning rule).
PAPER: dict[tuple[str, str], tuple[float, float, str]] = {
    ("LeNet-300-100", "Sparse VD"): (1.92, 68, "Molchanov et al. 2017, MNIST, log α > 3"),
    ("LeNet-5", "Sparse VD"): (0.75, 280, "Molchanov et al. 2017, MNIST, log α > 3"),
    ("LeNet-5", "Sparse VD (ARD paper)"): (0.81, 136, "ARD paper Table 1, MNIST, |θ| < 1e-2"),
    ("LeNet-5", "ARD"): (0.76, 132, "ARD paper Table 1, MNIST, |θ| < 1e-2"),
    ("VGG-like", "Gamma a=0.505"): (7.46, 52, "ARD paper Table 2, VGG-like on CIFAR-10"),
    ("VGG-like", "Gamma a=0.51"): (7.65, 85, "ARD paper Table 2, VGG-like on CIFAR-10"),
    ("VGG-like", "Gamma a=0.515"): (7.88, 114, "ARD paper Table 2, VGG-like on CIFAR-10"),
    ("VGG-like", "Gamma a=0.52"): (7.94, 136, "ARD paper Table 2, VGG-like on CIFAR-10"),
}

#: Method names accepted by the network builders.
METHODS = ("Dense", "Sparse VD", "ARD", "Gamma a=<a>")

#: Trimming threshold of the ARD paper (Appendix A).
TRIM = 1e-2

#: The weight-noise modules whose weights are counted through ``theta`` and pruned by log alpha.
_SPARSE = (SparseVariationalDropout, ARDDropout)

#: Two compressions within this factor and errors within ``COMPARABLE_ERROR`` count as
#: "comparable" (the ARD paper's LeNet-5 numbers: 136 ± 8 vs 132 ± 13, 0.81 vs 0.76 %).
COMPARABLE_RATIO = 1.25
COMPARABLE_ERROR = 0.01


def _wrap(method: str, layer: nn.Module) -> nn.Module:
    if method == "Dense":
        return layer
    if method == "Sparse VD":
        return SparseVariationalDropout(layer)
    if method == "ARD":
        return ARDDropout(layer, prior="ard")
    if method.startswith("Gamma a="):
        return ARDDropout(layer, prior="gamma", a=float(method.split("=")[1]), b=1e-8)
    raise ValueError(f"method must be one of {METHODS}, but got {method!r}")


def mlp(method: str, in_features: int, hidden: Sequence[int], classes: int = 10) -> nn.Sequential:
    """``in → hidden... → classes`` with ReLUs, every Linear wrapped by ``method``'s dropout."""
    sizes = [in_features, *hidden, classes]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(_wrap(method, nn.Linear(sizes[i], sizes[i + 1])))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def lenet_300_100(method: str, in_features: int = 784) -> nn.Sequential:
    """LeNet-300-100: ``in → 300 → 100 → 10`` with ReLUs, every Linear wrapped by ``method``."""
    return mlp(method, in_features, (300, 100))


def lenet5(
    method: str,
    image_size: int = 28,
    channels: tuple[int, int] = (20, 50),
    hidden: int = 500,
) -> nn.Sequential:
    """LeNet-5-Caffe: conv 5×5 (20) → max-pool 2 → conv 5×5 (50) → max-pool 2 → 500 → 10.

    Every conv and Linear is wrapped by ``method``. Images smaller than 28 pixels get padding 2
    so the two 5×5 convolutions fit.
    """
    pad = 0 if image_size >= 28 else 2
    convs = nn.Sequential(
        _wrap(method, nn.Conv2d(1, channels[0], 5, padding=pad)),
        nn.ReLU(),
        nn.MaxPool2d(2),
        _wrap(method, nn.Conv2d(channels[0], channels[1], 5, padding=pad)),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = convs.eval()(torch.zeros(1, 1, image_size, image_size)).shape[1]
    return nn.Sequential(
        *convs,
        _wrap(method, nn.Linear(flat, hidden)),
        nn.ReLU(),
        _wrap(method, nn.Linear(hidden, 10)),
    )


@torch.no_grad()
def init_log_sigma2(model: nn.Module, generator: torch.Generator, std: float = 0.2) -> None:
    r"""Appendix A's initialisation :math:`\log\sigma \sim \mathcal N(-5, 0.1^2)`, i.e.
    :math:`\log\sigma^2 \sim \mathcal N(-10, (2 \cdot 0.1)^2)`, for every sparse module."""
    for m in model.modules():
        if isinstance(m, _SPARSE):
            noise = torch.randn(m.log_sigma2.shape, generator=generator)
            m.log_sigma2.copy_((noise * std - 10.0).to(m.log_sigma2))


def _weights(model: nn.Module) -> list[tuple[str, nn.Module, Tensor]]:
    """``(name, module, weight)`` of every counted layer, as :func:`compression_report` counts."""
    out: list[tuple[str, nn.Module, Tensor]] = []
    wrapped = {id(m.layer) for m in model.modules() if isinstance(m, _SPARSE)}
    for name, m in model.named_modules():
        if isinstance(m, _SPARSE):
            out.append((name, m, m.theta))
        elif isinstance(m, (nn.Linear, nn.Conv2d)) and id(m) not in wrapped:
            out.append((name, m, m.weight))
    return out


def layer_labels(model: nn.Module) -> dict[str, str]:
    """Readable names of the counted layers (``"conv 1→20 5×5"``, ``"fc 784→300"``) by module."""
    labels = {}
    for name, _, w in _weights(model):
        if w.dim() == 4:
            labels[name] = f"conv {w.shape[1]}→{w.shape[0]} {w.shape[2]}×{w.shape[3]}"
        else:
            labels[name] = f"fc {w.shape[1]}→{w.shape[0]}"
    return labels


@torch.no_grad()
def trimmed(model: nn.Module, x: Tensor, y: Tensor, cutoff: float = TRIM) -> dict:
    r"""The ARD paper's protocol: deterministic mode with the weights :math:`|\theta| <` ``cutoff``
    set to zero and no :math:`\log\alpha` rule. Returns ``error`` and ``compression`` (total
    weights / non-zero weights after trimming); the model is left unchanged."""
    saved = []
    total = nonzero = 0
    for _, m, w in _weights(model):
        keep = w.abs() >= cutoff
        saved.append((m, w, w.detach().clone(), getattr(m, "threshold", None)))
        w.mul_(keep)
        total += keep.numel()
        nonzero += int(keep.sum())
        if isinstance(m, _SPARSE):
            m.threshold = 10.0  # log alpha is clamped to <= 10: the log-alpha rule keeps all
    try:
        acc = evaluate_classifier(model, x, y)["accuracy"]
    finally:
        for m, w, copy, threshold in saved:
            w.copy_(copy)
            if threshold is not None:
                m.threshold = threshold
    return {"error": 1 - acc, "compression": total / nonzero if nonzero else float("inf")}


def fit(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    cfg: RunConfig,
    *,
    epochs: int,
    desc: str = "train",
    offset: int = 0,
    batch_size: int = 100,
    lr: float = 1e-3,
    tracker: RateTracker | None = None,
) -> dict:
    """Train ``model`` on Appendix A's schedule and measure error and compression both ways.

    Returns ``error``, ``compression`` (:math:`\\log\\alpha > 3`), ``per_layer_sparsity`` and
    ``per_layer_compression`` (by :func:`layer_labels`), ``weights``, ``nonzero``, ``trimmed``
    (:func:`trimmed`), ``epochs`` and ``train_seconds``; with a ``tracker`` (which records the
    drop rates :math:`\alpha/(1+\alpha)` before the first and after every step) also
    ``rate_drift_last_quarter`` (:meth:`bayesdrop.RateTracker.drift`).
    """
    if tracker is not None:
        tracker.record(0)
    t = train(
        model,
        x_train,
        y_train,
        cfg,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        desc=desc,
        offset=offset,
        kl_warmup_epochs=max(epochs / 10, 0.5),
        lr_decay_from=0.5,
        on_step=None if tracker is None else tracker.record,
    )
    ev = evaluate_classifier(model, x_test, y_test)
    rep = compression_report(model)
    labels = layer_labels(model)
    return {
        "error": 1 - ev["accuracy"],
        "compression": rep.ratio,
        "per_layer_sparsity": {labels[layer.name]: layer.sparsity for layer in rep.layers},
        "per_layer_compression": {labels[layer.name]: layer.ratio for layer in rep.layers},
        "weights": rep.weights,
        "nonzero": rep.nonzero,
        "trimmed": trimmed(model, x_test, y_test),
        "epochs": epochs,
        "train_seconds": t["seconds"],
        **({} if tracker is None else {"rate_drift_last_quarter": tracker.drift(SETTLE_FRACTION)}),
    }


def _paper_cell(net: str, method: str) -> str:
    keys = [(net, method)]
    if method == "Sparse VD":
        keys.append((net, "Sparse VD (ARD paper)"))
    if method.startswith("Gamma"):
        keys.append(("VGG-like", method))
    cells = [f"{PAPER[k][0]:.2f}% at {PAPER[k][1]}× ({PAPER[k][2]})" for k in keys if k in PAPER]
    return "; ".join(cells) if cells else "–"


def comparable(a: dict, b: dict) -> bool:
    """Two results (``error``, ``compression``) with compressions within
    :data:`COMPARABLE_RATIO` of each other and errors within :data:`COMPARABLE_ERROR`."""
    ca, cb = a["compression"], b["compression"]
    return (
        max(ca, cb) <= COMPARABLE_RATIO * min(ca, cb)
        and abs(a["error"] - b["error"]) <= COMPARABLE_ERROR
    )


def _network_verdict(net: str, runs: dict[str, dict]) -> str:
    svd, ard = runs.get("Sparse VD"), runs.get("ARD")
    parts = []
    dense = runs.get("Dense")
    n_ep = runs[next(iter(runs))]["epochs"]
    head = f"{net} ({n_ep} epoch{'' if n_ep == 1 else 's'}; the papers train 200)"
    if dense is not None:
        head += f", dense reference {100 * dense['error']:.2f}% error"
    parts.append(head + ":")
    if svd is not None and ard is not None:
        comp = comparable(svd, ard)
        parts.append(
            f"Sparse VD {100 * svd['error']:.2f}% at {svd['compression']:.1f}× and ARD "
            f"{100 * ard['error']:.2f}% at {ard['compression']:.1f}× (log α > 3; "
            f"|θ| < 1e-2 trimming: {svd['trimmed']['compression']:.1f}× vs "
            f"{ard['trimmed']['compression']:.1f}×) are "
            + (
                "comparable, as the ARD paper claims (Table 1)."
                if comp
                else f"not comparable by our criterion (compressions within "
                f"{COMPARABLE_RATIO}×, errors within {100 * COMPARABLE_ERROR:.0f} points)."
            )
        )
        ref = PAPER.get((net, "Sparse VD"))
        if ref is not None:
            epochs = svd["epochs"]
            parts.append(
                f"The published Sparse VD figure is {ref[0]}% at {ref[1]}× on MNIST; our "
                f"compression is {svd['compression'] / ref[1]:.2g} of it after {epochs} "
                f"epoch{'' if epochs == 1 else 's'}"
                + (" (of the paper's 200)." if epochs < 200 else ".")
            )
    gam = sorted((m for m in runs if m.startswith("Gamma")), key=lambda m: float(m[8:]))
    if len(gam) > 1:
        comps = [runs[m]["trimmed"]["compression"] for m in gam]
        errs = [runs[m]["trimmed"]["error"] for m in gam]
        grows = all(a < b for a, b in zip(comps, comps[1:]))
        parts.append(
            "Gamma hyperprior (|θ| < 1e-2 trimming, as in Table 2): "
            + ", ".join(
                f"a={m[8:]} → {100 * e:.2f}% at {c:.1f}×" for m, e, c in zip(gam, errs, comps)
            )
            + f"; compression {'grows' if grows else 'does not grow monotonically'} with a "
            f"({'as' if grows else 'unlike'} Table 2's 52→136× on VGG-like/CIFAR-10), the error "
            f"goes from {100 * errs[0]:.2f}% to {100 * errs[-1]:.2f}% (Table 2: 7.46% to 7.94%), "
            "and the compression stays "
            + (
                "far below the paper's."
                if max(comps) < 0.5 * PAPER[("VGG-like", "Gamma a=0.505")][1]
                else "of the paper's order."
            )
        )
    return " ".join(parts)


def run(cfg: RunConfig) -> Result:
    """Train every (network, method) pair; table, verdict and figure."""
    images = image_split(
        cfg,
        full="fashion-mnist",
        quick="fashion-mnist",
        tiny="digits",
        n_train=cfg.pick(None, None, 300),
        n_test=cfg.pick(None, None, 297),
        flat=False,
    )
    side = int(images.x_train.shape[-1])
    flat_train, flat_test = images.x_train.flatten(1), images.x_test.flatten(1)
    gamma = cfg.pick(
        ("Gamma a=0.505", "Gamma a=0.51", "Gamma a=0.515", "Gamma a=0.52"),
        ("Gamma a=0.505", "Gamma a=0.52"),
        ("Gamma a=0.52",),
    )
    # The full setting is the paper's 200 epochs on a GPU; on a CPU (where one LeNet-5-Caffe
    # epoch takes about half a minute) it trains 30 / 10 epochs and skips the LeNet-5 a-sweep.
    gpu = cfg.device.startswith("cuda")
    lenet5_full = ("Dense", "Sparse VD", "ARD", *gamma) if gpu else ("Dense", "Sparse VD", "ARD")
    runs = [("LeNet-300-100", m) for m in ("Dense", "Sparse VD", "ARD", *gamma)]
    runs += [("LeNet-5", m) for m in cfg.pick(lenet5_full, ("Sparse VD", "ARD"), ("ARD",))]
    epochs = {
        "LeNet-300-100": cfg.pick(200 if gpu else 30, 3, 1, medium=10),
        "LeNet-5": cfg.pick(200 if gpu else 10, 1, 1, medium=3),
    }
    lenet5_size = cfg.pick(((20, 50), 500), ((10, 20), 100), ((4, 8), 16))
    results: dict[str, dict[str, dict]] = {"LeNet-300-100": {}, "LeNet-5": {}}
    trackers: dict[tuple[str, str], RateTracker] = {}
    for k, (net, method) in enumerate(progress(runs, cfg, f"{NAME} runs")):
        torch.manual_seed(cfg.seed)  # the same initialisation for every method (Appendix A)
        if net == "LeNet-300-100":
            model = lenet_300_100(method, flat_train.shape[1])
            xs = flat_train, images.y_train, flat_test, images.y_test
        else:
            model = lenet5(method, side, channels=lenet5_size[0], hidden=lenet5_size[1])
            xs = images.x_train, images.y_train, images.x_test, images.y_test
        init_log_sigma2(model, cfg.generator(17))
        model = model.to(cfg.device)
        if method != "Dense":
            trackers[net, method] = RateTracker(model, seed=cfg.seed)
        results[net][method] = fit(
            model,
            *xs,
            cfg,
            epochs=epochs[net],
            desc=f"{net} {method}",
            offset=k,
            tracker=trackers.get((net, method)),
        )
    table = []
    for net, per_method in results.items():
        for method, r in per_method.items():
            table.append(
                {
                    "network": net,
                    "method": method,
                    "paper": _paper_cell(net, method),
                    "ours": f"{100 * r['error']:.2f}% at {r['compression']:.1f}×",
                    "ours, |θ|<1e-2 trimmed": f"{100 * r['trimmed']['error']:.2f}% at "
                    f"{r['trimmed']['compression']:.1f}×",
                    "per-layer sparsity (log α > 3)": ", ".join(
                        f"{100 * s:.0f}%" for s in r["per_layer_sparsity"].values()
                    ),
                }
            )
    settling = {f"{n} | {m}": rate_settling(t, what=f"{n} {m}") for (n, m), t in trackers.items()}
    rates_settled = rate_settling(
        list(trackers.values()),
        what="per-weight drop rates alpha/(1+alpha) of every sparse run (at most 4096 sampled "
        "per layer)",
    )
    table.append(
        {
            "network": "all",
            "method": "learned rates",
            "paper": "200 epochs",
            "ours": "settled (mean |change| of the per-weight rates over the last quarter < 0.01): "
            + "; ".join(
                f"{k} {'yes' if v['settled'] else 'no'} ({v['max_drift']:.3f})"
                for k, v in settling.items()
            )
            + f" ({cfg.mode} budget)",
        }
    )
    verdict = " ".join(
        _network_verdict(net, per_method) for net, per_method in results.items() if per_method
    )
    verdict += (
        f" The per-weight rates {'settled' if rates_settled['settled'] else 'did not all settle'} "
        f"by the suite's criterion (largest mean |change| over the last quarter of training "
        f"{rates_settled['max_drift']:.3f}, threshold {rates_settled['tol']}; {cfg.mode} budget; "
        "the learning rate decays to zero over the second half, which slows the last quarter)."
    )
    dense = results["LeNet-300-100"].get("Dense")
    if images.name == "fashion-mnist" and dense is not None:
        verdict += (
            f" The stand-in is harder than MNIST (the dense LeNet-300-100 itself errs "
            f"{100 * dense['error']:.2f}% here), so the error columns are not comparable with the "
            "papers' MNIST errors; the compression ratios and the orderings are."
        )
    elif images.name != "fashion-mnist":
        verdict += " Tiny setting: the numbers only show that the code path runs."
    settings = {
        "epochs": epochs,
        "full_setting": "200 epochs and the LeNet-5 a-sweep on a GPU; 30/10 epochs on a CPU",
        "runs": [f"{n} | {m}" for n, m in runs],
        "lenet5_channels_hidden": lenet5_size,
        "batch_size": 100,
        "lr": 1e-3,
        "lr_schedule": "linear decay to 0 over the second half",
        "kl_warmup": "linear over the first 10% of epochs (at least half an epoch)",
        "init_log_sigma2": "N(-10, 0.2^2) (log sigma ~ N(-5, 0.1^2))",
        "gamma": {"b": 1e-8, "max_log_sigma2": -8.0},
        "pruning_rules": {"molchanov": "log alpha > 3", "ard_paper": f"|theta| < {TRIM}"},
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="MNIST (Table 1: LeNet-300-100, LeNet-5); CIFAR-10 with VGG-like (Table 2)",
        stand_in=f"{images.stand_in} for both tables (Table 2's a-sweep on LeNets, not VGG/CIFAR)",
        settings=settings,
        metrics={
            "runs": results,
            "paper": {f"{k[0]} | {k[1]}": v for k, v in PAPER.items()},
            "rates_settled": {"all": rates_settled, **settling},
        },
        table=table,
        verdict=verdict,
        figure=_figure(results, trackers),
        rates=rates_settled,
    )


def _figure(results: dict[str, dict[str, dict]], trackers: dict):  # noqa: ANN202 - a Figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [n for n, r in results.items() if r]
    fig, axes = plt.subplots(1, 2 + len(nets), figsize=(6 * (2 + len(nets)), 4.2))
    ax = axes[0]
    for net in nets:
        for method, r in results[net].items():
            marker = "o" if net == "LeNet-300-100" else "s"
            ax.scatter(r["compression"], 100 * r["error"], marker=marker, label=f"{net} {method}")
    published = [(c, e) for (net, _), (e, c, _) in PAPER.items() if net != "VGG-like"]
    ax.scatter(*zip(*published), marker="*", s=80, color="k", label="published (MNIST)")
    ax.set(
        xscale="log",
        xlabel="compression × (log α > 3)",
        ylabel="test error %",
        title="error vs compression",
    )
    ax.legend(fontsize=6)
    cx = axes[-1]
    for k, ((net, method), tracker) in enumerate(trackers.items()):
        hist = tracker.history
        share = torch.stack([(h > 0.5).double().mean(1) for h in hist.values()], 1).mean(1)
        mean = torch.stack([h.double().mean(1) for h in hist.values()], 1).mean(1)
        line = cx.plot(tracker.steps, mean.tolist(), color=f"C{k}", label=f"{net} {method}: mean p")
        cx.plot(tracker.steps, share.tolist(), ls="--", color=line[0].get_color())
    if trackers:
        last = max(t.steps[-1] for t in trackers.values())
        cx.axvspan(last * (1 - SETTLE_FRACTION), last, color="0.9", zorder=0)
    cx.set(
        xlabel="step (last quarter shaded)",
        ylabel="mean drop rate (solid), share with p > 0.5 (dashed)",
        title="how the per-weight rates moved",
    )
    cx.legend(fontsize=6)
    for bx, net in zip(axes[1:-1], nets):
        methods = [m for m in results[net] if m != "Dense"]
        width = 0.8 / max(len(methods), 1)
        for k, method in enumerate(methods):
            per_layer = results[net][method]["per_layer_sparsity"]
            xs = [i + k * width for i in range(len(per_layer))]
            bx.bar(xs, list(per_layer.values()), width, label=method)
            if k == 0:
                bx.set_xticks(
                    [i + 0.4 - width / 2 for i in range(len(per_layer))],
                    list(per_layer),
                    fontsize=7,
                )
        bx.set(
            ylabel="fraction of weights dropped", title=f"{net}: per-layer sparsity", ylim=(0, 1)
        )
        bx.legend(fontsize=7)
    return fig
