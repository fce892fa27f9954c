"""Mult-VAE training throughput: sparse (CSR, embedding_bag) versus dense input, side by side.

The click matrix has the size of the pre-processed ML-20M of Liang et al. (2018): 136,677 users,
20,108 items, about 10M interactions (user activity log-normal with mean ~73, item popularity a
power law), built directly in CSR form. Both variants train the same ``MultVAE`` (600-200, batch 500
users, Adam) for the same batches; the dense one gets ``X[rows].toarray()`` per batch as the
reference code does. A full epoch (about 233 batches) takes many minutes on two shared cores, so
by default a fixed number of batches (``--batches``, after a warm-up batch, the two variants
interleaved batch by batch so load changes hit both alike) is timed and the epoch time is
extrapolated from the measured users/second; ``--batches 0`` times a whole epoch instead.
Peak host memory (``ru_maxrss``) covers building the matrix and both models.

A third variant, ``floor``, times what every exact input path must still do: the same step with
the input layer's output given (encoder head, decoder, multinomial likelihood over all items,
their backward, and Adam over every parameter including the input layer, whose gradient is a
dense matrix as the sparse path produces it). ``dense / floor`` bounds the speed-up that any input
representation can reach (Amdahl), because the 20k-wide output layer and its softmax are the same
dense work in both paths.

Usage::

    python benchmarks/bench_recsys_sparse.py [--batches 6 | --batches 0] [--device cpu|cuda]
        [--users 136677] [--threads 1] [--fused-adam]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import scipy.sparse as sp
import torch

from bayesdrop.recsys.models import MultVAE, csr_batch, gaussian_kl, multinomial_nll


def ml20m_like(users: int, items: int, interactions: int, seed: int = 0) -> sp.csr_matrix:
    """A binary CSR matrix with ML-20M-like marginals, never densified."""
    rng = np.random.default_rng(seed)
    mean = interactions / users
    sigma = 1.0
    activity = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, users)
    activity = np.clip(np.round(activity), 5, items // 2).astype(np.int64)
    pop = 1.0 / np.arange(1, items + 1) ** 0.9
    pop /= pop.sum()
    # Draw 1.5x with replacement, keep each user's first `activity` distinct items.
    draws = np.ceil(activity * 1.5).astype(np.int64)
    cols = rng.choice(items, size=int(draws.sum()), p=pop).astype(np.int64)
    rows = np.repeat(np.arange(users, dtype=np.int64), draws)
    _, first = np.unique(rows * items + cols, return_index=True)
    first.sort()
    rows, cols = rows[first], cols[first]
    starts = np.searchsorted(rows, np.arange(users))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < activity[rows]
    rows, cols = rows[keep], cols[keep]
    m = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (rows.astype(np.int32), cols.astype(np.int32))),
        shape=(users, items),
    )
    return m


def _step(model, optimizer, x, beta: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = model.training_loss(x, beta)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _floor_step(model, optimizer, x, h1: torch.Tensor, beta: float) -> float:
    """The sparse step without the input layer: ``h1`` (its tanh output) is given."""
    optimizer.zero_grad(set_to_none=True)
    out = model.encoder_out(h1)
    mu, logvar = out[:, : model.latent], out[:, model.latent :]
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    loss = (multinomial_nll(model.decode(z), x) + beta * gaussian_kl(mu, logvar)).mean()
    loss.backward()
    # Adam updates the whole input layer whatever its gradient; a zero gradient kept from one
    # step to the next (Adam never writes to gradients) adds no work of its own.
    w = model.input_layer
    if not hasattr(w, "_zero_grads"):
        w._zero_grads = (torch.zeros_like(w.weight), torch.zeros_like(w.bias))
    w.weight.grad, w.bias.grad = w._zero_grads
    optimizer.step()
    return float(loss.detach())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=136_677)
    ap.add_argument("--items", type=int, default=20_108)
    ap.add_argument("--interactions", type=int, default=10_000_000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument(
        "--batches",
        type=int,
        default=6,
        help="timed batches per variant (0: a whole epoch of training users, no extrapolation)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave default)")
    ap.add_argument(
        "--fused-adam",
        action="store_true",
        help="Adam(fused=True): the same update in one pass over the 24M parameters",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    x_all = ml20m_like(args.users, args.items, args.interactions)
    print(
        f"matrix {x_all.shape[0]} x {x_all.shape[1]}, {x_all.nnz} interactions "
        f"(built in {time.perf_counter() - t0:.1f} s), device {args.device}, "
        f"torch threads {torch.get_num_threads()}, Adam{' (fused)' if args.fused_adam else ''}"
    )
    rng = np.random.default_rng(1)
    order = rng.permutation(args.users)
    n_train = args.users - 20_000 if args.users > 40_000 else args.users
    if args.batches < 0:
        raise SystemExit(f"--batches must be >= 0, got {args.batches}")
    if args.batches == 0:  # a whole epoch of the training users
        args.batches = -(-n_train // args.batch_size)
    batches = [
        order[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.batches + 1)
    ]

    def make(kind: str):
        def get(rows):
            if kind == "sparse":
                return csr_batch(x_all, rows, device=args.device)
            return torch.from_numpy(x_all[rows].toarray()).to(args.device)

        return get

    kinds = ("sparse", "dense", "floor")
    times = dict.fromkeys(kinds, 0.0)
    cpu = dict.fromkeys(kinds, 0.0)  # process CPU seconds: robust to other users' load
    models = {}
    for kind in kinds:
        torch.manual_seed(0)
        model = MultVAE(args.items).to(args.device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=args.fused_adam or None)
        models[kind] = (model, opt)
    get = {"sparse": make("sparse"), "dense": make("dense"), "floor": make("sparse")}
    h1 = {}  # the floor's given input-layer outputs (computed outside the timed region)

    def step(kind: str, rows) -> None:
        model, opt = models[kind]
        x = get[kind](rows)
        if kind == "floor":
            _floor_step(model, opt, x, h1[id(rows)], 0.1)
        else:
            _step(model, opt, x, 0.1)

    for rows in batches:
        with torch.no_grad():
            h1[id(rows)] = models["floor"][0]._first_layer(csr_batch(x_all, rows, args.device))
    # warm-up, then interleave the variants batch by batch so load changes hit all alike
    for kind in kinds:
        step(kind, batches[0])
    for rows in batches[1:]:
        for kind in kinds:
            _sync(args.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            step(kind, rows)
            _sync(args.device)
            times[kind] += time.perf_counter() - start
            cpu[kind] += time.process_time() - cpu_start
    users = sum(len(b) for b in batches[1:])
    rate = {k: users / t for k, t in times.items()}
    for k in kinds:
        epoch = n_train / rate[k]
        print(
            f"{k:>6}: {rate[k]:8.1f} users/s, {times[k] / args.batches:.3f} s/batch, "
            f"extrapolated epoch ({n_train} train users) {epoch:.1f} s = {epoch / 60:.2f} min; "
            f"CPU {cpu[k] / args.batches:.3f} s/batch, {n_train / users * cpu[k]:.0f} CPU s/epoch"
        )
    print(
        f"speed-up sparse / dense: {rate['sparse'] / rate['dense']:.2f}x wall, "
        f"{cpu['dense'] / cpu['sparse']:.2f}x CPU time"
    )
    print(
        f"bound for any exact input path (dense / floor): {cpu['dense'] / cpu['floor']:.2f}x CPU "
        f"time; the sparse input layer costs {(cpu['sparse'] - cpu['floor']) / args.batches:.3f} "
        f"s/batch over the floor, the dense one {(cpu['dense'] - cpu['floor']) / args.batches:.3f}"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak resident memory: {peak:.2f} GB (host)")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 1024**3:.2f} GB")


if __name__ == "__main__":
    main()
