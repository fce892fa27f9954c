r"""``sparsity``: the ARD paper's Tables 1–2 (Kharitonov, Molchanov & Vetrov 2018) at small scale.

Sparse variational dropout (:class:`~bayesdrop.nn.SparseVariationalDropout`, log-uniform prior),
ARD dropout (:class:`~bayesdrop.nn.ARDDropout`, eq. 3) and ARD with a Gamma(a, b = 1e-8)
hyperprior (MAP-II, §4) are trained on every weight of LeNet-300-100 and a LeNet-5-Caffe-style
network through :func:`bayesdrop.objective`, following Appendix A: additive parameterisation with
:math:`\log\sigma^2` initialised at :math:`-10` (the paper's :math:`\log\sigma \sim \mathcal
N(-5, 0.1^2)`), Adam with learning rate :math:`10^{-3}` and minibatches of 100, the regulariser
annealed in over the first part of training and the learning rate decayed linearly to zero over
the second half; the Gamma runs clip :math:`\log\sigma^2 \le -8`. The networks are evaluated in
deterministic mode: eval mode uses :math:`\theta` and drops the weights with
:math:`\log\alpha > 3` (Molchanov et al. 2017), counted by
:func:`bayesdrop.sparsity.compression_report`; the ARD paper's own trimming
(:math:`|\theta| < 10^{-2}` set to zero) is reported beside it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import ARDDropout, SparseVariationalDropout
from ..nn._additive import AdditiveGaussianDropout
from ..sparsity import compression_report
from ._common import evaluate_classifier, image_split, train
from ._framework import Result, RunConfig, progress

__all__ = ["NAME", "TITLE", "lenet_300_100", "lenet5", "trimmed", "run"]

NAME = "sparsity"
TITLE = "ARD paper Tables 1–2: Sparse VD vs ARD vs Gamma hyperprior, error and compression"

#: Published numbers: (network, method) -> (error %, compression ×, source).
PAPER = {
    ("LeNet-300-100", "Sparse VD"): (1.92, 68, "Molchanov et al. 2017, MNIST"),
    ("LeNet-5", "Sparse VD"): (0.75, 280, "Molchanov et al. 2017, MNIST"),
    ("LeNet-5", "Sparse VD (ARD paper)"): (0.81, 136, "ARD paper Table 1, MNIST"),
    ("LeNet-5", "ARD"): (0.76, 132, "ARD paper Table 1, MNIST"),
    ("VGG-like", "Gamma a=0.505"): (7.46, 52, "ARD paper Table 2, CIFAR-10"),
    ("VGG-like", "Gamma a=0.51"): (7.65, 85, "ARD paper Table 2, CIFAR-10"),
    ("VGG-like", "Gamma a=0.515"): (7.88, 114, "ARD paper Table 2, CIFAR-10"),
    ("VGG-like", "Gamma a=0.52"): (7.94, 136, "ARD paper Table 2, CIFAR-10"),
}


def _wrap(method: str, layer: nn.Module) -> nn.Module:
    if method == "Sparse VD":
        return SparseVariationalDropout(layer)
    if method == "ARD":
        return ARDDropout(layer, prior="ard")
    if method.startswith("Gamma a="):
        return ARDDropout(layer, prior="gamma", a=float(method.split("=")[1]), b=1e-8)
    raise ValueError(f"unknown method {method!r}")


def lenet_300_100(method: str, in_features: int = 784) -> nn.Sequential:
    """``in → 300 → 100 → 10`` with ReLUs, every Linear wrapped by ``method``'s sparse dropout."""
    sizes = [in_features, 300, 100, 10]
    layers: list[nn.Module] = []
    for i in range(3):
        layers.append(_wrap(method, nn.Linear(sizes[i], sizes[i + 1])))
        if i < 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def lenet5(
    method: str,
    image_size: int = 28,
    channels: tuple[int, int] = (20, 50),
    hidden: int = 500,
) -> nn.Sequential:
    """LeNet-5-Caffe: conv 5×5 (20) → max-pool 2 → conv 5×5 (50) → max-pool 2 → 500 → 10.

    Images smaller than 28 pixels get padding 2 so the two 5×5 convolutions fit.
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
def trimmed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cutoff: float = 1e-2) -> dict:
    """The ARD paper's protocol: error and compression with :math:`|\\theta| <` ``cutoff`` set
    to zero (no :math:`\\log\\alpha` rule); the model's weights are restored afterwards."""
    modules = [m for m in model.modules() if isinstance(m, AdditiveGaussianDropout)]
    saved = [m.theta.detach().clone() for m in modules]
    masks = [m.weight_mask.clone() for m in modules]
    total = nonzero = 0
    for m in modules:
        keep = m.theta.abs() >= cutoff
        m.theta.mul_(keep)
        total += keep.numel()
        nonzero += int(keep.sum())
        m.weight_mask.fill_(True)
        m.threshold_backup = m.threshold  # type: ignore[attr-defined]
        m.threshold = 10.0  # no log-alpha pruning: the trimming is the only rule
    acc = evaluate_classifier(model, x, y)["accuracy"]
    for m, w, mask in zip(modules, saved, masks):
        m.theta.copy_(w)
        m.weight_mask.copy_(mask)
        m.threshold = m.threshold_backup  # type: ignore[attr-defined]
        del m.threshold_backup  # type: ignore[attr-defined]
    return {"error": 1 - acc, "compression": total / max(nonzero, 1)}


def run(cfg: RunConfig) -> Result:
    flat = image_split(cfg, n_train=cfg.pick(None, None, 300), n_test=cfg.pick(None, 1000, 297))
    images = image_split(
        cfg, n_train=cfg.pick(None, None, 300), n_test=cfg.pick(None, 1000, 297), flat=False
    )
    side = images.x_train.shape[-1]
    gamma = cfg.pick(
        ("Gamma a=0.505", "Gamma a=0.51", "Gamma a=0.515", "Gamma a=0.52"),
        ("Gamma a=0.505", "Gamma a=0.52"),
        ("Gamma a=0.52",),
    )
    runs = [("LeNet-300-100", m) for m in ("Sparse VD", "ARD", *gamma)]
    runs += [
        ("LeNet-5", m)
        for m in cfg.pick(("Sparse VD", "ARD", *gamma), ("Sparse VD", "ARD"), ("ARD",))
    ]
    epochs = {"LeNet-300-100": cfg.pick(200, 12, 1), "LeNet-5": cfg.pick(200, 3, 1)}
    lenet5_size = cfg.pick(((20, 50), 500), ((10, 20), 100), ((4, 8), 16))
    results: dict[str, dict] = {}
    for k, (net, method) in enumerate(progress(runs, cfg, f"{NAME} runs")):
        torch.manual_seed(cfg.seed)  # the same initialisation for every method (Appendix A)
        if net == "LeNet-300-100":
            model, data = lenet_300_100(method, flat.in_features), flat
        else:
            model = lenet5(method, side, channels=lenet5_size[0], hidden=lenet5_size[1])
            data = images
        model = model.to(cfg.device)
        ep = epochs[net]
        t = train(
            model,
            data.x_train,
            data.y_train,
            cfg,
            epochs=ep,
            batch_size=100,
            lr=1e-3,
            desc=f"{net} {method}",
            offset=k,
            kl_warmup_epochs=max(ep / 10, 0.5),
            lr_decay_from=0.5,
        )
        ev = evaluate_classifier(model, data.x_test, data.y_test)
        rep = compression_report(model)
        results[f"{net} | {method}"] = {
            "network": net,
            "method": method,
            "error": 1 - ev["accuracy"],
            "compression": rep.ratio,
            "per_layer_sparsity": {layer.name: layer.sparsity for layer in rep.layers},
            "per_layer_compression": {layer.name: layer.ratio for layer in rep.layers},
            "weights": rep.weights,
            "nonzero": rep.nonzero,
            "trimmed_abs_theta_1e-2": trimmed(model, data.x_test, data.y_test),
            "epochs": ep,
            "train_seconds": t["seconds"],
        }
    table = []
    for key, r in results.items():
        paper = PAPER.get((r["network"], r["method"]))
        if paper is None and r["method"].startswith("Gamma"):
            paper = PAPER.get(("VGG-like", r["method"]))
        layers = ", ".join(f"{100 * s:.0f}%" for s in r["per_layer_sparsity"].values())
        table.append(
            {
                "network | method": key,
                "quantity": "error % | compression ×",
                "paper": f"{paper[0]:.2f} | {paper[1]} ({paper[2]})" if paper else "–",
                "ours": f"{100 * r['error']:.2f} | {r['compression']:.1f}",
                "per-layer sparsity": layers,
                "|θ|<1e-2 trimming: error % | ×": f"{100 * r['trimmed_abs_theta_1e-2']['error']:.2f}"
                f" | {r['trimmed_abs_theta_1e-2']['compression']:.1f}",
            }
        )
    lp = [r for r in results.values() if r["network"] == "LeNet-300-100"]
    svd = next(r for r in lp if r["method"] == "Sparse VD")
    ard = next(r for r in lp if r["method"] == "ARD")
    gam = sorted((r for r in lp if r["method"].startswith("Gamma")), key=lambda r: r["method"])
    comparable = (
        abs(svd["compression"] - ard["compression"])
        <= 0.25 * max(svd["compression"], ard["compression"])
        and abs(svd["error"] - ard["error"]) <= 0.01
    )
    gamma_monotone = (
        all(a["compression"] < b["compression"] for a, b in zip(gam, gam[1:]))
        if len(gam) > 1
        else False
    )
    sparse = max(svd["compression"], ard["compression"]) > 10
    verdict = (
        f"LeNet-300-100 after {epochs['LeNet-300-100']} epochs (the papers train 200): Sparse VD "
        f"{100 * svd['error']:.2f}% error at {svd['compression']:.1f}× (paper 1.92% at 68×), ARD "
        f"{100 * ard['error']:.2f}% at {ard['compression']:.1f}×; the two are "
        f"{'comparable, as the ARD paper claims' if comparable else 'not comparable here'}"
        f"{'' if sparse else ', and neither is yet strongly sparse'}. Gamma hyperprior: "
        + ", ".join(
            f"{r['method'][6:]} → {100 * r['error']:.2f}% at {r['compression']:.1f}×" for r in gam
        )
        + (
            f"; compression {'grows' if gamma_monotone else 'does not grow'} with a "
            f"({'as in' if gamma_monotone else 'unlike'} Table 2)."
            if len(gam) > 1
            else "."
        )
    )
    settings = {
        "epochs": epochs,
        "runs": [f"{n} | {m}" for n, m in runs],
        "lenet5_channels_hidden": lenet5_size,
        "batch_size": 100,
        "lr": 1e-3,
        "lr_schedule": "linear decay to 0 over the second half",
        "kl_warmup": "linear over the first 10% of epochs (at least half an epoch)",
        "init_log_sigma2": -10.0,
        "pruning_rule": "log alpha > 3 (eval mode); also |theta| < 1e-2 trimming",
        "gamma_b": 1e-8,
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="MNIST (LeNet-300-100, LeNet-5); CIFAR-10 (Table 2)",
        stand_in=f"{flat.stand_in} (Table 2's a-sweep also on it, not on CIFAR-10)",
        settings=settings,
        metrics={"runs": results, "paper": {f"{k[0]} | {k[1]}": v for k, v in PAPER.items()}},
        table=table,
        verdict=verdict,
        figure=_figure(results),
    )


def _figure(results):  # noqa: ANN001, ANN202 - plotting only
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    for key, r in results.items():
        ax.scatter(r["compression"], 100 * r["error"], label=key)
    ax.set(
        xscale="log",
        xlabel="compression × (log α > 3)",
        ylabel="test error %",
        title="error vs compression",
    )
    ax.legend(fontsize=7)
    keys = list(results)
    width = 0.8 / max(len(keys), 1)
    for k, key in enumerate(keys):
        vals = list(results[key]["per_layer_sparsity"].values())
        bx.bar([i + k * width for i in range(len(vals))], vals, width, label=key)
    bx.set(xlabel="layer", ylabel="fraction of weights dropped", title="per-layer sparsity")
    return fig
