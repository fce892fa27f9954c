"""GhostBatchNorm: BatchNorm statistics per ghost batch, checked against torch's BatchNorm on
each ghost batch, running statistics by their formula, eval mode and state dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesdrop.nn import GhostBatchNorm, LearnableBernoulliDropout, to_ghost_batch_norm


@pytest.mark.parametrize("shape", [(8, 3), (8, 3, 5), (8, 3, 4, 4), (8, 3, 2, 2, 2)])
def test_each_ghost_batch_is_normalised_as_batchnorm_normalises_it(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    ghost = GhostBatchNorm(3, ghost_size=3).double()
    with torch.no_grad():
        ghost.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        ghost.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    y = ghost(x)
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(shape)]
    for chunk, out in zip(x.split(3), y.split(3)):  # ghost batches of 3, 3 and 2 examples
        ref = kind(3).double()
        ref.load_state_dict(ghost.state_dict())
        torch.testing.assert_close(out, ref(chunk), rtol=1e-12, atol=1e-12)


def test_ghost_size_at_least_the_batch_is_batchnorm_with_its_running_statistics():
    torch.manual_seed(0)
    bn, ghost = nn.BatchNorm2d(4, momentum=0.3).double(), GhostBatchNorm(4, 16, momentum=0.3)
    ghost.double()
    for _ in range(3):
        x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
        torch.testing.assert_close(ghost(x), bn(x), rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ghost, name), getattr(bn, name), rtol=1e-12, atol=1e-12)
    bn.eval(), ghost.eval()
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(ghost(x), bn(x), rtol=1e-12, atol=1e-12)


def test_running_statistics_average_the_ghost_batches():
    """running_mean <- (1-m) rm + m * batch mean; running_var <- (1-m) rv + m * the ghost
    batches' unbiased variances averaged with weights (examples per ghost batch)/batch."""
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    ghost = GhostBatchNorm(2, 2, momentum=0.25).double()
    ghost(x)
    groups = [x[:2], x[2:4], x[4:]]
    mean = x.mean((0, 2))
    var = sum(len(g) / 5 * g.transpose(0, 1).reshape(2, -1).var(1, unbiased=True) for g in groups)
    torch.testing.assert_close(ghost.running_mean, 0.25 * mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ghost.running_var, 0.75 + 0.25 * var, rtol=1e-12, atol=1e-12)
    cumulative = GhostBatchNorm(2, 2, momentum=None).double()
    cumulative(x)
    torch.testing.assert_close(cumulative.running_mean, mean, rtol=1e-12, atol=1e-12)


def test_gradients_match_finite_differences():
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    ghost = GhostBatchNorm(2, 2).double()
    assert torch.autograd.gradcheck(lambda t: ghost(t), (x,))


def test_to_ghost_batch_norm_keeps_state_and_eval_outputs():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.BatchNorm1d(8, affine=False),
        LearnableBernoulliDropout(nn.Linear(8, 2)),
    )
    x = torch.randn(16, 1, 4, 4)
    model(x)  # some running statistics
    model.eval()
    before = model(x)
    to_ghost_batch_norm(model, 4)
    assert isinstance(model[1], GhostBatchNorm) and isinstance(model[5], GhostBatchNorm)
    assert model[1].ghost_size == 4 and not model[5].affine and not model[1].training
    torch.testing.assert_close(model(x), before)
    model.train()
    out = model[1](torch.randn(8, 4, 2, 2))
    torch.testing.assert_close(out[:4].mean((0, 2, 3)), torch.zeros(4), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        to_ghost_batch_norm(nn.Sequential(nn.SyncBatchNorm(3)), 4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ghost_size"):
        GhostBatchNorm(3, 0)
    with pytest.raises(TypeError, match="ghost_size"):
        GhostBatchNorm(3, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):
        GhostBatchNorm(3, 2)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="single value per channel"):
        GhostBatchNorm(3, 2)(torch.randn(5, 3))  # the last ghost batch holds one example
    with pytest.raises(TypeError, match="model"):
        to_ghost_batch_norm(3, 2)  # type: ignore[arg-type]
