"""Fused KL sums of the additive families against autograd through the per-weight formulas.

Every optimised path (chunked in-cache kernels, closed-form gradients, folded clamp masks) is
compared in float64 with the straightforward formula differentiated by autograd.
"""

from __future__ import annotations

import pytest
import torch

from bayesdrop.functional import (
    ADDITIVE_LOG_ALPHA_MAX,
    ADDITIVE_LOG_ALPHA_MIN,
    KL_LOG_ALPHA_MAX,
    additive_log_alpha,
    additive_variance,
    ard_gamma_kl,
    ard_kl,
    kl_ard,
    kl_ard_gamma,
    kl_log_uniform,
    sparse_variational_kl,
)
from bayesdrop.functional.additive_gaussian import KL_CHUNK, LOG_SIGMA2_MIN

DT = torch.float64


def _posterior(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(shape, generator=g, dtype=DT) * 0.1
    log_sigma2 = torch.empty(shape, dtype=DT).uniform_(-14.0, 2.0, generator=g)
    flat_t, flat_s = theta.view(-1), log_sigma2.view(-1)
    flat_t[:3] = 0.0  # log alpha clamped at the top
    flat_t[3:5] = 1e3  # ... at the bottom
    flat_s[5:7] = torch.tensor([-60.0, 30.0], dtype=DT)  # log_sigma2 clamped itself
    return theta.requires_grad_(True), log_sigma2.requires_grad_(True)


def _reference(name: str, theta, log_sigma2, max_ls: float, pruned=None):
    if name == "gamma":
        per = kl_ard_gamma(theta, log_sigma2.clamp(LOG_SIGMA2_MIN, max_ls), 0.6, 1e-3)
    else:
        la = additive_log_alpha(theta, log_sigma2, max_ls)
        per = kl_ard(la) if name == "ard" else kl_log_uniform(la, "molchanov")
    return per.sum() if pruned is None else torch.where(pruned, 0.0, per).sum()


FUSED = {
    "svd": sparse_variational_kl,
    "ard": ard_kl,
    "gamma": lambda t, s, **kw: ard_gamma_kl(t, s, 0.6, 1e-3, **kw),
}


@pytest.mark.parametrize("name", list(FUSED))
@pytest.mark.parametrize("shape", [(6, 8), (400, 400)], ids=["one-chunk", "chunked"])
@pytest.mark.parametrize("with_pruned", [False, True])
def test_fused_sum_equals_autograd_of_the_formula(name: str, shape, with_pruned: bool) -> None:
    theta, log_sigma2 = _posterior(shape, seed=len(name) + shape[0])
    if shape[0] == 400:
        assert theta.numel() > 2 * KL_CHUNK
    pruned = None
    if with_pruned:
        pruned = torch.zeros(shape, dtype=torch.bool)
        pruned.view(-1)[::7] = True
    max_ls = 1.0
    ref = _reference(name, theta, log_sigma2, max_ls, pruned)
    ref_grads = torch.autograd.grad(ref, (theta, log_sigma2))
    got = FUSED[name](theta, log_sigma2, pruned=pruned, max_log_sigma2=max_ls)
    grads = torch.autograd.grad(3.0 * got, (theta, log_sigma2))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-9)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, 3.0 * r, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the value-only path
        torch.testing.assert_close(
            FUSED[name](theta, log_sigma2, pruned=pruned, max_log_sigma2=max_ls),
            ref.detach(),
            rtol=1e-12,
            atol=1e-9,
        )


def test_additive_variance_value_and_gradient() -> None:
    log_sigma2 = torch.tensor([-50.0, -3.0, 0.5, 4.0], dtype=DT, requires_grad=True)
    pruned = torch.tensor([False, False, True, False])
    got = additive_variance(log_sigma2, 2.0, pruned)
    ref = log_sigma2.clamp(LOG_SIGMA2_MIN, 2.0).exp().masked_fill(pruned, 0.0)
    torch.testing.assert_close(got, ref)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=DT)
    (g,) = torch.autograd.grad((got * w).sum(), log_sigma2)
    (r,) = torch.autograd.grad((ref * w).sum(), log_sigma2)
    torch.testing.assert_close(g, r)


def test_log_alpha_bounds_are_the_additive_ones() -> None:
    la = additive_log_alpha(torch.tensor([0.0, 1e6]), torch.tensor([0.0, 0.0]))
    assert la.tolist() == [ADDITIVE_LOG_ALPHA_MAX, ADDITIVE_LOG_ALPHA_MIN] == [10.0, -10.0]
    assert KL_LOG_ALPHA_MAX == 20.0


def test_the_log_alpha_bounds_have_one_name_each() -> None:
    import bayesdrop.functional as F

    assert (F.KL_LOG_ALPHA_MIN, F.KL_LOG_ALPHA_MAX) == (-20.0, 20.0)
    for old in ("LOG_ALPHA_MIN", "LOG_ALPHA_MAX"):
        assert not hasattr(F, old) and not hasattr(F.kl, old)
