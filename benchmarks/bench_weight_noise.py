"""Training step of the per-weight Gaussian families against nn.Dropout and two other libraries.

MLP 784-1024-1024-10 (ReLU), batch 128, one training step = forward, loss, backward, optimiser
step, for plain SGD and for Adam. Every variant is measured side by side in one run: the step
functions are called in interleaved rounds (so drifting machine load hits all of them) and timed
in *process CPU time* with one torch thread; the table gives the median ms per step and the ratio
to the ``nn.Dropout`` step with the same optimiser.

Variants (each wraps or replaces every ``nn.Linear``):

* ``nn.Dropout``: plain ``nn.Linear`` layers with ``nn.Dropout(0.5)`` before each (the baseline);
* ``VariationalDropout B``: ``VariationalDropout(noise="B")`` with one alpha per weight
  (Kingma, Salimans & Welling 2015, local reparameterisation);
* ``SparseVariationalDropout`` (Molchanov, Ashukha & Vetrov 2017) and ``ARDDropout``
  (Kharitonov, Molchanov & Vetrov 2018): additive parameterisation, local reparameterisation;
* ``bayesian-torch LinearReparameterization`` (one weight sample per batch, Gaussian prior KL);
* ``cplxmodule LinearVD`` (variational dropout with the local reparameterisation trick and
  Molchanov's KL approximation).

The bayesdrop variants train through :func:`bayesdrop.objective` (as users do); the baseline
too. The other libraries' steps add their own KL, divided by the data-set size, to the mean
cross-entropy. The two other libraries are benchmark-only dependencies: when one is not
installed its rows are skipped with a message. Install them beside bayesdrop, e.g.::

    python3 -m venv /work/benchvenv
    /work/benchvenv/bin/pip install torch numpy scipy
    /work/benchvenv/bin/pip install --no-deps bayesian-torch cplxmodule
    /work/benchvenv/bin/pip install -e .
    /work/benchvenv/bin/python benchmarks/bench_weight_noise.py

The floor of a local-reparameterisation layer is twice the matrix products of a plain one (the
mean and the variance, forward and backward); the rest is elementwise work over the weights.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop.nn import ARDDropout, SparseVariationalDropout, VariationalDropout

SIZES = [(784, 1024), (1024, 1024), (1024, 10)]
BATCH, N_DATA = 128, 60000


def _vd_b(layer: nn.Linear) -> nn.Module:
    params = inspect.signature(VariationalDropout).parameters
    key = "noise" if "noise" in params else "kind"  # so the same file times older versions
    return VariationalDropout(layer, **{key: "B"}, init_p=0.2)


def _mlp(make: Callable[[int, int], list[nn.Module]]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(SIZES):
        layers += make(a, b)
        if i < len(SIZES) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def bayesdrop_models() -> dict[str, Callable[[], nn.Module]]:
    return {
        "nn.Dropout": lambda: _mlp(lambda a, b: [nn.Dropout(0.5), nn.Linear(a, b)]),
        "VariationalDropout B": lambda: _mlp(lambda a, b: [_vd_b(nn.Linear(a, b))]),
        "SparseVariationalDropout": lambda: _mlp(
            lambda a, b: [SparseVariationalDropout(nn.Linear(a, b))]
        ),
        "ARDDropout": lambda: _mlp(lambda a, b: [ARDDropout(nn.Linear(a, b))]),
    }


class _KLSequential(nn.Module):
    """A Sequential of another library's layers with its KL collected after each forward."""

    def __init__(self, layers: list[nn.Module], kl_of: Callable[[nn.Module], torch.Tensor]):
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.kl_of = kl_of

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kl = x.new_zeros(())
        for m in self.body:
            out = m(x)
            if isinstance(out, tuple):  # bayesian-torch returns (output, kl)
                out, layer_kl = out
                kl = kl + layer_kl
            elif m is not None and self.kl_of is not None and _is_vd(m):
                kl = kl + self.kl_of(m)
            x = out
        return x, kl


def _is_vd(m: nn.Module) -> bool:
    return type(m).__name__ == "LinearVD"


def other_models() -> dict[str, Callable[[], nn.Module]]:
    out: dict[str, Callable[[], nn.Module]] = {}
    try:
        from bayesian_torch.layers import LinearReparameterization
    except ImportError as e:
        print(f"skipped bayesian-torch LinearReparameterization: not installed ({e})")
    else:

        def bt() -> nn.Module:
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(SIZES):
                layers.append(LinearReparameterization(a, b))
                if i < len(SIZES) - 1:
                    layers.append(nn.ReLU())
            return _KLSequential(layers, kl_of=lambda m: m.kl_loss())

        out["bayesian-torch LinearReparameterization"] = bt
    try:
        from cplxmodule.nn.relevance import LinearVD
    except ImportError as e:
        print(f"skipped cplxmodule LinearVD: not installed ({e})")
    else:

        def cm() -> nn.Module:
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(SIZES):
                layers.append(LinearVD(a, b))
                if i < len(SIZES) - 1:
                    layers.append(nn.ReLU())
            return _KLSequential(layers, kl_of=lambda m: m.penalty.sum())

        out["cplxmodule LinearVD"] = cm
    return out


def _optimiser(name: str, params: Any) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3)
    return torch.optim.Adam(params, lr=1e-3)


def bayesdrop_step(model: nn.Module, opt_name: str, x: torch.Tensor, y: torch.Tensor):
    opt = _optimiser(opt_name, model.parameters())

    def nll(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        bayesdrop.objective(model, x, y, nll, N_DATA).backward()
        opt.step()

    return step


def other_step(model: nn.Module, opt_name: str, x: torch.Tensor, y: torch.Tensor):
    opt = _optimiser(opt_name, model.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out, kl = model(x)
        (F.cross_entropy(out, y) + kl / N_DATA).backward()
        opt.step()

    return step


def interleaved_medians(
    fns: dict[str, Callable[[], object]], rounds: int, reps: int, warmup: int = 3
) -> dict[str, float]:
    """Median process-CPU seconds per call of each function over interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time()
            for _ in range(reps):
                fn()
            samples[name].append((time.process_time() - t0) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    fns: dict[str, Callable[[], None]] = {}
    ours, others = bayesdrop_models(), other_models()
    for opt_name in ("sgd", "adam"):
        for name, make in ours.items():
            torch.manual_seed(1)
            fns[f"{opt_name}|{name}"] = bayesdrop_step(make(), opt_name, x, y)
        for name, make in others.items():
            torch.manual_seed(1)
            fns[f"{opt_name}|{name}"] = other_step(make(), opt_name, x, y)
    t = interleaved_medians(fns, args.rounds, args.reps)
    print(
        f"MLP 784-1024-1024-10, batch {BATCH}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), process CPU time, median of {args.rounds} "
        f"interleaved rounds x {args.reps} steps"
    )
    names = list(ours) + list(others)
    width = max(len(n) for n in names)
    print(f"{'variant':<{width}}  {'SGD ms':>7} {'ratio':>6}  {'Adam ms':>7} {'ratio':>6}")
    for name in names:
        cells = []
        for opt_name in ("sgd", "adam"):
            v, base = t[f"{opt_name}|{name}"], t[f"{opt_name}|nn.Dropout"]
            cells.append(f"{1000 * v:>7.2f} {v / base:>5.2f}x")
        print(f"{name:<{width}}  {cells[0]}  {cells[1]}")


if __name__ == "__main__":
    main()
