"""Fast-dropout vs MC-dropout vs plain logistic regression on real text, side by side in one run.

Wang & Manning (2013), table 1: on document classification, dropout on the inputs of logistic
regression beats plain LR, and fast dropout reaches MC dropout's accuracy about 8x faster. Here,
on the real text sets of ../shared/DATA.md (Rotten Tomatoes polarity and subjectivity, tweets;
binary unigram+bigram features, stratified 80/20 split), every method trains in this one run:

* ``plain``      plain LR (drop probability 0), L-BFGS to convergence;
* ``fast``       fast dropout, deterministic: the closed-form objective (eq. 10-11) for two
                 classes, the unscented transform of the full logit covariance for three; L-BFGS
                 to convergence;
* ``fast-iters`` the same, stopped after ``ITERS`` L-BFGS iterations like the stochastic
                 methods (a matched iteration budget: the dropout objective of separable text
                 data keeps falling as the weights grow, so "to convergence" is not the same
                 point for deterministic and stochastic optimisers);
* ``fast-gauss`` fast dropout with the paper's "Gaussian approximation" (100 draws from the logit
                 Gaussian per example, fresh each iteration), ``ITERS`` L-BFGS iterations;
* ``mc``         MC dropout with real Bernoulli masks on the non-zero features, 100 masks per
                 example per iteration as in the paper's table 1, ``ITERS`` L-BFGS iterations
                 (fresh masks each iteration, fixed during its line search);
* ``mc-adam``    MC dropout trained the usual way: Adam on mini-batches of 100, one mask per
                 example per visit, ``EPOCHS`` epochs.

All use drop probability ``P`` and no other regulariser. Training time is the process CPU time
of ``fit`` with one torch thread (what each method costs, robust to other load on a shared
machine). Convergence on the common target, the dropout objective (eq. 3), is checked by
estimating it for every final model with ``OBJECTIVE_MASKS`` real masks per training example:
the numbers show whether the stochastic methods got as far as the deterministic one.
Accuracy differences are reported with the binomial standard error of the test accuracy.

Run: ``.venv/bin/python benchmarks/bench_fast_dropout.py [--sets rt-polarity,...]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bayesdrop.nn import FastDropoutLogisticRegression, MCDropoutLogisticRegression
from bayesdrop.nn.fast_dropout import _Design
from bayesdrop_reproduce.datasets import load_text_features

P = 0.5
ITERS = 100
EPOCHS = 10
SAMPLES = 100
OBJECTIVE_MASKS = 20
SETS = ("rt-polarity", "rt-subjectivity", "tweets")


def _models(d: int, k: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "plain": (FastDropoutLogisticRegression(d, k, p=0.0), {"max_iter": 500}),
        "fast": (FastDropoutLogisticRegression(d, k, p=P), {"max_iter": 500}),
        "fast-iters": (FastDropoutLogisticRegression(d, k, p=P), {"max_iter": ITERS}),
        "fast-gauss": (
            FastDropoutLogisticRegression(d, k, p=P, objective="sample", samples=SAMPLES),
            {"max_iter": ITERS},
        ),
        "mc": (
            MCDropoutLogisticRegression(d, k, p=P, samples=SAMPLES, generator=gen),
            {"max_iter": ITERS},
        ),
        "mc-adam": (
            MCDropoutLogisticRegression(d, k, p=P, samples=1),
            {"optimizer": "adam", "max_iter": EPOCHS, "batch_size": 100, "lr": 0.01},
        ),
    }


@torch.no_grad()
def dropout_objective(model, design: _Design, y: torch.Tensor) -> tuple[float, float]:
    """MC estimate (mean, standard error) of E_z[NLL] under real masks at drop probability P."""
    probe = MCDropoutLogisticRegression(
        model.in_features, model.num_classes, p=P, samples=1,
        generator=torch.Generator().manual_seed(123),
    )  # fmt: skip
    probe.weight.copy_(model.weight)
    probe.bias.copy_(model.bias)
    per_mask = torch.stack([probe._nll(design, y).mean() for _ in range(OBJECTIVE_MASKS)])
    return float(per_mask.mean()), float(per_mask.std() / math.sqrt(OBJECTIVE_MASKS))


def run_set(name: str) -> list[dict]:
    data = load_text_features(name)
    d, k = data.x_train.shape[1], len(data.classes)
    n_test = len(data.y_test)
    rows = []
    for method, (model, kw) in _models(d, k).items():
        start = time.process_time()
        model.fit(data.x_train, data.y_train, **kw)
        cpu = time.process_time() - start
        acc = model.score(data.x_test, data.y_test)
        design = model._design(data.x_train)
        obj, obj_se = dropout_objective(model, design, model._y(data.y_train, design.n))
        rows.append(
            {
                "set": name,
                "method": method,
                "acc": acc,
                "acc_se": math.sqrt(acc * (1 - acc) / n_test),
                "cpu_s": cpu,
                "iters": model.n_iter_,
                "evals": model.n_evals_,
                "dropout_obj": obj,
                "dropout_obj_se": obj_se,
            }
        )
        r = rows[-1]
        print(
            f"{name:16s} {method:11s} acc {acc:.4f} ± {r['acc_se']:.4f}  cpu {cpu:7.2f} s  "
            f"iters {r['iters']:4d}  evals {r['evals']:5d}  dropout objective "
            f"{obj:.4f} ± {obj_se:.4f}",
            flush=True,
        )
    print(
        f"{name}: {d} features, {data.x_train.shape[0]} train / {n_test} test, {k} classes",
        flush=True,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    all_rows = []
    for name in args.sets.split(","):
        all_rows += run_set(name)
    print("\n| set | method | test acc (± SE) | CPU s | MC/method time | dropout objective |")
    print("|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        rows = {r["method"]: r for r in all_rows if r["set"] == name}
        mc = rows["mc"]["cpu_s"]
        for m, r in rows.items():
            print(
                f"| {name} | {m} | {r['acc']:.4f} ± {r['acc_se']:.4f} | {r['cpu_s']:.2f} | "
                f"{mc / r['cpu_s']:.1f}× | {r['dropout_obj']:.4f} ± {r['dropout_obj_se']:.4f} |"
            )
    print("\nSummary (fast = deterministic fast dropout):")
    for name in args.sets.split(","):
        rows = {r["method"]: r for r in all_rows if r["set"] == name}
        f, mc, mca, pl = rows["fast"], rows["mc"], rows["mc-adam"], rows["plain"]
        fi = rows["fast-iters"]
        se = math.sqrt(f["acc_se"] ** 2 + mc["acc_se"] ** 2)
        print(
            f"{name}: MC(100 masks, L-BFGS)/fast time {mc['cpu_s'] / f['cpu_s']:.1f}×, "
            f"MC(Adam)/fast {mca['cpu_s'] / f['cpu_s']:.1f}×; acc fast - MC "
            f"{f['acc'] - mc['acc']:+.4f} ({(f['acc'] - mc['acc']) / se:+.1f} SE), fast - plain "
            f"{f['acc'] - pl['acc']:+.4f}, MC - plain {mc['acc'] - pl['acc']:+.4f}; "
            f"fast-iters: time ratio {mc['cpu_s'] / fi['cpu_s']:.1f}×, acc - MC "
            f"{fi['acc'] - mc['acc']:+.4f}, - plain {fi['acc'] - pl['acc']:+.4f}"
        )


if __name__ == "__main__":
    main()
