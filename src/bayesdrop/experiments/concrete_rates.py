"""``concrete-rates``: the Concrete dropout replication's §3.2 and Fig. 3 (and Fig. 2).

An MLP with three hidden ReLU layers has :class:`~bayesdrop.nn.ConcreteDropout` on the inputs of
each of its four Linear layers (one learned rate per layer) and is trained through
:func:`bayesdrop.objective` on growing fractions of the training set, the regulariser divided by
the size of the subset actually used (:math:`N`). The paper's claim: the converged dropout
probability of every layer falls as the amount of data grows (the prior matters less), and
shallower layers converge to smaller rates. Every run takes the same number of optimisation
steps, so the fractions differ only in the data seen.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import ConcreteDropout
from ._common import evaluate_classifier, image_split, train
from ._framework import Result, RunConfig, progress

__all__ = ["NAME", "TITLE", "build", "run"]

NAME = "concrete-rates"
TITLE = "Concrete dropout replication §3.2 / Fig. 3: converged rate per layer vs training-set size"

INIT_P = 0.1


def build(in_features: int, hidden: int, classes: int = 10) -> nn.Sequential:
    """``in → hidden ×3 → classes``, ReLU, Concrete dropout on the inputs of every Linear."""
    sizes = [in_features, hidden, hidden, hidden, classes]
    layers: list[nn.Module] = []
    for i in range(4):
        layers.append(ConcreteDropout(nn.Linear(sizes[i], sizes[i + 1]), init_p=INIT_P))
        if i < 3:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _rates(model: nn.Module) -> list[float]:
    return [m.p.item() for m in model.modules() if isinstance(m, ConcreteDropout)]


def run(cfg: RunConfig) -> Result:
    data = image_split(cfg, n_train=cfg.pick(None, None, 800), n_test=cfg.pick(None, 1000, 297))
    hidden = cfg.pick(512, 256, 32)
    fractions = cfg.pick((1 / 64, 1 / 16, 1 / 4, 1.0), (0.05, 0.15, 0.4, 1.0), (0.25, 1.0))
    steps = cfg.pick(6000, 700, 20)
    batch_size = 64
    n_all = len(data.y_train)
    perm = torch.randperm(n_all, generator=cfg.generator(3)).to(data.x_train.device)
    results: dict[str, dict] = {}
    for k, frac in enumerate(progress(fractions, cfg, f"{NAME} fractions")):
        n = max(batch_size, int(round(frac * n_all)))
        idx = perm[:n]
        torch.manual_seed(cfg.seed)
        model = build(data.in_features, hidden).to(cfg.device)
        trace: list[list[float]] = [_rates(model)]
        epochs = math.ceil(steps / math.ceil(n / batch_size))
        t = train(
            model,
            data.x_train[idx],
            data.y_train[idx],
            cfg,
            epochs=epochs,
            batch_size=batch_size,
            lr=1e-3,
            rate_lr=5e-2,
            desc=f"fraction {frac:.3g}",
            offset=k,
            max_steps=steps,
            on_epoch=lambda _e, m=model, tr=trace: tr.append(_rates(m)),
        )
        ev = evaluate_classifier(model, data.x_test, data.y_test)
        results[f"{frac:.4g}"] = {
            "fraction": frac,
            "n_train": n,
            "rates": _rates(model),
            "rate_trace_per_epoch": trace,
            "test_accuracy": ev["accuracy"],
            "steps": t["steps"],
        }
    keys = list(results)
    small, large = results[keys[0]], results[keys[-1]]
    falls = [a > b for a, b in zip(small["rates"], large["rates"])]
    monotone = [
        all(
            results[a]["rates"][layer] >= results[b]["rates"][layer] for a, b in zip(keys, keys[1:])
        )
        for layer in range(4)
    ]
    shallow_smaller = large["rates"][0] <= min(large["rates"][1:])
    table = [
        {
            "quantity": f"converged rates (layer 1–4), {100 * r['fraction']:.3g}% of data "
            f"(N = {r['n_train']})",
            "paper": "falls as N grows (Fig. 3)",
            "ours": " / ".join(f"{p:.3f}" for p in r["rates"]),
            "test accuracy": f"{100 * r['test_accuracy']:.2f}%",
        }
        for r in results.values()
    ]
    table.append(
        {
            "quantity": "layers whose rate falls from the smallest to the full set",
            "paper": "all",
            "ours": f"{sum(falls)} of 4 (monotone in {sum(monotone)} of 4)",
        }
    )
    table.append(
        {
            "quantity": "input layer has the smallest rate (full set)",
            "paper": "yes (shallower layers smaller)",
            "ours": "yes" if shallow_smaller else "no",
        }
    )
    reproduced = all(falls)
    verdict = (
        f"{'Reproduced' if reproduced else 'Not reproduced'}: from {small['n_train']} to "
        f"{large['n_train']} training images the rates go "
        + ", ".join(f"{a:.3f}→{b:.3f}" for a, b in zip(small["rates"], large["rates"]))
        + f" (layers 1–4): {sum(falls)} of 4 fall (monotone over all fractions in "
        f"{sum(monotone)}); the input layer's rate is "
        f"{'the smallest' if shallow_smaller else 'not the smallest'} on the full set."
    )
    settings = {
        "architecture": f"{data.in_features}-{hidden}-{hidden}-{hidden}-10, ConcreteDropout on "
        "the inputs of each Linear (one rate per layer)",
        "init_p": INIT_P,
        "temperature": 0.1,
        "regularizers": "library defaults: weight 0.5, dropout 1.0 (length-scale 1), / N",
        "fractions": fractions,
        "steps_per_run": steps,
        "batch_size": batch_size,
        "lr": 1e-3,
        "rate_lr": 5e-2,
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="MNIST (60k), MLP 3×512, 100 epochs",
        stand_in=data.stand_in,
        settings=settings,
        metrics={"fractions": results, "falls": falls, "monotone": monotone},
        table=table,
        verdict=verdict,
        figure=_figure(results),
    )


def _figure(results):  # noqa: ANN001, ANN202 - plotting only
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    ns = [r["n_train"] for r in results.values()]
    for layer in range(4):
        ax.plot(
            ns,
            [r["rates"][layer] for r in results.values()],
            marker="o",
            label=f"layer {layer + 1}",
        )
    ax.set(
        xscale="log",
        xlabel="training images N",
        ylabel="converged drop rate",
        title="Fig. 3: rate vs training-set size",
    )
    ax.legend(fontsize=8)
    full = list(results.values())[-1]["rate_trace_per_epoch"]
    for layer in range(4):
        bx.plot([t[layer] for t in full], label=f"layer {layer + 1}")
    bx.set(xlabel="epoch", ylabel="drop rate", title="Fig. 2: rates during training (full set)")
    bx.legend(fontsize=8)
    return fig
