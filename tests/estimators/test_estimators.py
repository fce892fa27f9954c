"""ARM, DisARM and REINFORCE against the exact gradient from enumerating all 2^d masks."""

from __future__ import annotations

import pytest
import torch

from bayesdrop.estimators import arm, disarm, reinforce
from tests.conftest import all_masks, assert_within_se, bernoulli_log_prob

ESTIMATORS = {"arm": arm, "disarm": disarm, "reinforce": reinforce}
W = torch.tensor([1.5, -2.0, 0.7, 0.3], dtype=torch.float64)


def f(z: torch.Tensor) -> torch.Tensor:
    """A non-linear, non-separable loss of a mask vector (last dim)."""
    s = z @ W[: z.shape[-1]]
    return (s - 0.4) ** 2 + torch.sin(3 * s) + z[..., 0] * z[..., -1]


def exact_gradient(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.detach().clone().requires_grad_(True)
    z = all_masks(logits.shape[-1])
    J = (bernoulli_log_prob(z, logits).exp() * f(z)).sum()
    (g,) = torch.autograd.grad(J, logits)
    return g


def replicate(est, logits, reps=200, n=400, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([est(f, logits, (n,), generator=gen) for _ in range(reps)])


LOGITS = [
    torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64),
    torch.tensor([-2.5, 0.8, 3.0], dtype=torch.float64),
    torch.tensor([1.2, -0.3, -4.0, 2.2], dtype=torch.float64),
    torch.tensor([30.0, -30.0, 0.5], dtype=torch.float64),
]


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("logits", LOGITS, ids=lambda t: str(t.tolist()))
def test_unbiased_against_enumeration(name, logits):
    est = replicate(ESTIMATORS[name], logits)
    assert torch.isfinite(est).all()
    assert_within_se(est, exact_gradient(logits))


@pytest.mark.parametrize("logits", LOGITS[:3], ids=lambda t: str(t.tolist()))
def test_disarm_variance_not_above_arm(logits):
    # Same seeds: DisARM is ARM's conditional expectation given the antithetic pair.
    v_arm = replicate(arm, logits, reps=300, n=50).var(0).sum()
    v_dis = replicate(disarm, logits, reps=300, n=50).var(0).sum()
    v_rf = replicate(reinforce, logits, reps=300, n=50).var(0).sum()
    assert v_dis <= v_arm
    assert v_dis < v_rf


def test_disarm_is_arm_conditional_expectation_univariate():
    # For d = 1, E[u - 1/2 | z1, z2] can be computed exactly: it is what DisARM uses.
    for phi in [-2.0, -0.3, 0.0, 0.7, 3.0]:
        s = float(torch.sigmoid(torch.tensor(phi, dtype=torch.float64)))
        lo, hi = min(s, 1 - s), max(s, 1 - s)
        # z1 != z2 happens for u < lo (z1=0, z2=1) or u > hi (z1=1, z2=0).
        e_low = lo / 2 - 0.5  # E[u - 1/2 | u < lo]
        e_high = (1 + hi) / 2 - 0.5
        sig_abs = float(torch.sigmoid(torch.tensor(abs(phi), dtype=torch.float64)))
        assert e_high == pytest.approx(0.5 * sig_abs, abs=1e-12)
        assert e_low == pytest.approx(-0.5 * sig_abs, abs=1e-12)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_shapes_and_single_call(name):
    logits = torch.randn(2, 3)
    calls = []

    def loss_fn(z):
        calls.append(z.shape)
        return z.sum(dim=(-1, -2))

    g = ESTIMATORS[name](loss_fn, logits, (5, 4))
    assert g.shape == logits.shape
    assert calls == [torch.Size([2, 5, 4, 2, 3])]
    g0 = ESTIMATORS[name](lambda z: z.sum(dim=(-1, -2)), logits)
    assert g0.shape == logits.shape


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_bad_input(name):
    est = ESTIMATORS[name]
    with pytest.raises(ValueError, match="loss_fn must return losses of shape"):
        est(lambda z: z.sum(), torch.zeros(3), (4,))
    with pytest.raises(TypeError, match="logits"):
        est(lambda z: z.sum(-1), [0.0, 1.0])
    with pytest.raises(ValueError, match="logits must be finite"):
        est(lambda z: z.sum(-1), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="sample_shape"):
        est(lambda z: z.sum(-1), torch.zeros(2), (0,))


def test_generator_reproducible():
    logits = torch.tensor([0.3, -1.0])
    a = disarm(
        lambda z: f(z.double()).float(), logits, (10,), generator=torch.Generator().manual_seed(3)
    )
    b = disarm(
        lambda z: f(z.double()).float(), logits, (10,), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b)
