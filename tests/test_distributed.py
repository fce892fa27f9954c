"""objective() under DistributedDataParallel (2 CPU processes, gloo, a local file store) equals one process
on the concatenated batch: same parameter updates within float tolerance, fixed generators.

Each LBD module draws its uniforms from its own generator. On CPU a generator fills tensors
sequentially, so the single process's draw of shape ``(2B, K)`` is rank 0's ``(B, K)`` draw
followed by rank 1's, when rank 1 skips the first ``B*K`` numbers: the masks coincide exactly.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from bayesdrop import LearnableBernoulliDropout, objective

B, STEPS, N_DATA = 8, 3, 100


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        LearnableBernoulliDropout(nn.Linear(6, 8), estimator="arm", generator=torch.Generator()),
        nn.ReLU(),
        LearnableBernoulliDropout(nn.Linear(8, 3), estimator="disarm", generator=torch.Generator()),
    )


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 2 * B, 6, generator=g), torch.randint(
        0, 3, (STEPS, 2 * B), generator=g
    )


def _seed_generators(model: nn.Module, step: int, skip_examples: int) -> None:
    lbd = [m for m in model.modules() if isinstance(m, LearnableBernoulliDropout)]
    for i, m in enumerate(lbd):
        m.generator.manual_seed(1000 * step + i)
        if skip_examples:
            torch.rand(skip_examples * m.units, generator=m.generator)


def _nll(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _train(model, xs, ys, pair, rank=0, world=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(STEPS):
        _seed_generators(model, step, skip_examples=rank * B)
        x, y = xs[step], ys[step]
        if world > 1:
            x, y = x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B]
        opt.zero_grad()
        objective(model, x, y, _nll, N_DATA, pair=pair).backward()
        opt.step()


def _worker(rank: int, world: int, store: str, pair: str, out: str) -> None:
    # A file store (no TCP port to race for) and gloo pinned to the loopback interface.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        xs, ys = _data()
        _train(ddp, xs, ys, pair, rank, world)
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()
    # End the process without interpreter finalisation. Constructing DistributedDataParallel
    # leaves references to the process group that destroy_process_group() does not drop, so
    # gloo's worker threads outlive it; such a thread releases the last reference to a finished
    # all-reduce (whose saved thread-local state holds a Python object) a moment after the
    # caller's wait returns. If the interpreter is finalising by then, that release cannot take
    # the GIL, the thread is unwound through a noexcept destructor and the process aborts
    # ("terminate called without an active exception"). Everything is written and closed here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("pair", ["nograd", "concat"])
def test_ddp_matches_single_process(tmp_path, pair):
    out = str(tmp_path / "ddp.pt")
    store = str(tmp_path / "store")
    mp.spawn(_worker, args=(2, store, pair, out), nprocs=2, join=True)
    ddp_state = torch.load(out, weights_only=True)
    single = _model()
    xs, ys = _data()
    _train(single, xs, ys, pair)
    init = _model().state_dict()
    for k, v in single.state_dict().items():
        assert not torch.equal(v, init[k]), f"{k} did not move"
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-5, atol=1e-6)
