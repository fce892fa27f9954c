r"""``estimator-variance``: Kingma, Salimans & Welling (2015), Table 1.

An MLP with three hidden ReLU layers is trained with variational dropout with independent weight
noise (:class:`bayesdrop.nn.VariationalDropout` ``kind="B"``, one :math:`\alpha \le 1` per layer,
local reparameterisation, through :func:`bayesdrop.objective`) for a short and a longer time.
At each checkpoint the SGVB gradient of the expected log likelihood,
:math:`\frac NM\sum_{i=1}^M \nabla_\theta \log p(y_i\mid x_i, w)` (eq. 3), with respect to the
weight means :math:`\theta` of the top and the bottom layer is estimated on ``repeats`` random
minibatches of :math:`M` examples (drawn with replacement, the same minibatches for every
estimator) by the four estimators of :mod:`bayesdrop.experiments._weight_noise`; the empirical
variance per weight, averaged over the layer's weights, is Table 1's number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import VariationalDropout
from ._common import evaluate_classifier, image_split, train
from ._framework import Result, RunConfig, progress
from ._weight_noise import MODES, WeightNoiseLinear

__all__ = ["NAME", "TITLE", "PAPER", "mlp", "gradient_variance", "run"]

NAME = "estimator-variance"
TITLE = (
    "Kingma et al. 2015, Table 1: variance of minibatch gradient estimators "
    "(local reparameterisation vs weight samples)"
)

#: Table 1 of the paper: estimator -> (top 10 ep, top 100 ep, bottom 10 ep, bottom 100 ep).
PAPER = {
    "lrt": (7.8e3, 1.2e3, 1.9e2, 1.1e2),
    "per-example": (1.4e4, 2.6e3, 4.3e2, 2.5e2),
    "per-batch": (4.9e4, 4.3e3, 8.5e2, 3.3e2),
    "none": (2.8e3, 5.9e1, 1.3e2, 9.0e0),
}
LABELS = {
    "lrt": "local reparameterization",
    "per-example": "weight sample per data point",
    "per-batch": "weight sample per minibatch",
    "none": "no dropout noise",
}
INIT_P = (0.2, 0.5, 0.5, 0.5)  # input layer, then the hidden layers (the paper's dropout rates)


def mlp(in_features: int, hidden: int, classes: int = 10) -> nn.Sequential:
    """``in → hidden → hidden → hidden → classes`` with ReLUs, each Linear wrapped in
    :class:`~bayesdrop.nn.VariationalDropout` (type B, one α per layer, α ≤ 1)."""
    sizes = [in_features, hidden, hidden, hidden, classes]
    layers: list[nn.Module] = []
    for i, p in enumerate(INIT_P):
        layer = nn.Linear(sizes[i], sizes[i + 1])
        layers.append(VariationalDropout(layer, kind="B", granularity="layer", init_p=p))
        if i < len(INIT_P) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _noise_net(model: nn.Sequential, mode: str, generator: torch.Generator | None) -> nn.Sequential:
    """The same weights and α's, sampled by ``mode`` (weights are shared, not copied)."""
    layers: list[nn.Module] = []
    for m in model:
        if isinstance(m, VariationalDropout):
            w = WeightNoiseLinear(m.layer, mode=mode, generator=generator)  # type: ignore[arg-type]
            with torch.no_grad():
                w.log_alpha.copy_(torch.logit(m.p.double()).float().reshape(1))
            layers.append(w)
        else:
            layers.append(m)
    return nn.Sequential(*layers).train()


def gradient_variance(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    repeats: int,
    generator: torch.Generator,
    chunk: int = 100,
    progress_fn=None,  # noqa: ANN001 - a wrapper around an iterable
) -> dict[str, dict[str, float]]:
    """Average per-weight variance of the minibatch gradient of :math:`\\frac NM\\sum\\log p`
    w.r.t. the top and bottom weight means, for every estimator in :data:`MODES`.

    The minibatches (with replacement) are shared by the estimators; per-example noise is
    computed ``chunk`` examples at a time (gradients accumulated).
    """
    n = len(y)
    bottom = model[0].layer.weight
    top = model[-1].layer.weight
    device = x.device
    noise_gen = (
        generator
        if device.type == "cpu"
        else torch.Generator(device).manual_seed(
            int(torch.randint(2**62, (1,), generator=generator))
        )
    )
    nets = {mode: _noise_net(model, mode, noise_gen) for mode in MODES}
    sums = {m: [torch.zeros_like(w, dtype=torch.float64) for w in (top, bottom)] for m in MODES}
    squares = {m: [torch.zeros_like(w, dtype=torch.float64) for w in (top, bottom)] for m in MODES}
    iterator = range(repeats) if progress_fn is None else progress_fn(range(repeats))
    for _ in iterator:
        idx = torch.randint(n, (batch_size,), generator=generator).to(device)
        xb, yb = x[idx], y[idx]
        for mode, net in nets.items():
            top.grad = bottom.grad = None
            # per-batch: one forward over the whole minibatch, i.e. one weight sample per layer.
            step = batch_size if mode == "per-batch" else chunk
            for i in range(0, batch_size, step):
                logits = net(xb[i : i + step])
                loss = F.cross_entropy(logits, yb[i : i + step], reduction="sum") * (n / batch_size)
                loss.backward()
            for k, w in enumerate((top, bottom)):
                g = w.grad.detach().double()
                sums[mode][k] += g
                squares[mode][k] += g * g
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        var = [
            ((q - s * s / repeats) / (repeats - 1)).mean().item()
            for s, q in zip(sums[mode], squares[mode])
        ]
        out[mode] = {"top": var[0], "bottom": var[1]}
    for p in model.parameters():
        p.grad = None
    return out


def run(cfg: RunConfig) -> Result:
    """Train, measure at the short and long checkpoints, compare the ordering with Table 1."""
    torch.manual_seed(cfg.seed)
    data = image_split(cfg, n_train=cfg.pick(None, None, 300), n_test=cfg.pick(None, 1000, 297))
    hidden = cfg.pick(512, 128, 16)
    epochs = cfg.pick((10, 100), (2, 20), (1, 2))
    batch_size = cfg.pick(1000, 500, 100)
    repeats = cfg.pick(50, 16, 3)
    chunk = cfg.pick(50, 100, 100)
    model = mlp(data.in_features, hidden).to(cfg.device)
    gen = cfg.generator(7)
    results: dict[str, dict] = {}
    done = 0
    for k, target in enumerate(epochs):
        train(
            model,
            data.x_train,
            data.y_train,
            cfg,
            epochs=target - done,
            batch_size=100,
            lr=1e-3,
            desc=f"{NAME} train to {target} ep",
            offset=k,
        )
        done = target
        acc = evaluate_classifier(model, data.x_test, data.y_test)
        var = gradient_variance(
            model,
            data.x_train,
            data.y_train,
            batch_size=batch_size,
            repeats=repeats,
            generator=gen,
            chunk=chunk,
            progress_fn=lambda it, t=target: progress(it, cfg, f"{NAME} variance @ {t} ep"),
        )
        results[f"{target}"] = {
            "variance": var,
            "test_error": 1 - acc["accuracy"],
            "p": [m.p.item() for m in model if isinstance(m, VariationalDropout)],
        }

    short, long = (str(e) for e in epochs)
    columns = [("top", short), ("top", long), ("bottom", short), ("bottom", long)]
    ordering_ok = []
    table = []
    for mode in MODES:
        for c, (layer, ep) in enumerate(columns):
            ours = results[ep]["variance"][mode][layer]
            lrt = results[ep]["variance"]["lrt"][layer]
            paper_lrt = PAPER["lrt"][c]
            table.append(
                {
                    "quantity": f"{LABELS[mode]}, {layer} layer, {'10' if ep == short else '100'} "
                    f"ep (ours {ep} ep)",
                    "paper": f"{PAPER[mode][c]:.2g}",
                    "ours": f"{ours:.3g}",
                    "paper / LRT": f"{PAPER[mode][c] / paper_lrt:.2f}",
                    "ours / LRT": f"{ours / lrt:.2f}",
                }
            )
    for layer, ep in columns:
        v = results[ep]["variance"]
        ordering_ok.append(
            v["none"][layer] < v["lrt"][layer] < v["per-example"][layer] < v["per-batch"][layer]
        )
    lrt_vs_example = [
        results[ep]["variance"]["lrt"][layer] / results[ep]["variance"]["per-example"][layer]
        for layer, ep in columns
    ]
    paper_ratio = [PAPER["lrt"][c] / PAPER["per-example"][c] for c in range(4)]
    n_ok = sum(ordering_ok)
    table.append(
        {
            "quantity": "columns ordered none < LRT < per data point < per minibatch",
            "paper": "4 of 4",
            "ours": f"{n_ok} of 4",
        }
    )
    table.append(
        {
            "quantity": "variance LRT / per data point (mean over columns)",
            "paper": f"{sum(paper_ratio) / 4:.2f}",
            "ours": f"{sum(lrt_vs_example) / 4:.2f}",
        }
    )
    for ep in (short, long):
        table.append(
            {
                "quantity": f"test error after {ep} epochs",
                "paper": "3% (10 ep) / 1.3% (100 ep)",
                "ours": f"{results[ep]['test_error']:.2%}",
            }
        )
    verdict = (
        f"{'Reproduced' if n_ok == 4 else 'Partly reproduced' if n_ok else 'Not reproduced'}: "
        f"the paper's ordering (no noise < local reparameterisation < weight sample per data point "
        f"< per minibatch) holds in {n_ok} of the 4 layer/checkpoint columns; local "
        f"reparameterisation has {sum(lrt_vs_example) / 4:.2f}× the variance of per-data-point "
        f"sampling on average (paper {sum(paper_ratio) / 4:.2f}×)."
    )
    settings = {
        "hidden": hidden,
        "layers": "in-H-H-H-10, ReLU, VariationalDropout type B per Linear (one alpha per layer)",
        "init_p": INIT_P,
        "epochs": epochs,
        "train_batch_size": 100,
        "lr": 1e-3,
        "gradient_minibatch": batch_size,
        "repeats": repeats,
        "gradient_scale": "N/M * sum of log-likelihoods (eq. 3), w.r.t. weight means",
        "n_train": len(data.y_train),
    }
    metrics = {
        "checkpoints": results,
        "paper": PAPER,
        "ordering_ok": ordering_ok,
        "lrt_over_per_example": lrt_vs_example,
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="MNIST (60k train)",
        stand_in=data.stand_in,
        settings=settings,
        metrics=metrics,
        table=table,
        verdict=verdict,
        figure=_figure(results, columns),
    )


def _figure(results, columns):  # noqa: ANN001, ANN202 - plotting only
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.2
    for ax, source in zip(axes, ("paper", "ours")):
        for k, mode in enumerate(MODES):
            if source == "paper":
                vals = PAPER[mode]
            else:
                vals = [results[ep]["variance"][mode][layer] for layer, ep in columns]
            xs = [c + (k - 1.5) * width for c in range(4)]
            ax.bar(xs, vals, width, label=LABELS[mode])
        ax.set_yscale("log")
        ax.set_xticks(range(4))
        names = (
            ["top 10", "top 100", "bottom 10", "bottom 100"]
            if source == "paper"
            else [f"{layer} {ep}" for layer, ep in columns]
        )
        ax.set_xticklabels([f"{n} ep" for n in names])
        ax.set_title(f"{source}: mean gradient variance")
    axes[0].legend(fontsize=8)
    fig.subplots_adjust(wspace=0.25)
    return fig
