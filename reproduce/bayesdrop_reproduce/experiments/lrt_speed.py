"""``lrt-speed``: Kingma, Salimans & Welling (2015) §5 "Speed": a weight sample per example versus
the local reparameterisation trick, time per training epoch and their ratio.

The same MLP (three hidden ReLU layers, independent Gaussian weight noise, one α per layer) is
trained through :func:`bayesdrop.objective` with

* :class:`bayesdrop.nn.VariationalDropout` ``noise="B"`` (the library's layer, local
  reparameterisation),
* the experiments' :class:`~bayesdrop_reproduce.experiments._weight_noise.WeightNoiseLinear` in its
  ``"lrt"`` mode (the same algorithm written plainly, so the two estimators below share one
  implementation style), ``"per-example"`` mode (a weight matrix per example, the naive SGVB
  estimator with independent examples) and ``"per-batch"`` mode,
* no noise (plain ``nn.Linear``), for reference.

After warm-up steps, every variant runs a few Adam steps in turn, for several rounds (so a change
of machine load hits every variant alike); the median seconds per step times the steps per epoch
is the time per epoch. On the CPU the seconds are process CPU time with one torch thread, so that
the ratio does not swing with the machine's load (wall time on a loaded machine showed 7.9× where
a quiet one shows 43–60×); on CUDA, wall time between synchronisations. The number of standard normal draws per step, a deterministic part of the
cost, is reported beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._common import cross_entropy, image_split
from ._framework import Result, RunConfig, clock, cpu_timer, progress, single_thread
from ._training import fit, sampled_batches
from ._weight_noise import WeightNoiseLinear, noise_draws
from .estimator_variance import INIT_P, mlp

__all__ = ["NAME", "TITLE", "VARIANTS", "build", "noise_per_step", "run"]

NAME = "lrt-speed"
TITLE = (
    "Kingma et al. 2015 §5: time per epoch, weight sample per example vs local reparameterisation"
)

#: Paper (GPU, Theano, MNIST): seconds per epoch.
PAPER_SECONDS = {"per-example": 1635.0, "VariationalDropout (LRT)": 7.4}

VARIANTS = ("VariationalDropout (LRT)", "lrt", "per-example", "per-batch", "no noise")


def build(variant: str, in_features: int, hidden: int) -> nn.Module:
    """The MLP of :func:`~bayesdrop_reproduce.experiments.estimator_variance.mlp` with ``variant`` noise."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, but got {variant!r}")
    if variant == "VariationalDropout (LRT)":
        return mlp(in_features, hidden)
    sizes = [in_features, hidden, hidden, hidden, 10]
    layers: list[nn.Module] = []
    for i, p in enumerate(INIT_P):
        layer = nn.Linear(sizes[i], sizes[i + 1])
        layers.append(
            layer if variant == "no noise" else WeightNoiseLinear(layer, init_p=p, mode=variant)
        )
        if i < len(INIT_P) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def noise_per_step(variant: str, sizes: list[int], batch: int) -> int:
    """Standard normal numbers one training step of ``variant`` draws (forward pass), summed over
    the layers ``sizes[k] -> sizes[k+1]`` (see :func:`~._weight_noise.noise_draws`)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, but got {variant!r}")
    mode = {"VariationalDropout (LRT)": "lrt", "no noise": "none"}.get(variant, variant)
    return sum(noise_draws(mode, batch, a, b) for a, b in zip(sizes, sizes[1:]))


def _stepper(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int, lr: float, gen: torch.Generator
) -> Callable[[], None]:
    """One Adam step of :func:`bayesdrop.objective` on a random minibatch per call."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(y)

    def step() -> None:
        batch = sampled_batches(n, batch_size, 1, gen, x.device)
        fit(model, opt, x, y, batch, nll=cross_entropy, n_data=n)

    return step


def run(cfg: RunConfig) -> Result:
    """Time training steps of every variant, interleaved in rounds; report the median per step."""
    torch.manual_seed(cfg.seed)
    data = image_split(cfg, n_train=cfg.pick(None, None, 600), n_test=cfg.pick(None, 1000, 297))
    hidden = cfg.pick(1024, 256, 32)
    batch_size, lr = 100, 1e-3
    rounds = cfg.pick(5, 4, 2)
    steps = {v: cfg.pick(20, 10, 2) for v in VARIANTS}
    steps["per-example"] = cfg.pick(4, 2, 1)
    warmup = cfg.pick(3, 2, 1)
    sizes = [data.in_features, hidden, hidden, hidden, 10]
    steps_per_epoch = math.ceil(len(data.y_train) / batch_size)
    steppers = {}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with single_thread(cfg):  # warm-up and timing with the thread count cpu_timer times with
        threads = torch.get_num_threads()
        for k, variant in enumerate(VARIANTS):
            torch.manual_seed(cfg.seed + k)
            model = build(variant, data.in_features, hidden).to(cfg.device)
            gen = cfg.generator(100 + k)
            steppers[variant] = _stepper(model, data.x_train, data.y_train, batch_size, lr, gen)
            for _ in range(warmup):
                steppers[variant]()
        for _ in progress(range(rounds), cfg, f"{NAME} timing rounds"):
            for variant in VARIANTS:  # interleaved: a load change hits every variant alike
                with cpu_timer(cfg) as t:
                    for _ in range(steps[variant]):
                        steppers[variant]()
                times[variant].append(t["s"] / steps[variant])
    per_step = {v: statistics.median(ts) for v, ts in times.items()}
    seconds = {v: per_step[v] * steps_per_epoch for v in VARIANTS}
    ratio = seconds["per-example"] / seconds["VariationalDropout (LRT)"]
    ratio_plain = seconds["per-example"] / seconds["lrt"]
    # spread of the ratio over the rounds (each round times every variant once)
    round_ratios = [a / b for a, b in zip(times["per-example"], times["VariationalDropout (LRT)"])]
    draws = {v: noise_per_step(v, sizes, batch_size) for v in VARIANTS}
    draw_ratio = draws["per-example"] / draws["lrt"]
    paper_ratio = PAPER_SECONDS["per-example"] / PAPER_SECONDS["VariationalDropout (LRT)"]
    table = [
        {
            "quantity": f"seconds per epoch ({clock(cfg)}): {v}",
            "paper": f"{PAPER_SECONDS[v]:g} (GPU, MNIST 60k)" if v in PAPER_SECONDS else "–",
            "ours": f"{seconds[v]:.3g}",
            "normal draws per step": f"{draws[v]:.3g}",
        }
        for v in VARIANTS
    ]
    table += [
        {
            "quantity": "per-example / local reparameterisation (VariationalDropout)",
            "paper": f"{paper_ratio:.0f}×",
            "ours": f"{ratio:.1f}× (rounds {min(round_ratios):.1f}–{max(round_ratios):.1f}×)",
        },
        {
            "quantity": "per-example / local reparameterisation (same plain implementation)",
            "paper": "–",
            "ours": f"{ratio_plain:.1f}×",
        },
        {
            "quantity": "normal draws per step, per-example / local reparameterisation",
            "paper": "– (not reported)",
            "ours": f"{draw_ratio:.0f}×",
        },
    ]
    word = "Reproduced qualitatively" if ratio > 10 else "Not reproduced"
    verdict = (
        f"{word}: sampling a weight matrix per example is {ratio:.0f}× slower per epoch than "
        f"the library's local reparameterisation (VariationalDropout type B) here "
        f"({cfg.device}, {clock(cfg)}, torch threads={threads}, layers {sizes}, "
        f"batch {batch_size}; "
        f"per-round ratios {min(round_ratios):.0f}–{max(round_ratios):.0f}×), against "
        f"{paper_ratio:.0f}× in the paper (GPU, 1635 s vs 7.4 s per epoch, wider layers). It "
        f"draws {draw_ratio:.0f}× more normal numbers and materialises a batch × out × in "
        f"weight tensor per layer; the gap grows with layer width."
    )
    settings = {
        "hidden": hidden,
        "layers": sizes,
        "batch_size": batch_size,
        "lr": lr,
        "rounds": rounds,
        "timed_steps_per_round": steps,
        "warmup_steps": warmup,
        "steps_per_epoch": steps_per_epoch,
        "device": cfg.device,
        "threads": threads,
        "timing": f"median seconds ({clock(cfg)}) per Adam step of bayesdrop.objective over "
        "interleaved rounds, times steps per epoch",
    }
    metrics = {
        "seconds_per_epoch": seconds,
        "seconds_per_step": per_step,
        "seconds_per_step_rounds": times,
        "ratio_per_example_over_lrt": ratio,
        "ratio_per_round": round_ratios,
        "ratio_plain": ratio_plain,
        "normal_draws_per_step": draws,
        "draw_ratio_per_example_over_lrt": draw_ratio,
        "paper_seconds_per_epoch": PAPER_SECONDS,
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="MNIST (60k), GPU",
        stand_in=data.stand_in,
        settings=settings,
        metrics=metrics,
        table=table,
        verdict=verdict,
        figure=_figure(seconds),
    )


def _figure(seconds):  # noqa: ANN001, ANN202 - plotting only
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(seconds)
    ax.barh(names, [seconds[n] for n in names], color="C0")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per epoch (log scale)")
    ax.set_title("time per epoch by weight-noise estimator")
    fig.subplots_adjust(left=0.3)
    return fig
