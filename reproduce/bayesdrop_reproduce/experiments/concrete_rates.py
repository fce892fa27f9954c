r"""``concrete-rates``: the Concrete dropout replication's §3.2 and Fig. 3 (and Fig. 2).

An MLP with three hidden ReLU layers has :class:`~bayesdrop.nn.ConcreteDropout` on the inputs of
each of its four Linear layers (one learned rate per layer) and is trained through
:func:`bayesdrop.objective`,

.. math::
    \mathcal L = \frac1B\sum_{i\in\text{batch}} \mathrm{nll}_i + \frac1N \sum_{l=1}^{4}
    \Bigl(\lambda_w \frac{\|W_l\|^2}{1-p_l} - \lambda_d K_l\,H(p_l)\Bigr),

on growing fractions of the training set, :math:`N` being the size of the subset actually used.
The regulariser's pull towards :math:`p = 1/2` (the entropy) weakens as :math:`1/N`, so the paper
claims that the converged drop probability of every layer falls as the amount of data grows, and
that shallower layers converge to smaller rates. Every run takes the same number of optimisation
steps from the same initialisation, so the fractions differ only in the data seen. The
"converged" rate of a layer is the mean of its rate over the last quarter of the steps (Adam
keeps the rates jittering around their fixed point; the last value alone is noisier); the final
value, the spread over that tail and its change from the quarter before (has it settled?) are
recorded beside it. A :class:`bayesdrop.RateTracker` records every step's rates; the report states
whether they settled by the suite's criterion (the mean absolute change of each layer's rate over
the last quarter of the steps below 0.01), and the ``medium`` budget trains longer so that they do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bayesdrop import RateTracker
from bayesdrop.nn import ConcreteDropout

from ._common import evaluate_classifier, image_split, train
from ._framework import SETTLE_FRACTION, Result, RunConfig, progress, rate_settling

__all__ = ["NAME", "TITLE", "INIT_P", "TAIL", "build", "layer_rates", "rates_vs_size", "run"]

NAME = "concrete-rates"
TITLE = "Concrete dropout replication §3.2 / Fig. 3: converged rate per layer vs training-set size"

#: Initial drop probability of every layer.
INIT_P = 0.1
#: Fraction of the steps at the end of a run over which the rates are averaged.
TAIL = 0.25
#: Adam learning rates of the weights and of the rate logits.
LR, RATE_LR = 1e-3, 1e-2
BATCH_SIZE = 64
#: A rate that moves by more than this between the two halves of the averaging window is
#: reported as not yet settled.
DRIFT_TOL = 0.02


def build(in_features: int, hidden: int, classes: int = 10) -> nn.Sequential:
    """``in → hidden ×3 → classes``, ReLU, Concrete dropout on the inputs of every Linear."""
    sizes = [in_features, hidden, hidden, hidden, classes]
    layers: list[nn.Module] = []
    for i in range(4):
        layers.append(ConcreteDropout(nn.Linear(sizes[i], sizes[i + 1]), init_p=INIT_P))
        if i < 3:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def layer_rates(model: nn.Module) -> list[float]:
    """The drop probability of every :class:`ConcreteDropout` in ``model``, in module order."""
    return [float(m.p.item()) for m in model.modules() if isinstance(m, ConcreteDropout)]


def rates_vs_size(
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    fractions: Sequence[float],
    cfg: RunConfig,
    *,
    hidden: int,
    steps: int,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    rate_lr: float = RATE_LR,
) -> dict[str, dict]:
    """Train :func:`build` on the first ``fraction`` of a seeded permutation of ``(x, y)``.

    Every fraction gets ``steps`` Adam steps from the same initialisation (seed ``cfg.seed``),
    with the regulariser divided by the subset's size. Returns, per fraction (keyed by
    ``f"{fraction:.4g}"``): ``n_train``, ``rates`` (mean over the last :data:`TAIL` of the steps),
    ``rates_tail_std``, ``rates_drift`` (tail mean minus the mean over the quarter before),
    ``rates_final``, ``rate_trace`` (per step, thinned to at most 200 points,
    with ``trace_steps``), ``test_accuracy``, ``steps`` and ``tracker_drift`` (the mean
    absolute change of each layer's rate over the last quarter of the steps,
    :meth:`bayesdrop.RateTracker.drift`; the tracker itself is under the key ``"tracker"``).

    Raises:
        ValueError: a fraction outside (0, 1], or ``steps < 1``.
    """
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {f}")
    if steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps}")
    n_all = len(y)
    perm = torch.randperm(n_all, generator=cfg.generator(3)).to(x.device)
    tail_len = max(1, int(round(TAIL * steps)))
    keep_from = steps - 2 * tail_len  # the tail and the window of the same length before it
    stride = max(1, steps // 200)
    results: dict[str, dict] = {}
    for k, frac in enumerate(progress(fractions, cfg, f"{NAME} fractions")):
        n = min(n_all, max(batch_size, int(round(frac * n_all))))
        idx = perm[:n]
        torch.manual_seed(cfg.seed)  # the same initialisation for every fraction
        model = build(x[0].numel(), hidden).to(x.device)
        trace: list[list[float]] = [layer_rates(model)]
        trace_steps = [0]
        recent: list[list[float]] = []
        tracker = RateTracker(model)
        tracker.record(0)

        def on_step(
            step: int,
            model: nn.Module = model,
            recent: list = recent,
            trace: list = trace,
            trace_steps: list = trace_steps,
            tracker: RateTracker = tracker,
        ) -> None:
            tracker.record(step)
            if step > keep_from or step % stride == 0:
                rates = layer_rates(model)
                if step > keep_from:
                    recent.append(rates)
                if step % stride == 0:
                    trace.append(rates)
                    trace_steps.append(step)

        t = train(
            model,
            x[idx],
            y[idx],
            cfg,
            epochs=math.ceil(steps / math.ceil(n / batch_size)),
            batch_size=batch_size,
            lr=lr,
            rate_lr=rate_lr,
            desc=f"fraction {frac:.3g}",
            offset=k,
            max_steps=steps,
            on_step=on_step,
            lr_decay_from=cfg.decay_from,
        )
        recent_t = torch.tensor(recent, dtype=torch.float64)
        tail_t, before_t = recent_t[-tail_len:], recent_t[:-tail_len]
        ev = evaluate_classifier(model, x_test, y_test)
        results[f"{frac:.4g}"] = {
            "fraction": frac,
            "n_train": n,
            "rates": tail_t.mean(0).tolist(),
            "rates_tail_std": tail_t.std(0).tolist() if len(tail_t) > 1 else [0.0] * len(tail_t[0]),
            "rates_final": layer_rates(model),
            "rates_drift": (
                tail_t.mean(0) - before_t.mean(0) if len(before_t) else torch.zeros(len(tail_t[0]))
            ).tolist(),
            "rate_trace": trace,
            "trace_steps": trace_steps,
            "test_accuracy": ev["accuracy"],
            "steps": t["steps"],
            "train_seconds": t["seconds"],
            "tracker_drift": tracker.drift(SETTLE_FRACTION),
            "tracker": tracker,
        }
    return results


def run(cfg: RunConfig) -> Result:
    """Rates per layer against the training-set fraction; table, verdict and figure."""
    data = image_split(
        cfg,
        full="fashion-mnist",
        quick="mnist-5k",
        tiny="digits",
        n_train=cfg.pick(None, None, 800),
        n_test=cfg.pick(None, 1000, 297),
    )
    hidden = cfg.pick(512, 256, 32)
    fractions = cfg.pick((1 / 64, 1 / 16, 1 / 4, 1.0), (0.05, 0.15, 0.4, 1.0), (0.25, 1.0))
    steps = cfg.pick(20000, 800, 20, medium=12000)
    results = rates_vs_size(
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        fractions,
        cfg,
        hidden=hidden,
        steps=steps,
    )
    rows = list(results.values())
    small, large = rows[0], rows[-1]
    n_layers = len(small["rates"])
    falls = [a > b for a, b in zip(small["rates"], large["rates"])]
    monotone = [
        all(a["rates"][layer] >= b["rates"][layer] for a, b in zip(rows, rows[1:]))
        for layer in range(n_layers)
    ]
    shallow_smaller = large["rates"][0] <= min(large["rates"][1:])
    drift, drift_layer, drift_n = max(
        (abs(d), layer + 1, r["n_train"]) for r in rows for layer, d in enumerate(r["rates_drift"])
    )
    settled = drift <= DRIFT_TOL
    trackers = [r.pop("tracker") for r in rows]
    rates_settled = rate_settling(
        trackers, what=f"Concrete rate of each layer, {len(rows)} training-set sizes"
    )
    table = [
        {
            "quantity": f"rates of layers 1–{n_layers} (mean over the last quarter of the steps), "
            f"{100 * r['fraction']:.3g}% of the data (N = {r['n_train']})",
            "paper": "fall as N grows (Fig. 3)",
            "ours": " / ".join(f"{p:.3f}" for p in r["rates"]),
            "tail std": " / ".join(f"{s:.3f}" for s in r["rates_tail_std"]),
            "test accuracy": f"{100 * r['test_accuracy']:.2f}%",
        }
        for r in rows
    ]
    table.append(
        {
            "quantity": "layers whose rate falls from the smallest to the largest N",
            "paper": f"all {n_layers}",
            "ours": f"{sum(falls)} of {n_layers} (monotone over every fraction in "
            f"{sum(monotone)} of {n_layers})",
        }
    )
    table.append(
        {
            "quantity": "largest change of a rate between the last two quarters of the steps",
            "paper": "converged (100 epochs)",
            "ours": f"{drift:.3f} ({'settled' if settled else 'still moving'})",
        }
    )
    table.append(
        {
            "quantity": "largest mean |change| of a layer's rate over the last quarter of the "
            "steps (settled: < 0.01)",
            "paper": "converged (100 epochs)",
            "ours": f"{rates_settled['max_drift']:.4f} "
            f"({'settled' if rates_settled['settled'] else 'not settled'}; {cfg.mode} budget)",
        }
    )
    table.append(
        {
            "quantity": "input layer has the smallest rate (largest N)",
            "paper": "yes (shallower layers smaller)",
            "ours": "yes" if shallow_smaller else "no",
        }
    )
    reproduced = all(falls)
    verdict = (
        f"{'Reproduced' if reproduced else 'Not reproduced'} at this budget: from N = {small['n_train']} to "
        f"N = {large['n_train']} training images the rates go "
        + ", ".join(f"{a:.3f}→{b:.3f}" for a, b in zip(small["rates"], large["rates"]))
        + f" (layers 1–{n_layers}): {sum(falls)} of {n_layers} fall, monotonically over all "
        f"{len(rows)} fractions in {sum(monotone)}. The secondary claim (shallower layers get "
        f"smaller rates) {'holds' if shallow_smaller else 'does not hold'} here: at the largest N "
        f"the input layer's rate is {large['rates'][0]:.3f} against "
        + ", ".join(f"{p:.3f}" for p in large["rates"][1:])
        + f". {steps} Adam steps per fraction (the paper trains 100 epochs of MNIST); "
        + (
            f"the rates had settled (no layer's mean rate moved by more than {drift:.3f} between "
            "the third and the last quarter of the steps)."
            if settled
            else f"the rates had not fully settled: the mean rate of layer {drift_layer} at "
            f"N = {drift_n} still moved by {drift:.3f} between the third and the last quarter of the steps, so these are rates "
            "after a fixed budget rather than converged ones."
        )
        + f" By the suite's criterion (mean |change| of a rate over the last quarter of the steps "
        f"< {rates_settled['tol']}) the rates {'settled' if rates_settled['settled'] else 'did not settle'} "
        f"(largest {rates_settled['max_drift']:.4f}, {cfg.mode} budget)."
    )
    settings = {
        "architecture": f"{data.in_features}-{hidden}-{hidden}-{hidden}-10, ConcreteDropout on "
        "the inputs of each Linear (one rate per layer)",
        "init_p": INIT_P,
        "temperature": 0.1,
        "regularizers": "library defaults: weight 0.5, dropout 1.0 (length-scale 1), / N",
        "fractions": fractions,
        "steps_per_fraction": steps,
        "converged_rate": f"mean over the last {TAIL:.0%} of the steps",
        "batch_size": BATCH_SIZE,
        "lr": LR,
        "rate_lr": RATE_LR,
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="MNIST (60k), MLP 3×512, 100 epochs",
        stand_in=data.stand_in,
        settings=settings,
        metrics={
            "fractions": results,
            "falls": falls,
            "monotone": monotone,
            "shallow_smaller": shallow_smaller,
            "reproduced": reproduced,
            "max_drift": {"value": drift, "layer": drift_layer, "n_train": drift_n},
            "settled": settled,
            "rates_settled": rates_settled,
        },
        table=table,
        verdict=verdict,
        figure=_figure(results),
        rates=rates_settled,
    )


def _figure(results: dict[str, dict]):  # noqa: ANN202 - a matplotlib Figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results.values())
    n_layers = len(rows[0]["rates"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    ns = [r["n_train"] for r in rows]
    for layer in range(n_layers):
        ax.errorbar(
            ns,
            [r["rates"][layer] for r in rows],
            yerr=[r["rates_tail_std"][layer] for r in rows],
            marker="o",
            capsize=3,
            label=f"layer {layer + 1}",
        )
    ax.set(
        xscale="log",
        xlabel="training images N",
        ylabel="drop rate (mean over the last quarter)",
        title="Fig. 3: rate vs training-set size",
    )
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    last = rows[-1]
    for layer in range(n_layers):
        bx.plot(
            last["trace_steps"], [t[layer] for t in last["rate_trace"]], label=f"layer {layer + 1}"
        )
    steps = last["trace_steps"]
    bx.axvspan(steps[-1] * (1 - SETTLE_FRACTION), steps[-1], color="0.9", zorder=0)
    drift = max(last["tracker_drift"].values())
    bx.set(
        xlabel="step (last quarter shaded)",
        ylabel="drop rate",
        title=f"Fig. 2: rates during training (N = {last['n_train']}); "
        f"drift over the last quarter {drift:.4f}",
    )
    bx.legend(fontsize=8)
    return fig
