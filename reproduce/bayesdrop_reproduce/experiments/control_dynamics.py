r"""``control-dynamics``: a Concrete-dropout dynamics model of the cart-pole (Concrete replication §3.4).

The replication learns the dynamics of the cart-pole with Concrete dropout and observes that
"the dropout rate decreases as more [data] we take to train the model, therefore reducing the
epistemic uncertainty of predicting the next state" (its Fig. 7–8 are learning curves, not
numbers). Here a dynamics model

.. math::
    (s_t, a_t) \mapsto s_{t+1} - s_t,\qquad
    p(\Delta s \mid s, a, \omega) = \mathcal N\bigl(f^\omega(s, a), \tau^{-1} I\bigr)

(an MLP with Concrete dropout on the inputs of its second and output layers, targets
standardised) is fitted by
:func:`bayesdrop.objective` on growing numbers :math:`N` of transitions collected under a random
policy (:func:`bayesdrop_reproduce.datasets.cartpole.cartpole_transitions`: gymnasium's ``CartPoleEnv``
when installed, else the same equations in code). Gal's regulariser enters divided by
:math:`N`, so with more data the learned rates should fall and the epistemic uncertainty should
shrink. Epistemic uncertainty on held-out transitions is measured with
:func:`bayesdrop.mc_predict`: the model variance :math:`\sigma^2_\text{model}` (spread of the MC
means) and the mutual information between the prediction and the weights, for which a Gaussian
predictive gives the bound

.. math::
    I[\Delta s; \omega] \le \tfrac12 \log\bigl(1 + \tau\,\sigma^2_\text{model}\bigr)

per output (the mixture's entropy is at most that of the Gaussian with its variance); we report
this bound summed over the four outputs, averaged over test points.

The simulated dynamics are deterministic, so the observation noise is a modelling choice. The
main model fixes it (:data:`NOISE_STD` in standardised units: a scaled squared error, as the
replication's dynamics model trains with an MSE loss); a variant learns a homoscedastic
:math:`\tau`. With a learned :math:`\tau` trained on single dropout samples, the noise variance
absorbs the dropout variance, so :math:`\tau\sigma^2_\text{model}` — and with it the bound —
need not shrink even when :math:`\sigma^2_\text{model}` does; the report gives both.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bayesdrop import RateTracker
from bayesdrop.nn.concrete import ConcreteDropout
from bayesdrop.uncertainty import MCRegression, mc_predict

from ..datasets.cartpole import cartpole_transitions
from ._framework import SETTLE_FRACTION, Result, RunConfig, cpu_timer, progress, rate_settling
from ._training import fit, linear_decay, sampled_batches

__all__ = ["NAME", "TITLE", "NOISE_STD", "DynamicsModel", "fit_dynamics", "epistemic", "run"]

NAME = "control-dynamics"
TITLE = (
    "Concrete replication §3.4 / Fig. 7: cart-pole dynamics with Concrete dropout — "
    "learned rates and epistemic uncertainty versus the amount of transition data"
)


#: Observation noise of the main model, in standardised units of each Δstate component.
NOISE_STD = 0.1


class DynamicsModel(nn.Module):
    r"""``(state, action) -> Δstate`` MLP with Concrete dropout and a Gaussian likelihood.

    Layers: ``Linear(5, h)`` → ReLU → Concrete(``Linear(h, h)``) → ReLU → Concrete(``Linear(h, 4)``).
    ``noise_std`` fixes the observation noise :math:`\tau^{-1/2}` (a buffer ``log_tau``);
    ``None`` learns a homoscedastic ``log_tau`` parameter instead.
    """

    log_tau: Tensor

    def __init__(
        self, hidden: int = 64, init_p: float = 0.3, noise_std: float | None = NOISE_STD
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, hidden),
            nn.ReLU(),
            ConcreteDropout(nn.Linear(hidden, hidden), init_p=init_p),
            nn.ReLU(),
            ConcreteDropout(nn.Linear(hidden, 4), init_p=init_p),
        )
        if noise_std is None:
            self.log_tau = nn.Parameter(torch.zeros(()))
        else:
            if not noise_std > 0:
                raise ValueError(f"noise_std must be > 0 or None, but got {noise_std}")
            self.register_buffer("log_tau", torch.tensor(-2.0 * math.log(noise_std)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def rates(self) -> list[float]:
        """Drop probability of each Concrete layer, input side first."""
        return [float(m.p) for m in self.modules() if isinstance(m, ConcreteDropout)]


def _gaussian_nll(model: DynamicsModel) -> Callable[[Tensor, Tensor], Tensor]:
    def nll(out: Tensor, target: Tensor) -> Tensor:
        tau = model.log_tau.exp()
        sq = (out - target).pow(2).sum(-1)
        d = out.shape[-1]
        return 0.5 * tau * sq - 0.5 * d * model.log_tau + 0.5 * d * math.log(2 * math.pi)

    return nll


def _inputs(states: Tensor, actions: Tensor) -> Tensor:
    return torch.cat([states, actions.unsqueeze(1).float() * 2 - 1], dim=1)


def fit_dynamics(
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    hidden: int = 64,
    noise_std: float | None = NOISE_STD,
    rate_lr: float = 1e-2,
    tau_lr: float = 3e-2,
    trackers: list[RateTracker] | None = None,
    decay_from: float | None = None,
) -> DynamicsModel:
    """Fit a :class:`DynamicsModel` to standardised inputs ``x`` and targets ``y``.

    ``steps`` Adam steps on minibatches drawn with replacement. The dropout logits and a learned
    ``log_tau`` get their own, larger steps ``rate_lr`` and ``tau_lr``: they have to travel
    several nats within the run, and Adam moves a parameter by at most about its rate per step.
    Given a list ``trackers``, a :class:`bayesdrop.RateTracker` of the new model is appended to
    it and records the rates before the first and after every step. ``decay_from`` (a fraction
    of ``steps``) decays every learning rate linearly to zero from there on
    (:func:`._training.linear_decay`).
    """
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    model = DynamicsModel(hidden, noise_std=noise_std).to(x.device)
    nll = _gaussian_nll(model)
    rates = [m.logit_p for m in model.modules() if isinstance(m, ConcreteDropout)]
    special = {id(p) for p in rates} | {id(model.log_tau)}
    others = [p for p in model.parameters() if id(p) not in special]
    groups: list[dict] = [{"params": others, "lr": lr}, {"params": rates, "lr": rate_lr}]
    if isinstance(model.log_tau, nn.Parameter):
        groups.append({"params": [model.log_tau], "lr": tau_lr})
    opt = torch.optim.Adam(groups)
    n = len(x)
    tracker = None
    if trackers is not None:
        tracker = RateTracker(model)
        tracker.record(0)
        trackers.append(tracker)
    fit(
        model,
        opt,
        x,
        y,
        sampled_batches(n, batch_size, steps, generator, x.device),
        nll=nll,
        n_data=n,
        on_step=None if tracker is None else tracker.record,
        schedule=None
        if decay_from is None
        else linear_decay(opt, steps * min(batch_size, n) / n, decay_from),
    )
    return model


@torch.no_grad()
def epistemic(
    model: DynamicsModel,
    x: Tensor,
    y: Tensor,
    samples: int,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    r"""Model variance, the mutual-information bound and RMSE of MC predictions on ``(x, y)``.

    .. math::
        \sigma^2_\text{model} = \tfrac1S\sum_s f_s^2 - \bar f^2,\qquad
        I \le \sum_{d=1}^{4} \tfrac12\log\bigl(1 + \tau\,\sigma^2_{\text{model},d}\bigr)

    each averaged over the rows of ``x``.
    """
    tau = float(model.log_tau.exp())
    pred = mc_predict(
        model,
        x,
        num_samples=samples,
        task="regression",
        noise_precision=tau,
        generator=generator,
        keep_samples=False,
    )
    assert isinstance(pred, MCRegression)
    model_var = pred.model_variance  # (n, 4)
    mi = 0.5 * torch.log1p(tau * model_var).sum(-1)
    return {
        "noise_std": tau**-0.5,
        "model_variance": float(model_var.mean()),
        "mutual_information": float(mi.mean()),
        "test_rmse": float((pred.mean - y).pow(2).mean().sqrt()),
    }


def _monotone(values: list[float], rel: float, abs_tol: float = 0.0) -> bool:
    return all(b <= a * (1 + rel) + abs_tol for a, b in zip(values, values[1:]))


def run(cfg: RunConfig) -> Result:
    """Fit the dynamics model on growing data; rates and epistemic uncertainty per size.

    The main model has a fixed observation noise (:data:`NOISE_STD`); a variant learns a
    homoscedastic precision.
    """
    sizes = cfg.pick(
        [30, 100, 300, 1000, 3000, 10000, 30000], [30, 100, 300, 1000, 3000], [30, 300]
    )
    steps = cfg.pick(4000, 800, 40, medium=3000)
    n_test = cfg.pick(2000, 1000, 100)
    samples = cfg.pick(200, 100, 10)
    batch_size, lr, hidden = 128, 3e-3, 64
    dev = torch.device(cfg.device)
    simulator = "gymnasium" if importlib.util.find_spec("gymnasium") else "equations"
    pool = cartpole_transitions(max(sizes), seed=cfg.seed, simulator=simulator)
    test = cartpole_transitions(n_test, seed=cfg.seed + 10_000, simulator=simulator)
    x_all = _inputs(pool.states, pool.actions)
    y_all = pool.next_states - pool.states
    # Standardise with the statistics of the largest set (a fixed scale shared by every size).
    x_mu, x_sd = x_all.mean(0), x_all.std(0)
    y_mu, y_sd = y_all.mean(0), y_all.std(0)
    x_test = ((_inputs(test.states, test.actions) - x_mu) / x_sd).to(dev)
    y_test = (((test.next_states - test.states) - y_mu) / y_sd).to(dev)

    variants = {"fixed_noise": NOISE_STD, "learned_tau": None}
    per_variant: dict[str, list[dict]] = {}
    trackers: dict[str, list[RateTracker]] = {v: [] for v in variants}
    with cpu_timer(cfg) as t_all:
        for v, (variant, noise_std) in enumerate(variants.items()):
            gen = cfg.generator(3 + 10 * v)
            rows = []
            for n in progress(sizes, cfg, f"{NAME} {variant}"):
                x = ((x_all[:n] - x_mu) / x_sd).to(dev)
                y = ((y_all[:n] - y_mu) / y_sd).to(dev)
                model = fit_dynamics(
                    x,
                    y,
                    steps=steps,
                    batch_size=batch_size,
                    lr=lr,
                    generator=gen,
                    hidden=hidden,
                    noise_std=noise_std,
                    trackers=trackers[variant],
                    decay_from=cfg.decay_from,
                )
                scores = epistemic(model, x_test, y_test, samples, cfg.generator(4))
                drift = max(trackers[variant][-1].drift(SETTLE_FRACTION).values())
                rows.append(
                    {"n": n, "rates": model.rates(), "rate_drift_last_quarter": drift, **scores}
                )
            per_variant[variant] = rows

    summary: dict[str, dict] = {}
    for variant, rows in per_variant.items():
        mean_rate = [sum(r["rates"]) / len(r["rates"]) for r in rows]
        mis = [r["mutual_information"] for r in rows]
        var = [r["model_variance"] for r in rows]
        summary[variant] = {
            "mean_rate": mean_rate,
            "rates_fall": mean_rate[-1] < mean_rate[0],
            "rates_monotone": _monotone(mean_rate, 0.0, 1e-3),
            "mi_falls": mis[-1] < mis[0],
            "mi_monotone_within_5pct": _monotone(mis, 0.05),
            "mi_ratio_first_to_last": mis[0] / max(mis[-1], 1e-12),
            "model_variance_ratio_first_to_last": var[0] / max(var[-1], 1e-12),
        }
    rows = per_variant["fixed_noise"]
    main = summary["fixed_noise"]
    alt = summary["learned_tau"]
    alt_rows = per_variant["learned_tau"]
    ns = [r["n"] for r in rows]
    metrics = {
        "per_size": rows,
        "per_size_learned_tau": alt_rows,
        "summary": summary,
        "train_seconds": t_all["s"],
    }
    table = []
    for r, a in zip(rows, alt_rows):
        table.append(
            {
                "transitions N": r["n"],
                "quantity": "drop p per layer / MI bound (nats) / model var / test RMSE",
                "paper": "rates fall, epistemic uncertainty shrinks as data grow (§3.4, Fig. 7)",
                "ours": (
                    f"p = {', '.join(f'{p:.3f}' for p in r['rates'])}; "
                    f"MI = {r['mutual_information']:.3g}; var = {r['model_variance']:.3g}; "
                    f"RMSE = {r['test_rmse']:.3f}"
                ),
                "ours, learned τ": (
                    f"p = {', '.join(f'{p:.3f}' for p in a['rates'])}; "
                    f"MI = {a['mutual_information']:.3g}; var = {a['model_variance']:.3g}; "
                    f"noise sd = {a['noise_std']:.3f}"
                ),
            }
        )
    ok = main["rates_fall"] and main["mi_falls"]
    rates_settled = rate_settling(
        [t for ts in trackers.values() for t in ts],
        what="Concrete rate of both layers, every data size, both noise models",
    )
    metrics["rates_settled"] = rates_settled
    table.append(
        {
            "transitions N": "all",
            "quantity": "rates settled: largest mean |change| of a layer's rate over the last "
            "quarter of the steps (< 0.01)",
            "paper": "—",
            "ours": f"{'yes' if rates_settled['settled'] else 'no'} "
            f"({rates_settled['max_drift']:.4f}; {cfg.mode} budget, {steps} steps per size)",
            "ours, learned τ": "",
        }
    )

    def trend(s: dict, mr: list[float], rws: list[dict]) -> str:
        return (
            f"mean drop rate {mr[0]:.3f} → {mr[-1]:.3f} "
            f"({'monotone' if s['rates_monotone'] else 'not monotone'}), mutual information "
            f"{rws[0]['mutual_information']:.3g} → {rws[-1]['mutual_information']:.3g} nats "
            f"({'monotone' if s['mi_monotone_within_5pct'] else 'not monotone'}), model variance "
            f"÷{s['model_variance_ratio_first_to_last']:.1f}"
        )

    verdict = (
        f"{'Reproduced' if ok else 'Not reproduced'}: from N = {ns[0]} to N = {ns[-1]} "
        f"transitions, with observation noise sd {NOISE_STD} (standardised units): "
        + trend(main, main["mean_rate"], rows)
        + ". With a learned homoscedastic precision instead: "
        + trend(alt, alt["mean_rate"], alt_rows)
        + f"; its learned noise sd goes {alt_rows[0]['noise_std']:.3f} → "
        f"{alt_rows[-1]['noise_std']:.3f}: the dynamics are deterministic, so the learned noise "
        "shrinks together with the dropout variance it absorbs, and the bound compares the two."
        + f" By the suite's criterion (mean |change| of a rate over the last quarter of the steps "
        f"< {rates_settled['tol']}) the rates "
        + ("settled" if rates_settled["settled"] else "did not all settle")
        + f" (largest {rates_settled['max_drift']:.4f}; {cfg.mode} budget)."
    )
    settings = {
        "sizes": sizes,
        "steps_per_size": steps,
        "batch_size": batch_size,
        "lr": lr,
        "hidden": hidden,
        "mc_samples": samples,
        "n_test": n_test,
        "simulator": simulator,
        "noise": f"main: fixed observation noise sd {NOISE_STD} of each standardised Δstate "
        "(a Gaussian NLL with known τ, i.e. scaled MSE, as in the replication's dynamics model); "
        "variant: learned homoscedastic τ (Adam lr 3e-2)",
        "concrete": "defaults (temperature 0.1, weight_regularizer 0.5, dropout_regularizer 1.0, "
        "i.e. length-scale 1 under the Gaussian NLL), init_p 0.3, one rate per layer",
        "policy": "uniformly random actions, reset when the pole falls",
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="OpenAI gym CartPole-v0 transitions (model-based RL)",
        stand_in=f"cart-pole transitions under a random policy ({simulator}), "
        f"N = {ns[0]}…{ns[-1]}, {n_test} held-out",
        settings=settings,
        metrics=metrics,
        table=table,
        verdict=verdict,
        figure=_figure(rows, alt_rows, trackers["fixed_noise"]),
        rates=rates_settled,
    )


def _figure(rows: list[dict], alt_rows: list[dict], trackers: list):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.4))
    layers = len(rows[0]["rates"])
    for k in range(layers):
        (line,) = axes[0].plot(
            ns, [r["rates"][k] for r in rows], "o-", label=f"Concrete layer {k + 1}"
        )
        axes[0].plot(
            ns, [r["rates"][k] for r in alt_rows], "x:", color=line.get_color(), label="learned τ"
        )
    axes[0].set(xscale="log", xlabel="transitions N", ylabel="learned drop probability")
    axes[0].legend(fontsize=7)
    axes[1].plot(ns, [r["mutual_information"] for r in rows], "o-", label="MI bound (nats)")
    axes[1].plot(ns, [r["model_variance"] for r in rows], "s--", label="model variance")
    axes[1].plot(ns, [r["mutual_information"] for r in alt_rows], "x:", label="MI bound, learned τ")
    axes[1].set(xscale="log", yscale="log", xlabel="transitions N", ylabel="epistemic uncertainty")
    axes[1].legend(fontsize=7)
    for k, (r, tracker) in enumerate(zip(rows, trackers)):
        for j, h in enumerate(tracker.history.values()):
            axes[2].plot(
                tracker.steps,
                h[:, 0].tolist(),
                ("-", "--")[j % 2],
                color=f"C{k}",
                lw=1,
                label=f"N = {r['n']}" if j == 0 else None,
            )
    last = trackers[0].steps[-1]
    axes[2].axvspan(last * (1 - SETTLE_FRACTION), last, color="0.9", zorder=0)
    axes[2].set(
        xlabel="step (last quarter shaded)",
        ylabel="drop probability (layer 1 solid, 2 dashed)",
        title="rates during training",
    )
    axes[2].legend(fontsize=6)
    fig.suptitle("cart-pole dynamics: Concrete dropout versus data size")
    fig.tight_layout()
    return fig
