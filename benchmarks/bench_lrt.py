"""Local reparameterisation versus per-example weight sampling, and the cost of a VD training step.

Two side-by-side comparisons, timed in one run and reported as ratios (CPU, float32):

1. One 1000x1000 layer with independent Gaussian weight noise, batch 100, forward + backward:
   the local reparameterisation trick (two ordinary matrix products) versus drawing a separate
   weight matrix for every example (a batched matrix-vector product over 100 sampled matrices).
   Target: the LRT is >= 50x faster (Kingma et al. 2015 report > 200x on a GPU).
2. One training step (forward, loss, backward, Adam step) of a 784-1024-1024-10 MLP, batch 128:
   every Linear wrapped in ``VariationalDropout(noise="B")`` trained through
   ``bayesdrop.objective`` versus plain ``nn.Linear`` layers with ``nn.Dropout(0.5)``.
   Target: <= 2x the plain step. A type-B layer does twice the matrix products of a plain one
   (mean and variance, forward and backward), so 2x is the floor; with one alpha per weight
   (``granularity="weight"``) the step also pays weight-sized elementwise work (exp, the KL,
   the variance) and Adam on a second weight-sized parameter, about 3x measured on one CPU
   thread, while ``granularity="output"`` stays near 1.9x.

Timings are medians of interleaved repeats (the sides alternate, so drifting load hits all of
them). By default they are *process CPU times* with one torch thread: on a shared machine that
is what a side costs, unaffected by how often other processes pre-empt it (``--clock wall
--threads 0`` gives multi-threaded wall times instead). The MLP step is reported for
``granularity="weight"`` (one alpha per weight, the default: twice the parameters for Adam) and
``granularity="output"``. Run: ``python benchmarks/bench_lrt.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop.functional import lrt_linear, sample_gaussian
from bayesdrop.nn import VariationalDropout

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Median time (s) of each function, calling them in alternation after two warm-ups."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def synced(clock: Callable[[], float], device: torch.device) -> Callable[[], float]:
    """``clock``, after waiting for queued GPU work (so GPU timings are not launch times)."""
    if device.type != "cuda":
        return clock

    def read() -> float:
        torch.cuda.synchronize(device)
        return clock()

    return read


def bench_layer(
    repeats: int,
    clock: Callable[[], float],
    device: torch.device,
    batch: int = 100,
    size: int = 1000,
) -> dict[str, float]:
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, size, generator=g, device=device)
    theta = (0.03 * torch.randn(size, size, generator=g, device=device)).requires_grad_(True)
    log_alpha = torch.full((size, size), -1.0, device=device, requires_grad=True)

    def lrt() -> None:
        var = log_alpha.exp() * theta * theta
        out = sample_gaussian(*lrt_linear(x, theta, var), generator=g)
        out.square().sum().backward()

    def per_example() -> None:
        std = (0.5 * log_alpha).exp() * theta.abs()
        eps = torch.randn(batch, size, size, generator=g, device=device)
        weights = theta + std * eps  # (batch, out, in): one weight matrix per example
        out = torch.bmm(weights, x.unsqueeze(-1)).squeeze(-1)
        out.square().sum().backward()

    return interleaved_medians({"lrt": lrt, "per_example": per_example}, repeats, clock)


def mlp(granularity: str | None) -> nn.Module:
    """784-1024-1024-10 ReLU MLP: VariationalDropout(noise="B") on every Linear, or, for
    ``granularity=None``, plain Linear layers with nn.Dropout(0.5) after each hidden ReLU."""
    sizes = [784, 1024, 1024, 10]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        if granularity is not None:
            vd = VariationalDropout(nn.Linear(a, b), noise="B", granularity=granularity, init_p=0.2)
            layers.append(vd)
        else:
            layers.append(nn.Linear(a, b))
        if not last:
            layers.append(nn.ReLU())
            if granularity is None:
                layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers)


def bench_step(
    repeats: int,
    clock: Callable[[], float],
    device: torch.device,
    batch: int = 128,
    n_data: int = 60000,
) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(batch, 784, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    plain = mlp(None).to(device)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def nll(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none")

    def step_plain() -> None:
        opt_plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x), y).backward()
        opt_plain.step()

    def vd_step(granularity: str) -> Callable[[], None]:
        model = mlp(granularity).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            bayesdrop.objective(model, x, y, nll, n_data=n_data).backward()
            opt.step()

        return step

    fns = {"dropout": step_plain, "weight": vd_step("weight"), "output": vd_step("output")}
    return interleaved_medians(fns, repeats, clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--device", default="cpu", help="cpu (the target) or cuda (wall time)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = "wall" if device.type == "cuda" else args.clock
    clock = synced(CLOCKS[clock_name], device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {where}, float32, "
        f"{clock_name} time, medians of {args.repeats} interleaved repeats"
    )
    t = bench_layer(max(3, args.repeats // 2), clock, device)
    ratio = t["per_example"] / t["lrt"]
    print(
        f"1000x1000 layer, batch 100, fwd+bwd: LRT {1e3 * t['lrt']:.2f} ms, "
        f"per-example weights {1e3 * t['per_example']:.1f} ms -> LRT {ratio:.0f}x faster "
        f"(target >= 50x: {'met' if ratio >= 50 else 'NOT met'})"
    )
    s = bench_step(args.repeats, clock, device)
    print(f"784-1024-1024-10 MLP, batch 128, train step: nn.Dropout {1e3 * s['dropout']:.1f} ms")
    for granularity in ("weight", "output"):
        ratio = s[granularity] / s["dropout"]
        print(
            f"  VariationalDropout(noise='B', granularity={granularity!r}) "
            f"{1e3 * s[granularity]:.1f} ms -> {ratio:.2f}x (target <= 2x: "
            f"{'met' if ratio <= 2 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
