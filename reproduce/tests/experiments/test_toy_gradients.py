"""toy-gradients: exact gradients against enumeration and the paper's claims at small scale."""

from __future__ import annotations

import itertools

import torch

from bayesdrop_reproduce.experiments.toy_gradients import (
    exact_gradient,
    gradient_estimates,
    make_problem,
    relaxed_gradient,
)


def all_masks(d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """All 2^d binary vectors as a ``(2^d, d)`` tensor."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=dtype)


def bernoulli_log_prob(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log P(z) under independent Bernoulli(sigmoid(logits)), summed over the last dim."""
    return (
        z * torch.nn.functional.logsigmoid(logits)
        + (1 - z) * torch.nn.functional.logsigmoid(-logits)
    ).sum(-1)


def assert_within_se(
    estimates: torch.Tensor, exact: torch.Tensor, k: float = 4.5, atol: float = 1e-9
) -> None:
    """Assert the mean of i.i.d. ``estimates`` (first dim) is within k standard errors of ``exact``."""
    n = estimates.shape[0]
    mean = estimates.mean(0)
    se = estimates.std(0) / n**0.5
    err = (mean - exact).abs()
    bad = err > k * se + atol
    assert not bool(bad.any()), f"mean {mean} vs exact {exact}: |err| {err} > {k}·SE {k * se}"


PROBLEM = make_problem(300, seed=0, dtype=torch.float64)
LOGITS = torch.logit(torch.tensor([0.3, 0.7], dtype=torch.float64))


def _score_function_gradient(logits: torch.Tensor) -> torch.Tensor:
    """sum_z P(z) (z - sigma(alpha)) L(z): the log-derivative identity, evaluated exactly."""
    z = all_masks(2)
    prob = bernoulli_log_prob(z, logits).exp()
    h = torch.relu(PROBLEM.x[:, None] * PROBLEM.w1 + PROBLEM.b1)
    loss = ((PROBLEM.y - (z[:, None, :] * h) @ PROBLEM.w2 - PROBLEM.b2) ** 2).mean(-1)
    return ((prob * loss)[:, None] * (z - torch.sigmoid(logits))).sum(0)


def test_exact_gradient_matches_score_function_enumeration() -> None:
    for keep in ([0.1, 0.9], [0.3, 0.7], [0.5, 0.5]):
        logits = torch.logit(torch.tensor(keep, dtype=torch.float64))
        torch.testing.assert_close(
            exact_gradient(PROBLEM, logits), _score_function_gradient(logits)
        )


def test_relaxed_gradient_tends_to_exact_as_temperature_falls() -> None:
    exact = exact_gradient(PROBLEM, LOGITS)
    errors = [
        (relaxed_gradient(PROBLEM, LOGITS, t) - exact).abs().max() for t in (0.1, 0.02, 0.004)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01 * exact.abs().max()


def test_arm_and_disarm_unbiased_disarm_lower_variance() -> None:
    exact = exact_gradient(PROBLEM, LOGITS)
    gen = torch.Generator().manual_seed(0)
    est_arm = gradient_estimates(PROBLEM, LOGITS, "arm", 400, generator=gen)
    est_disarm = gradient_estimates(PROBLEM, LOGITS, "disarm", 400, generator=gen)
    assert_within_se(est_arm, exact)
    assert_within_se(est_disarm, exact)
    # DisARM is ARM conditioned on the pair of masks: its variance is never larger.
    assert bool((est_disarm.var(0) < est_arm.var(0)).all())


def test_concrete_mean_is_relaxed_gradient_and_biased_at_t_01() -> None:
    # Keep probabilities 0.2: the relaxation bias is ~0.11 per-estimate STD there, so 10,000
    # estimates put it ~10 standard errors from zero.
    logits = torch.logit(torch.tensor([0.2, 0.2], dtype=torch.float64))
    exact = exact_gradient(PROBLEM, logits)
    relaxed = relaxed_gradient(PROBLEM, logits, 0.1)
    est = gradient_estimates(
        PROBLEM,
        logits,
        "concrete",
        10_000,
        temperature=0.1,
        generator=torch.Generator().manual_seed(1),
    )
    assert_within_se(est, relaxed)  # unbiased for the relaxed objective ...
    se = est.std(0) / est.shape[0] ** 0.5
    z = (est.mean(0) - exact).abs() / se
    assert float(z.max()) > 5.0, f"Concrete bias not detected: {z}"  # ... biased for Bernoulli
    arm_est = gradient_estimates(
        PROBLEM, logits, "arm", 400, generator=torch.Generator().manual_seed(2)
    )
    assert_within_se(arm_est, exact)  # ARM at the same point: within MC error of zero bias
