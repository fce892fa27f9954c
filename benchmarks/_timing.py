"""Side-by-side timing helpers for the benchmarks (ratios measured in one run, interleaved)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_median(
    fns: dict[str, Callable[[], object]],
    rounds: int = 7,
    reps: int = 10,
    warmup: int = 3,
    clock: Callable[[], float] = time.process_time,
    stat: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds.

    Interleaving (A, B, C, A, B, C, ...) exposes every candidate to the same machine load, so
    ratios stay meaningful on a busy machine even when absolute times drift. The default clock is
    the *process CPU time*: what a side costs, unaffected by how often other processes pre-empt
    this one on a shared machine (run with one torch thread for per-core costs). Pass
    ``clock=time.perf_counter`` for wall time (e.g. on a GPU, after synchronising). ``stat=min``
    reports the best round instead of the median (for long calls timed in few rounds).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            for _ in range(reps):
                fn()
            samples[name].append((clock() - t0) / reps)
    return {k: stat(v) for k, v in samples.items()}
