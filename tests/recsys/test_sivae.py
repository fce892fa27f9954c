"""SIVAE: the semi-implicit bound and the unbiasedness of its rate gradients (exact enumeration)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from bayesdrop.functional.bernoulli import bernoulli_dropout
from bayesdrop.recsys.models import csr_batch, normalized_values
from bayesdrop.recsys.sivae import SIVAE, sivi_log_q, standard_normal_log_prob

# Small models: a second intra-op thread only adds synchronisation on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_sivi_log_q_is_the_mixture_density():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)  # (V+1, users, d)
    logvar = torch.randn(3, 2, 4, generator=g, dtype=torch.float64) * 0.3
    eta = torch.randn(2, 4, generator=g, dtype=torch.float64)
    got = sivi_log_q(eta, mu, logvar)
    for u in range(2):
        comps = [
            multivariate_normal(mu[v, u].numpy(), np.diag(logvar[v, u].exp().numpy())).logpdf(
                eta[u].numpy()
            )
            for v in range(3)
        ]
        assert got[u].item() == pytest.approx(logsumexp(comps) - math.log(3), rel=1e-12)
    ref = multivariate_normal(np.zeros(4), np.eye(4)).logpdf(eta.numpy())
    np.testing.assert_allclose(standard_normal_log_prob(eta).numpy(), ref, rtol=1e-12)


def _tiny(n_extra, estimator="arm", arm_product="per-user"):
    torch.manual_seed(0)
    m = SIVAE(
        4, hidden=3, latent=2, n_extra=n_extra, estimator=estimator, arm_product=arm_product
    ).double()
    with torch.no_grad():
        m.rates.logit_p.copy_(torch.tensor([-0.8, 0.4, 1.0, 0.0]))
        for q in m.parameters():
            if q is not m.rates.logit_p:
                q.mul_(3.0)  # a loss that depends strongly on the masks
    m.generator = torch.Generator().manual_seed(1)
    return m


def _batch(rows):
    x = csr_batch(sp.csr_matrix(np.array(rows, dtype=np.float64)))
    return x.with_values(x.values.double())


def _exact_gradient(m, x, beta, eps):
    """d/d logit_p of E_z[mean_u f_u] by summing over every mask of every user's clicks."""
    nnz = x.col.numel()
    logit_p = m.rates.logit_p.clamp(-30, 30)[x.col]
    keep = torch.sigmoid(-logit_p)
    v = normalized_values(x)
    n = (m.n_extra + 1) * nnz
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)
    masks = configs.reshape(-1, m.n_extra + 1, nnz)
    prob = (masks * keep + (1 - masks) * (1 - keep)).flatten(1).prod(1)
    values = bernoulli_dropout(v, logit_p, masks)
    f = m._bound(x, values, beta, eps.expand(len(configs), -1, -1))  # (configs, users)
    j = (prob * f.mean(1)).sum()
    (grad,) = torch.autograd.grad(j, m.rates.logit_p)
    return grad


def _mc_gradient(m, rows, beta, eps, draws, groups=25):
    """Mean and standard error of the estimator over ``draws`` independent draws.

    With the per-user product, a batch holding ``r`` copies of the users gives the mean of ``r``
    independent draws in one pass; the standard error comes from ``groups`` such batches.
    """
    per = draws // groups
    x = _batch(rows * per)
    e = eps.repeat(per, 1)
    grads = []
    for _ in range(groups):
        m.zero_grad()
        m.training_loss(x, beta, eps=e).backward()
        grads.append(m.rates.logit_p.grad.clone())
    g = torch.stack(grads)
    return g.mean(0), g.std(0) / math.sqrt(groups)


@pytest.mark.parametrize("estimator", ["arm", "disarm"])
@pytest.mark.parametrize("n_extra", [0, 1])
def test_lbd_rate_gradient_is_unbiased(estimator, n_extra):
    m = _tiny(n_extra, estimator)
    rows = [[1, 1, 0, 0], [0, 1, 1, 0]]  # item 3 is clicked by nobody
    eps = torch.tensor([[0.3, -1.1], [0.8, 0.2]], dtype=torch.float64)
    exact = _exact_gradient(m, _batch(rows), 0.7, eps)
    mean, se = _mc_gradient(m, rows, 0.7, eps, draws=4000)
    assert exact[3].item() == 0.0 and mean[3].item() == 0.0  # unclicked: exactly zero
    assert torch.all((mean - exact).abs()[:3] <= 4.5 * se[:3] + 1e-9), (mean, exact, se)
    assert exact[:3].abs().max() > 5 * se[:3].max()  # the check has power


@pytest.mark.parametrize("estimator", ["arm", "disarm"])
def test_batch_mean_ablation_is_unbiased_and_noisier(estimator):
    """The batch-level product (the authors' code, scaled by B) plus the pathwise part estimates
    the exact gradient; the former ablation (ARM part / B, full pathwise part) is ruled out."""
    m = _tiny(0, estimator, "batch-mean")
    x = _batch([[1, 1, 0, 0], [0, 1, 1, 0]])
    eps = torch.tensor([[0.3, -1.1], [0.8, 0.2]], dtype=torch.float64)
    exact = _exact_gradient(m, x, 0.7, eps)
    exact_path = _exact_pathwise(m, x, 0.7, eps)
    former = exact_path + (exact - exact_path) / 2  # what "batch-mean" estimated before (B = 2)
    draws = 1000
    grads = []
    for _ in range(draws):
        m.zero_grad()
        m.training_loss(x, 0.7, eps=eps).backward()
        grads.append(m.rates.logit_p.grad.clone())
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / math.sqrt(draws)
    assert torch.all((mean - exact).abs() <= 4.5 * se + 1e-9), (mean, exact, se)
    assert ((mean - former).abs() > 4.5 * se)[:3].any(), (mean, former, se)  # the test has power
    # the per-user product estimates the same gradient with lower variance
    p = _tiny(0, estimator, "per-user")
    per_user = []
    for _ in range(400):
        p.zero_grad()
        p.training_loss(x, 0.7, eps=eps).backward()
        per_user.append(p.rates.logit_p.grad.clone())
    assert (torch.stack(per_user).var(0)[:3] < g.var(0)[:3]).all()


def test_lbd_uniforms_are_float32_for_float32_models():
    m = SIVAE(5, hidden=4, latent=2, generator=torch.Generator().manual_seed(0))
    dtypes = []
    draw = m._rand

    def spy(shape, like, dtype=None):
        u = draw(shape, like, dtype)
        dtypes.append(u.dtype)
        return u

    m._rand = spy
    x = csr_batch(sp.csr_matrix(np.eye(5, dtype=np.float32)[:3]))
    m.training_loss(x, 0.2, eps=torch.zeros(3, 2)).backward()
    assert dtypes == [torch.float32]


def _exact_pathwise(m, x, beta, eps):
    """E_z[d f / d logit_p] with the mask distribution held fixed (the scale's derivative only)."""
    nnz = x.col.numel()
    logit_p = m.rates.logit_p.clamp(-30, 30)[x.col]
    keep = torch.sigmoid(-logit_p).detach()
    v = normalized_values(x)
    n = (m.n_extra + 1) * nnz
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)
    masks = configs.reshape(-1, m.n_extra + 1, nnz)
    prob = (masks * keep + (1 - masks) * (1 - keep)).flatten(1).prod(1)
    f = m._bound(x, bernoulli_dropout(v, logit_p, masks), beta, eps.expand(len(configs), -1, -1))
    (grad,) = torch.autograd.grad((prob * f.mean(1)).sum(), m.rates.logit_p)
    return grad


@pytest.mark.parametrize("noise", ["concrete", "gaussian"])
def test_continuous_families_train_their_rates_pathwise(noise):
    torch.manual_seed(0)
    m = SIVAE(6, hidden=4, latent=2, noise=noise, n_extra=2)
    x = csr_batch(sp.csr_matrix(np.eye(6, dtype=np.float32)[:3] + np.eye(6, k=2)[:3]))
    m.training_loss(x, 0.5).backward()
    g = (m.rates.log_alpha if noise == "gaussian" else m.rates.logit_p).grad
    clicked = torch.zeros(6, dtype=torch.bool)
    clicked[x.col] = True
    assert torch.isfinite(g).all() and (g[clicked] != 0).all() and (g[~clicked] == 0).all()
    assert m.p.shape == (6,) and torch.allclose(m.p, torch.full((6,), 0.5))


def test_eval_is_deterministic_and_ignores_rates():
    m = SIVAE(5, hidden=4, latent=2).eval()
    x = csr_batch(sp.csr_matrix(np.eye(5, dtype=np.float32)))
    a = m(x)
    with torch.no_grad():
        m.rates.logit_p.fill_(2.0)
    assert torch.allclose(m.p, torch.sigmoid(torch.tensor(2.0)))
    assert torch.equal(a, m(x))
    assert torch.allclose(a, m(x.to_dense()), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="noise"):
        SIVAE(5, noise="uniform")
    with pytest.raises(ValueError, match="arm_product"):
        SIVAE(5, arm_product="sum")
    with pytest.raises(ValueError, match="n_extra"):
        SIVAE(5, n_extra=-1)
    with pytest.raises(ValueError, match="init_p"):
        SIVAE(5, init_p=1.0)
    m = SIVAE(5, hidden=4, latent=2)
    with pytest.raises(TypeError, match="CSRBatch"):
        m.training_loss(torch.eye(5), 0.1)
    with pytest.raises(ValueError, match="beta"):
        m.training_loss(csr_batch(sp.eye(5, format="csr")), -1.0)
    with pytest.raises(ValueError, match="shape"):
        m.training_loss(csr_batch(sp.eye(5, format="csr")), 0.1, eps=torch.zeros(5, 3))


def test_learned_gaussian_rates_noise_moments():
    from bayesdrop.recsys.sivae import LearnedGaussianRates

    m = LearnedGaussianRates(3, init_p=0.2, generator=torch.Generator().manual_seed(0))
    y = m(torch.ones(20000, 3, dtype=torch.float64)).detach()
    alpha = 0.2 / 0.8
    n = y.shape[0]
    assert torch.all((y.mean(0) - 1.0).abs() < 4.5 * math.sqrt(alpha / n))
    assert torch.all((y.var(0) - alpha).abs() < 4.5 * alpha * math.sqrt(2.0 / n))
    assert torch.equal(m.eval()(torch.ones(2, 3)), torch.ones(2, 3))
    assert m.kl().item() == 0.0
