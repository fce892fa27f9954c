"""Mult-DAE/VAE (sparse and dense input agree), their losses, and the baselines."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from bayesdrop.recsys.baselines import EASE, Popularity, ease_weights
from bayesdrop.recsys.models import (
    MultDAE,
    MultVAE,
    csr_batch,
    gaussian_kl,
    multinomial_nll,
    normalized_values,
    stacked_csr,
)


def _clicks(seed=0, users=7, items=12):
    rng = np.random.default_rng(seed)
    x = (rng.random((users, items)) < 0.3).astype(np.float32)
    x[3] = 0.0  # a user with no fold-in item
    return sp.csr_matrix(x)


def test_csr_batch_round_trip_and_stacking():
    m = _clicks()
    b = csr_batch(m, np.array([4, 0, 3]))
    np.testing.assert_array_equal(b.to_dense().numpy(), m[[4, 0, 3]].toarray())
    s = stacked_csr(b, 3)
    np.testing.assert_array_equal(s.to_dense().numpy(), np.tile(m[[4, 0, 3]].toarray(), (3, 1)))
    v = normalized_values(b)
    dense = F.normalize(torch.from_numpy(m[[4, 0, 3]].toarray()), dim=1)
    np.testing.assert_allclose(
        b.with_values(v).to_dense().numpy(), dense.numpy(), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("cls", [MultDAE, MultVAE])
def test_sparse_and_dense_inputs_agree(cls):
    torch.manual_seed(0)
    model = cls(12, hidden=8, latent=4, dropout=0.0)
    m = _clicks()
    xs, xd = csr_batch(m), torch.from_numpy(m.toarray())
    model.eval()
    torch.testing.assert_close(model(xs), model(xd), rtol=1e-5, atol=1e-6)
    model.train()
    grads = []
    for x in (xs, xd):
        model.zero_grad()
        if cls is MultVAE:
            model.training_loss(x, 0.3, generator=torch.Generator().manual_seed(1)).backward()
        else:
            model.training_loss(x).backward()
        grads.append([q.grad.clone() for q in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_losses_against_closed_forms():
    logits = torch.randn(3, 5, dtype=torch.float64)
    x = torch.tensor([[1, 0, 2, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    expected = -(x * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(multinomial_nll(logits, x), expected)
    xs = csr_batch(sp.csr_matrix(x.numpy()))
    torch.testing.assert_close(
        multinomial_nll(logits, xs.with_values(xs.values.double())), expected
    )
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(
        gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1)
    )


def test_dae_l2_penalty_is_lambda_times_squared_norms():
    model = MultDAE(10, hidden=6, latent=3, l2=0.01)
    weights = [model.input_layer.weight, model.encoder_out.weight] + [
        m.weight for m in model.decoder
    ]
    torch.testing.assert_close(model.l2_penalty(), 0.01 * sum(w.pow(2).sum() for w in weights))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="dropout"):
        MultVAE(10, dropout=1.0)
    with pytest.raises(ValueError, match="shape"):
        MultVAE(10, hidden=4, latent=2)(torch.zeros(2, 9))
    with pytest.raises(TypeError, match="CSRBatch"):
        MultVAE(10, hidden=4, latent=2)(np.zeros((2, 10)))


# ------------------------------------------------------------------------------------- baselines
def test_ease_closed_form_matches_direct_constrained_solve():
    x = _clicks(seed=2, users=30, items=9).toarray().astype(np.float64)
    lam = 3.0
    b = ease_weights(sp.csr_matrix(x), lam)
    # Column j: ridge regression of x_j on the other columns (diag(B) = 0 constraint).
    for j in range(9):
        others = [i for i in range(9) if i != j]
        a = x[:, others]
        coef = np.linalg.solve(a.T @ a + lam * np.eye(8), a.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], coef, rtol=1e-9, atol=1e-12)
        assert b[j, j] == 0.0
    scores = EASE(lam).fit(x).scores(sp.csr_matrix(x[:4])).numpy()
    np.testing.assert_allclose(scores, x[:4] @ b, rtol=1e-12)


def test_popularity_counts_training_users():
    train = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 0, 1, 0], [0, 1, 1, 0]], dtype=np.float32))
    s = Popularity().fit(train).scores(sp.csr_matrix((2, 4)))
    assert s.tolist() == [[1.0, 1.0, 3.0, 0.0]] * 2
    with pytest.raises(RuntimeError, match="fit"):
        Popularity().scores(train)
    with pytest.raises(ValueError, match="l2"):
        EASE(0.0)


def test_mult_vae_loss_is_the_reparameterised_beta_elbo():
    """training_loss = mean_u [-log p(x|mu + sigma eps) + beta KL(q || N(0, I))] with the same eps."""
    torch.manual_seed(3)
    model = MultVAE(12, hidden=8, latent=4, dropout=0.0).double()
    m = _clicks(seed=4)
    x = csr_batch(m)
    x = x.with_values(x.values.double())
    beta = 0.37
    got = model.training_loss(x, beta, generator=torch.Generator().manual_seed(5))
    xd = torch.from_numpy(m.toarray()).double()
    h = torch.tanh(F.normalize(xd, dim=1) @ model.input_layer.weight + model.input_layer.bias)
    out = model.encoder_out(h)
    mu, logvar = out[:, :4], out[:, 4:]
    eps = torch.randn(mu.shape, dtype=mu.dtype, generator=torch.Generator().manual_seed(5))
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = model.decoder[1](torch.tanh(model.decoder[0](z)))
    nll = -(xd * torch.log_softmax(logits, -1)).sum(-1)
    kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(-1)
    torch.testing.assert_close(got, (nll + beta * kl).mean())
    # eval mode scores with the mean code, deterministically
    model.eval()
    torch.testing.assert_close(model(x), model.decode(mu))


def test_sparse_input_dropout_is_inverted_dropout_on_clicks():
    """The model's own input dropout on CSR input: the first layer's pre-activation is unbiased
    for the noiseless one (inverted scaling), and equals the dense path under the same mask."""
    torch.manual_seed(0)
    model = MultDAE(12, hidden=5, latent=3, dropout=0.3).double().train()
    with torch.no_grad():
        model.input_layer.weight.mul_(0.2)  # keep tanh away from saturation for atanh
    m = _clicks(seed=5)
    x = csr_batch(m)
    x = x.with_values(x.values.double())
    n = 4000
    big = stacked_csr(x, n)
    pre = torch.atanh(model._first_layer(big)).detach().reshape(n, m.shape[0], -1)
    expected = model.input_layer(x, normalized_values(x)).detach()
    se = pre.std(0) / n**0.5
    assert torch.all((pre.mean(0) - expected).abs() <= 4.5 * se + 1e-12)
    assert bool((pre.std(0)[m.getnnz(axis=1) > 0] > 1e-3).all())  # noise where there are clicks
    # a user with no click gets the bias only, with no noise
    torch.testing.assert_close(pre[:, 3], model.input_layer.bias.detach().expand(n, -1))
    # sparse and dense paths draw the same mask from the same stream: identical outputs
    torch.manual_seed(7)
    ys = model._first_layer(x)
    torch.manual_seed(7)
    v = normalized_values(x)
    mask = torch.nn.functional.dropout(torch.ones_like(v), 0.3, True)
    dense = x.with_values(v * mask).to_dense()
    yd = torch.tanh(dense @ model.input_layer.weight + model.input_layer.bias)
    torch.testing.assert_close(ys, yd)


def test_baselines_reject_bad_input():
    train = sp.csr_matrix(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="columns"):
        EASE(1.0).fit(train).scores(sp.csr_matrix((2, 5)))
    with pytest.raises(ValueError, match="columns"):
        Popularity().fit(train).scores(sp.csr_matrix((2, 3)))
    with pytest.raises(TypeError, match="train"):
        EASE(1.0).fit([[1, 0], [0, 1]])
    with pytest.raises(RuntimeError, match="fit"):
        EASE(1.0).scores(train)


def test_ease_ranks_the_co_clicked_item_first():
    """Items 0 and 1 always co-occur, 2 and 3 too: a user with item 0 gets item 1 on top."""
    x = np.array([[1, 1, 0, 0]] * 5 + [[0, 0, 1, 1]] * 5 + [[1, 1, 1, 1]], dtype=np.float64)
    s = EASE(1.0).fit(x).scores(sp.csr_matrix(np.array([[1.0, 0, 0, 0]]))).numpy()[0]
    assert s[1] > s[2] and s[1] > s[3]
    pop = Popularity().fit(x).scores(np.zeros((1, 4))).numpy()[0]
    np.testing.assert_array_equal(pop, x.sum(0))


def _counts(seed=6, users=6, items=11):
    """Click counts 0, 1 or 3 (not just binary), with an empty user, as a float64 CSR batch."""
    rng = np.random.default_rng(seed)
    x = rng.choice([0.0, 0.0, 1.0, 3.0], size=(users, items))
    x[2] = 0.0
    b = csr_batch(sp.csr_matrix(x))
    return b.with_values(b.values.double()), torch.from_numpy(x)


@pytest.mark.parametrize("lead", [(), (3,)])
def test_sparse_nll_values_and_gradients_equal_the_dense_formula(lead):
    """The CSR likelihood (n logsumexp f - sum over clicks of x f, with its own backward) equals
    -sum_i x_i log softmax(f)_i on the dense matrix, values and gradients, in float64; leading
    sample dimensions as the SIVAE uses them."""
    xs, xd = _counts()
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(*lead, *xd.shape, dtype=torch.float64, generator=g, requires_grad=True)
    upstream = torch.randn(*lead, xd.shape[0], dtype=torch.float64, generator=g)
    got = multinomial_nll(logits, xs)
    expected = -(xd * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    (grad_got,) = torch.autograd.grad((got * upstream).sum(), logits)
    (grad_expected,) = torch.autograd.grad((expected * upstream).sum(), logits)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(
        lambda f: multinomial_nll(f, xs), (logits.detach().requires_grad_(),)
    )


def test_sparse_mult_vae_step_equals_the_dense_computation_with_dropout():
    """One training loss of Mult-VAE on CSR input, with input dropout 0.5 and a fixed generator for
    the reparameterisation noise, equals the same loss computed densely (normalise, the same
    dropout mask on the dense matrix, matrix products, log-softmax over all items): value and the
    gradient of every parameter, float64."""
    torch.manual_seed(0)
    model = MultVAE(11, hidden=7, latent=3, dropout=0.5).double().train()
    xs, xd = _counts(seed=8)
    beta = 0.4
    torch.manual_seed(11)  # the dropout mask comes from the global stream
    loss = model.training_loss(xs, beta, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(loss, list(model.parameters()))

    torch.manual_seed(11)  # the same mask: drawn for the stored values, as the sparse path does
    keep = F.dropout(torch.ones(xs.values.numel(), dtype=torch.float64), 0.5, True)
    assert 0 < int((keep == 0).sum()) < keep.numel()  # some clicks dropped, some kept
    mask = xs.with_values(keep).to_dense()
    mask[xd == 0] = 1.0  # zeros stay zero under any mask
    xin = F.normalize(xd, dim=1) * mask
    w = model.input_layer
    h = torch.tanh(xin @ w.weight + w.bias)
    out = model.encoder_out(h)
    mu, logvar = out[:, :3], out[:, 3:]
    eps = torch.randn(mu.shape, dtype=mu.dtype, generator=torch.Generator().manual_seed(5))
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = model.decoder[1](torch.tanh(model.decoder[0](z)))
    nll = -(xd * torch.log_softmax(logits, -1)).sum(-1)
    kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(-1)
    expected_loss = (nll + beta * kl).mean()
    expected = torch.autograd.grad(expected_loss, list(model.parameters()))
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    for (name, _), a, b in zip(model.named_parameters(), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
