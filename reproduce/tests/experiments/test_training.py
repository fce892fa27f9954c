"""The one training loop: the same parameters, bit for bit, as the loops it replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop import objective
from bayesdrop.nn import ConcreteDropout, LearnableBernoulliDropout
from bayesdrop_reproduce.experiments._training import (
    fit,
    linear_decay,
    sampled_batches,
    shuffled_epochs,
    training_step,
)

N, D, K, BATCH = 23, 5, 3, 4  # the batch size does not divide N: a short last batch


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        LearnableBernoulliDropout(nn.Linear(D, 8), init_p=0.3),
        nn.ReLU(),
        ConcreteDropout(nn.Linear(8, K)),
    )


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_shuffled_epochs_matches_the_hand_written_loop() -> None:
    """The loop every experiment used to write: a permutation per epoch, objective, step."""
    x, y = _data()
    ref = _model()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(4)
    for _ in range(3):
        ref.train()
        perm = torch.randperm(N, generator=gen)
        for i in range(0, N, BATCH):
            idx = perm[i : i + BATCH]
            loss = objective(ref, x[idx], y[idx], _ce, n_data=N)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(4)
    steps = fit(
        model,
        opt,
        x,
        y,
        shuffled_epochs(N, BATCH, 3, torch.Generator().manual_seed(3), "cpu"),
        nll=_ce,
        n_data=N,
    )
    assert steps == 3 * -(-N // BATCH)
    for a, b in zip(_params(ref), _params(model), strict=True):
        assert torch.equal(a, b)


def test_sampled_batches_draw_what_randint_draws() -> None:
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    (epoch,) = list(sampled_batches(N, BATCH, 4, g1, "cpu"))
    got = list(epoch)
    want = [torch.randint(0, N, (BATCH,), generator=g2) for _ in range(4)]
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    (small,) = list(sampled_batches(3, BATCH, 1, g1, "cpu"))
    assert [len(b) for b in small] == [3]  # never more than n indices


def test_params_restricts_the_step_to_those_parameters() -> None:
    """The EM passes of uci-regression: gradients of one group only, by torch.autograd.grad."""
    x, y = _data()
    model = _model()
    weights = [p for n, p in model.named_parameters() if not n.endswith("logit_p")]
    rates = [p for n, p in model.named_parameters() if n.endswith("logit_p")]
    before = {id(p): p.detach().clone() for p in rates}
    opt = torch.optim.SGD(weights, lr=0.1)
    ref = _model()
    ref_weights = [p for n, p in ref.named_parameters() if not n.endswith("logit_p")]
    ref_opt = torch.optim.SGD(ref_weights, lr=0.1)
    idx = torch.arange(8)
    torch.manual_seed(6)
    loss = objective(model, x[idx], y[idx], _ce, n_data=N)
    training_step(opt, loss, weights)
    torch.manual_seed(6)
    ref_loss = objective(ref, x[idx], y[idx], _ce, n_data=N)
    ref_opt.zero_grad(set_to_none=True)
    ref_loss.backward()
    ref_opt.step()
    for a, b in zip(weights, ref_weights, strict=True):
        assert torch.equal(a, b)
    assert all(p.grad is None and torch.equal(p, before[id(p)]) for p in rates)


def test_schedule_and_kl_weight_see_the_epochs_done() -> None:
    """``progress`` is epoch + examples seen in the epoch / N: 0, 4/23, ..., 20/23, 1, ..."""
    x, y = _data()
    model = _model()
    seen_schedule: list[float] = []
    seen_weight: list[float] = []

    def weight(progress: float) -> float:
        seen_weight.append(progress)
        return 0.0

    fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        x,
        y,
        shuffled_epochs(N, BATCH, 2, torch.Generator().manual_seed(0), "cpu"),
        nll=_ce,
        n_data=N,
        kl_weight=weight,
        schedule=seen_schedule.append,
    )
    want = [e + i / N for e in range(2) for i in range(0, N, BATCH)]
    assert seen_schedule == want and seen_weight == want


def test_max_steps_on_step_and_on_epoch() -> None:
    x, y = _data()
    model = _model()
    steps_seen: list[int] = []
    epochs_seen: list[int] = []
    per_epoch = -(-N // BATCH)  # 6
    steps = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=1e-3),
        x,
        y,
        shuffled_epochs(N, BATCH, 5, torch.Generator().manual_seed(0), "cpu"),
        nll=_ce,
        n_data=N,
        on_step=steps_seen.append,
        on_epoch=lambda epoch, loss: epochs_seen.append(epoch),
        max_steps=per_epoch + 2,
    )
    assert steps == per_epoch + 2 and steps_seen == list(range(1, per_epoch + 3))
    assert epochs_seen == [0, 1]  # the interrupted epoch still reports


def test_a_callback_that_evaluates_does_not_leave_training_off() -> None:
    """Each epoch starts in training mode, whatever the previous epoch's callback did."""
    x, y = _data()
    model = _model()
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    fit(
        model,
        torch.optim.SGD(model.parameters(), lr=1e-3),
        x,
        y,
        shuffled_epochs(N, N, 2, torch.Generator().manual_seed(0), "cpu"),
        nll=_ce,
        n_data=N,
        on_epoch=lambda epoch, loss: model.eval(),
    )
    assert modes and all(modes)


def test_fit_needs_a_loss() -> None:
    x, y = _data()
    model = _model()
    with pytest.raises(TypeError, match="loss= or both nll= and n_data="):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, [[torch.arange(3)]])


def test_linear_decay_holds_then_falls_to_zero() -> None:
    """The schedule against its closed form: constant to start*total, then linear to 0."""
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [w], "lr": 0.2}, {"params": [], "lr": 0.05}])
    decay = linear_decay(opt, 8.0, 0.5)
    for t, left in ((0.0, 1.0), (4.0, 1.0), (5.0, 0.75), (6.0, 0.5), (7.0, 0.25), (8.0, 0.0)):
        decay(t)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2 * left, 0.05 * left])
    decay(9.0)  # past the end: stays at zero
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]


@pytest.mark.parametrize(("total", "start"), [(0.0, 0.5), (4.0, 1.0), (4.0, -0.1)])
def test_linear_decay_rejects_bad_arguments(total: float, start: float) -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="total|start"):
        linear_decay(opt, total, start)


def test_medium_budget_decays_the_learning_rates() -> None:
    from pathlib import Path

    from bayesdrop_reproduce.experiments._framework import MEDIUM_DECAY_FROM, RunConfig

    def cfg(**kw: bool) -> RunConfig:
        return RunConfig(seed=0, device="cpu", out=Path("."), **{"quick": False, **kw})

    assert cfg(medium=True).decay_from == MEDIUM_DECAY_FROM
    assert cfg(quick=True).decay_from is None
    assert cfg().decay_from is None  # full: the papers' constant steps
