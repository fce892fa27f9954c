r"""``control-dynamics``: a Concrete-dropout dynamics model of the cart-pole (Concrete replication §3.4).

The replication learns the dynamics of the cart-pole with Concrete dropout and observes that
"the dropout rate decreases as more [data] we take to train the model, therefore reducing the
epistemic uncertainty of predicting the next state" (its Fig. 7–8 are learning curves, not
numbers). Here a dynamics model

.. math::
    (s_t, a_t) \mapsto s_{t+1} - s_t,\qquad
    p(\Delta s \mid s, a, \omega) = \mathcal N\bigl(f^\omega(s, a), \tau^{-1} I\bigr)

(an MLP with Concrete dropout on the inputs of its second and output layers, a learned
homoscedastic precision :math:`\tau`, targets standardised) is fitted by
:func:`bayesdrop.objective` on growing numbers :math:`N` of transitions collected under a random
policy (:func:`bayesdrop.datasets.cartpole.cartpole_transitions`: gymnasium's ``CartPoleEnv``
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
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import Tensor, nn

from ..datasets.cartpole import cartpole_transitions
from ..nn.concrete import ConcreteDropout
from ..objectives import objective
from ..uncertainty import mc_predict
from ._framework import Result, RunConfig, progress, timer
from .uci_regression import single_thread

__all__ = ["NAME", "TITLE", "DynamicsModel", "fit_dynamics", "run"]

NAME = "control-dynamics"
TITLE = (
    "Concrete replication §3.4 / Fig. 7: cart-pole dynamics with Concrete dropout — "
    "learned rates and epistemic uncertainty versus the amount of transition data"
)


class DynamicsModel(nn.Module):
    """``(state, action) -> Δstate`` MLP with Concrete dropout and a learned noise precision.

    Layers: ``Linear(5, h)`` → ReLU → Concrete(``Linear(h, h)``) → ReLU → Concrete(``Linear(h, 4)``).
    """

    def __init__(self, hidden: int = 64, init_p: float = 0.3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, hidden),
            nn.ReLU(),
            ConcreteDropout(nn.Linear(hidden, hidden), init_p=init_p),
            nn.ReLU(),
            ConcreteDropout(nn.Linear(hidden, 4), init_p=init_p),
        )
        self.log_tau = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def rates(self) -> list[float]:
        """Drop probability of each Concrete layer, input side first."""
        return [float(m.p) for m in self.modules() if isinstance(m, ConcreteDropout)]


def _gaussian_nll(model: DynamicsModel):  # type: ignore[no-untyped-def]
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
) -> DynamicsModel:
    """Fit a :class:`DynamicsModel` to standardised inputs ``x`` and targets ``y``."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    model = DynamicsModel(hidden).to(x.device)
    nll = _gaussian_nll(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).to(x.device)
        loss = objective(model, x[idx], y[idx], nll, n_data=n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def run(cfg: RunConfig) -> Result:
    """Fit the dynamics model on growing data; rates and epistemic uncertainty per size."""
    sizes = cfg.pick(
        [30, 100, 300, 1000, 3000, 10000, 30000], [30, 100, 300, 1000, 3000], [30, 300]
    )
    steps = cfg.pick(4000, 800, 40)
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

    rows = []
    gen = cfg.generator(3)
    with timer() as t_all, single_thread(cfg):
        for n in progress(sizes, cfg, f"{NAME} sizes"):
            x = ((x_all[:n] - x_mu) / x_sd).to(dev)
            y = ((y_all[:n] - y_mu) / y_sd).to(dev)
            model = fit_dynamics(
                x, y, steps=steps, batch_size=batch_size, lr=lr, generator=gen, hidden=hidden
            )
            tau = float(model.log_tau.detach().exp())
            pred = mc_predict(
                model,
                x_test,
                samples=samples,
                task="regression",
                noise_precision=tau,
                generator=cfg.generator(4),
                keep_samples=False,
            )
            model_var = pred.model_variance  # (n_test, 4)
            mi = 0.5 * torch.log1p(tau * model_var).sum(-1)
            rmse = (pred.mean - y_test).pow(2).mean().sqrt()
            rows.append(
                {
                    "n": n,
                    "rates": model.rates(),
                    "noise_std": tau**-0.5,
                    "model_variance": float(model_var.mean()),
                    "mutual_information": float(mi.mean()),
                    "test_rmse": float(rmse),
                }
            )

    ns = [r["n"] for r in rows]
    mean_rate = [sum(r["rates"]) / len(r["rates"]) for r in rows]
    mis = [r["mutual_information"] for r in rows]
    rate_falls = mean_rate[-1] < mean_rate[0]
    mi_falls = mis[-1] < mis[0]
    monotone_rates = all(b <= a + 1e-3 for a, b in zip(mean_rate, mean_rate[1:]))
    monotone_mi = all(b <= a * 1.05 for a, b in zip(mis, mis[1:]))
    metrics = {
        "per_size": rows,
        "mean_rate_first": mean_rate[0],
        "mean_rate_last": mean_rate[-1],
        "mi_first": mis[0],
        "mi_last": mis[-1],
        "rates_fall": rate_falls,
        "mi_falls": mi_falls,
        "rates_monotone": monotone_rates,
        "mi_monotone_within_5pct": monotone_mi,
        "train_seconds": t_all["s"],
    }
    table = []
    for r in rows:
        table.append(
            {
                "transitions N": r["n"],
                "quantity": "drop p per layer / MI (nats) / model var",
                "paper": "rates fall, epistemic uncertainty shrinks as data grow (Fig. 7)",
                "ours": (
                    f"p = {', '.join(f'{p:.3f}' for p in r['rates'])}; "
                    f"MI = {r['mutual_information']:.3g}; var = {r['model_variance']:.3g}; "
                    f"test RMSE = {r['test_rmse']:.3f}"
                ),
            }
        )
    ok = rate_falls and mi_falls
    verdict = (
        f"{'Reproduced' if ok else 'Not reproduced'}: from N = {ns[0]} to N = {ns[-1]} "
        f"transitions the mean learned drop rate goes {mean_rate[0]:.3f} → {mean_rate[-1]:.3f} "
        f"({'monotone' if monotone_rates else 'not monotone'}) and the mutual information "
        f"{mis[0]:.3g} → {mis[-1]:.3g} nats ({'monotone' if monotone_mi else 'not monotone'})."
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
        figure=_figure(rows),
    )


def _figure(rows: list[dict]):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    layers = len(rows[0]["rates"])
    for k in range(layers):
        axes[0].plot(ns, [r["rates"][k] for r in rows], "o-", label=f"Concrete layer {k + 1}")
    axes[0].set(xscale="log", xlabel="transitions N", ylabel="learned drop probability")
    axes[0].legend()
    axes[1].plot(ns, [r["mutual_information"] for r in rows], "o-", label="MI bound (nats)")
    axes[1].plot(ns, [r["model_variance"] for r in rows], "s--", label="model variance")
    axes[1].set(xscale="log", yscale="log", xlabel="transitions N", ylabel="epistemic uncertainty")
    axes[1].legend()
    fig.suptitle("cart-pole dynamics: Concrete dropout versus data size")
    fig.tight_layout()
    return fig
