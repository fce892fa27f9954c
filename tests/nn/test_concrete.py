"""ConcreteDropout: masks per unit/channel/sequence, Gal's regulariser and its scaling, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop import ConcreteDropout, kl_divergence, objective
from bayesdrop.functional import bernoulli_entropy, concrete_regularizer, concrete_regularizers
from bayesdrop.functional.concrete import layer_regularizer
from bayesdrop.nn.wrapped_layers import input_weight_sq_norms, input_weights


def captured_input(layer: nn.Module):
    seen = {}
    layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    return seen


def entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_linear_mask_per_example_and_unit_with_inverted_scale():
    p, t, n = 0.3, 0.1, 20000
    m = ConcreteDropout(nn.Linear(4, 2), init_p=p, generator=torch.Generator().manual_seed(0))
    seen = captured_input(m.layer)
    m(torch.ones(n, 4))
    z = seen["x"].double() * (1 - p)  # undo the inverted scale: the relaxed keep mask
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0 + 1e-6
    for q in (1e-3, 0.5, 0.999):  # per unit, against the closed-form CDF of the relaxation
        cdf = 1 / (1 + math.exp(-(math.log(p / (1 - p)) + t * math.log(q / (1 - q)))))
        frac = (z <= q).double().mean(0)
        se = (cdf * (1 - cdf) / n) ** 0.5
        assert ((frac - cdf).abs() < 4.5 * se).all(), (q, frac, cdf)
    # one independent mask value per example and unit: P(both units dropped) = p², not p
    both = ((z[:, 0] <= 0.5) & (z[:, 1] <= 0.5)).double()
    assert abs(float(both.mean()) - p**2) < 4.5 * (p**2 * (1 - p**2) / n) ** 0.5


def test_conv_drops_whole_channels_and_rates_per_channel():
    for conv in (nn.Conv1d(3, 2, 3), nn.Conv2d(3, 2, 3, padding=1), nn.Conv3d(3, 2, 1)):
        m = ConcreteDropout(conv, init_p=0.5, granularity="unit")
        seen = captured_input(conv)
        spatial = (5,) * (conv.weight.dim() - 2)
        m(torch.ones(16, 3, *spatial))
        per_channel = seen["x"].flatten(2)
        assert (per_channel.amax(-1) == per_channel.amin(-1)).all()  # constant over space
        assert m.p.shape == (3,)
        assert ConcreteDropout(conv).p.shape == (1,)


def test_conv_regularizer_per_input_channel_equals_patch_linear_form():
    """Spatial dropout of channel k zeroes the block W[:, k] of the conv seen as a linear map on
    patches (F.unfold); Gal's KL has one weight and one entropy term per such block."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, (2, 3), bias=False).double()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    z = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    out = conv(x * z[:, :, None, None])
    patches = F.unfold(x, (2, 3))  # (B, C*kh*kw, L), channel-major
    w = conv.weight.detach().reshape(4, -1)  # (out, C*kh*kw)
    block = torch.arange(3).repeat_interleave(6)  # input channel of each patch column
    lin = torch.einsum("oc,bcl->bol", w, patches * z[:, block, None])
    assert torch.allclose(out.flatten(2), lin)
    # the regulariser from the patch form, per input channel (K = 3, not 3*2*3)
    ps = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    m = ConcreteDropout(conv, granularity="unit", weight_regularizer=0.2, dropout_regularizer=0.7)
    with torch.no_grad():
        m.logit_p.copy_(torch.logit(ps))
    expected = sum(
        0.2 * float(w[:, block == k].detach().pow(2).sum()) / (1 - float(ps[k]))
        - 0.7 * entropy(float(ps[k]))
        for k in range(3)
    )
    assert float(m.kl().detach()) == pytest.approx(expected, rel=1e-5)
    # one shared rate: Gal's 0.2 ||W||² / (1 - p) - 0.7 K H(p) with K = in_channels
    m = ConcreteDropout(conv, weight_regularizer=0.2, dropout_regularizer=0.7, init_p=0.25)
    expected = 0.2 * float(w.pow(2).sum()) / 0.75 - 0.7 * 3 * entropy(0.25)
    assert float(m.kl().detach()) == pytest.approx(expected, rel=1e-5)


LAYERS = [
    lambda: nn.Linear(5, 3),
    lambda: nn.Conv1d(4, 6, 3),
    lambda: nn.Conv2d(4, 6, 3, groups=2),
    lambda: nn.Conv3d(2, 3, (1, 2, 2)),
    lambda: nn.LSTM(3, 2, bidirectional=True),
    lambda: nn.GRU(3, 2),
]


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("granularity", ["layer", "unit"])
def test_module_kl_and_its_gradients_match_the_functional_regularizer(make, granularity):
    """The module's fused regulariser against concrete_regularizer on the layer helper's norms,
    value and gradients (autograd through the plain formula), in float64; plus gradcheck."""
    torch.manual_seed(2)
    layer = make().double()
    m = ConcreteDropout(
        layer, granularity=granularity, weight_regularizer=0.3, dropout_regularizer=0.8
    ).double()
    with torch.no_grad():
        m.logit_p.copy_(torch.randn_like(m.logit_p))
    params = [m.logit_p, *input_weights(layer)]
    ours = m.kl()
    ref = concrete_regularizer(m.logit_p, input_weight_sq_norms(layer), 0.3, 0.8)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-10)
    g_ours = torch.autograd.grad(ours, params)
    g_ref = torch.autograd.grad(ref, params)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)

    def kl_of(logit_p, *weights):
        return layer_regularizer(
            logit_p, list(weights), getattr(layer, "groups", 1), 0.3, 0.8, m.units
        )

    inputs = [t.detach().clone().requires_grad_() for t in params]
    assert torch.autograd.gradcheck(kl_of, tuple(inputs))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("batch_first", [True, False])
def test_rnn_one_mask_per_sequence(cls, batch_first):
    rnn = cls(4, 3, batch_first=batch_first)
    m = ConcreteDropout(rnn, init_p=0.5, granularity="unit")
    seen = captured_input(rnn)
    out, _ = m(torch.ones(6, 7, 4))
    time_dim = 1 if batch_first else 0
    assert (seen["x"].amax(time_dim) == seen["x"].amin(time_dim)).all()
    assert out.shape[-1] == 3


def test_rnn_regularizer_uses_only_input_to_hidden_weights():
    lstm = nn.LSTM(4, 3, bidirectional=True)
    m = ConcreteDropout(lstm, init_p=0.2, weight_regularizer=0.3, dropout_regularizer=0.0)
    w_sq = lstm.weight_ih_l0.pow(2).sum() + lstm.weight_ih_l0_reverse.pow(2).sum()
    assert float(m.kl().detach()) == pytest.approx(0.3 * float(w_sq.detach()) / 0.8, rel=1e-5)
    before = float(m.kl().detach())
    with torch.no_grad():
        lstm.weight_hh_l0.mul_(10.0)
        lstm.weight_hh_l0_reverse.mul_(10.0)
    assert float(m.kl().detach()) == before


def test_bare_form_regularises_rates_only():
    m = ConcreteDropout(num_features=5, init_p=0.2, dropout_regularizer=0.5)
    assert float(m.kl().detach()) == pytest.approx(-0.5 * 5 * entropy(0.2), rel=1e-6)
    m = ConcreteDropout(num_features=5, init_p=0.2, granularity="unit", dropout_regularizer=0.5)
    assert float(m.kl().detach()) == pytest.approx(-0.5 * 5 * entropy(0.2), rel=1e-6)
    x = torch.randn(3, 2, 5)
    assert m(x).shape == x.shape


def test_unit_rates_regularizer_against_hand_formula():
    lin = nn.Linear(3, 2)
    m = ConcreteDropout(lin, granularity="unit", weight_regularizer=0.4, dropout_regularizer=2.0)
    ps = [0.05, 0.5, 0.9]
    with torch.no_grad():
        m.logit_p.copy_(torch.logit(torch.tensor(ps)))
    expected = sum(
        0.4 * float(lin.weight[:, k].detach().pow(2).sum()) / (1 - ps[k]) - 2.0 * entropy(ps[k])
        for k in range(3)
    )
    assert float(m.kl().detach()) == pytest.approx(expected, rel=1e-5)
    assert float(bernoulli_entropy(torch.logit(torch.tensor(0.05)))) == pytest.approx(
        entropy(0.05), rel=1e-6
    )


def test_objective_reproduces_gals_per_example_loss():
    """objective(..., n_data=N) with concrete_regularizers(l, τ) is exactly Gal's loss
    mean (y - f)² + Σ_layers wd ||W||²/(1-p) + dd K (p log p + (1-p) log(1-p)),
    wd = l²/(τN), dd = 2/(τN), as written in the reference code."""
    n_data, length_scale, tau = 250, 0.3, 4.0
    regs = concrete_regularizers(length_scale, tau)._asdict()
    g = torch.Generator()
    l1 = ConcreteDropout(nn.Linear(3, 5), init_p=0.2, generator=g, **regs)
    l2 = ConcreteDropout(nn.Linear(5, 1), init_p=0.4, generator=g, **regs)
    model = nn.Sequential(l1, nn.ReLU(), l2)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def sq_err(out, t):
        return (out - t).pow(2).sum(-1)

    g.manual_seed(3)
    loss = objective(model, x, y, sq_err, n_data)
    g.manual_seed(3)
    data = (model(x) - y).pow(2).sum(-1).mean()
    wd, dd = length_scale**2 / (tau * n_data), 2.0 / (tau * n_data)
    gal = float(data.detach())
    for layer, p, k in ((l1, 0.2, 3), (l2, 0.4, 5)):
        gal += wd * float(layer.layer.weight.detach().pow(2).sum()) / (1 - p)
        gal += dd * k * (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert float(loss.detach()) == pytest.approx(gal, rel=1e-5)


def test_trains_through_objective_with_pathwise_rate_gradients(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        ConcreteDropout(nn.Linear(4, 16), generator=g, granularity="unit"),
        nn.Tanh(),
        ConcreteDropout(nn.Linear(16, 1), generator=g),
    )
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)

    def nll(o, t):
        return (o - t).pow(2).squeeze(-1)

    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = objective(model, x, y, nll, 1000)
        loss.backward()
        first = float(loss.detach()) if first is None else first
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    assert model[0].logit_p.grad.abs().sum() > 0


def test_module_gradient_matches_finite_differences_for_fixed_noise():
    m = ConcreteDropout(
        nn.Conv2d(2, 3, 3).double(), granularity="unit", temperature=0.5, init_p=0.3
    ).double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)

    def f(logit_p):
        with torch.no_grad():
            m.logit_p.copy_(logit_p)
        m.generator = torch.Generator().manual_seed(0)
        return m(x).pow(2).sum() + m.kl()

    lp = m.logit_p.detach().clone()
    m.generator = torch.Generator().manual_seed(0)
    m.zero_grad()
    (m(x).pow(2).sum() + m.kl()).backward()
    grad = m.logit_p.grad.clone()
    eps = 1e-6
    for k in range(2):
        e = torch.zeros_like(lp)
        e[k] = eps
        fd = (f(lp + e) - f(lp - e)) / (2 * eps)
        assert float(grad[k]) == pytest.approx(float(fd.detach()), rel=1e-5, abs=1e-7)


def test_train_samples_eval_is_deterministic_identity_on_mask():
    m = ConcreteDropout(nn.Linear(3, 2), init_p=0.4)
    x = torch.randn(5, 3)
    m.eval()
    assert torch.equal(m(x), m.layer(x))
    m.mc_sampling = True
    assert not torch.equal(m(x), m(x))
    m.mc_sampling = False
    m.train()
    assert not torch.equal(m(x), m(x))
    a = ConcreteDropout(num_features=3, generator=torch.Generator().manual_seed(5))
    b = ConcreteDropout(num_features=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a(x), b(x))


def test_state_dict_round_trip():
    m = ConcreteDropout(nn.Linear(3, 2), granularity="unit", init_p=0.2)
    with torch.no_grad():
        m.logit_p.copy_(torch.tensor([-1.0, 0.5, 2.0]))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = ConcreteDropout(nn.Linear(3, 2), granularity="unit")
    m2.load_state_dict(torch.load(buf))
    assert torch.equal(m2.p, m.p)
    assert float(m2.kl().detach()) == float(m.kl().detach())
    x = torch.randn(4, 3)
    m.generator = torch.Generator().manual_seed(1)
    m2.generator = torch.Generator().manual_seed(1)
    assert torch.equal(m(x), m2(x))
    assert set(m.state_dict()) == {"logit_p", "layer.weight", "layer.bias"}


def test_extra_repr_and_p():
    m = ConcreteDropout(nn.Linear(3, 2), init_p=0.25, temperature=0.2)
    r = repr(m)
    assert "temperature=0.2" in r and "granularity='layer'" in r and "Linear" in r
    assert "num_features=4" in repr(ConcreteDropout(num_features=4))
    assert m.p.shape == (1,) and float(m.p) == pytest.approx(0.25)
    assert not m.p.requires_grad


def test_extreme_logits_stay_finite():
    m = ConcreteDropout(nn.Linear(3, 2), granularity="unit")
    x = torch.randn(6, 3)
    for value in (-1e4, -50.0, 50.0, 1e4):
        m.zero_grad()
        with torch.no_grad():
            m.logit_p.fill_(value)
        out = m(x)
        kl = m.kl()
        (out.sum() + kl).backward()
        assert torch.isfinite(out).all() and torch.isfinite(kl)
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
        assert ((m.p > 0) & (m.p <= 1)).all()


@pytest.mark.parametrize("init_p", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_init_p(init_p):
    with pytest.raises(ValueError, match="init_p"):
        ConcreteDropout(nn.Linear(2, 2), init_p=init_p)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        ConcreteDropout(nn.Linear(2, 2), temperature=temperature)


def test_bad_arguments():
    with pytest.raises(TypeError, match="layer"):
        ConcreteDropout(nn.ReLU())
    with pytest.raises(TypeError, match="layer"):
        ConcreteDropout(nn.ConvTranspose2d(2, 2, 3))
    with pytest.raises(ValueError, match="granularity"):
        ConcreteDropout(nn.Linear(2, 2), granularity="weight")
    with pytest.raises(ValueError, match="weight_regularizer"):
        ConcreteDropout(nn.Linear(2, 2), weight_regularizer=-1.0)
    with pytest.raises(ValueError, match="dropout_regularizer"):
        ConcreteDropout(nn.Linear(2, 2), dropout_regularizer=float("inf"))
    with pytest.raises(TypeError, match="temperature"):
        ConcreteDropout(nn.Linear(2, 2), temperature="0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):
        ConcreteDropout(nn.Linear(2, 2), generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_features"):
        ConcreteDropout(nn.Linear(2, 2), num_features=3)
    with pytest.raises(ValueError):
        ConcreteDropout()
    with pytest.raises(ValueError, match="input"):
        ConcreteDropout(nn.Linear(2, 2))(torch.randn(3, 5))
    with pytest.raises(TypeError, match="bare form"):
        ConcreteDropout(num_features=2)(torch.randn(3, 2), torch.randn(3))
    with pytest.raises(ValueError, match="channels"):
        ConcreteDropout(nn.Conv2d(2, 2, 1))(torch.randn(3, 4, 5, 5))


def test_kl_divergence_sums_modules():
    a = ConcreteDropout(nn.Linear(3, 2))
    b = ConcreteDropout(num_features=2)
    model = nn.Sequential(a, b)
    assert float(kl_divergence(model).detach()) == pytest.approx(
        float(a.kl().detach()) + float(b.kl().detach())
    )


def test_learned_rates_fall_as_the_training_set_grows_on_digits(one_thread):
    """Gal et al. (Fig. 3 of the replication): the converged dropout rate decreases with the
    size of the training set. scikit-learn digits (1,797 real 8×8 images) stand in for MNIST:
    64-64-10 MLP, every layer's inputs dropped, Adam, 200 steps, N = 100 versus N = 1500.
    Observed (seeded, one thread): input layer p ≈ 0.15 vs 0.03, hidden layer p ≈ 0.26 vs
    0.05."""
    datasets = pytest.importorskip("sklearn.datasets")
    data, target = datasets.load_digits(return_X_y=True)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    xs = torch.tensor(data / 16.0, dtype=torch.float32)[perm]
    ys = torch.tensor(target)[perm]

    def nll(o, t):
        return F.cross_entropy(o, t, reduction="none")

    def learned_rates(n: int) -> list[float]:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        model = nn.Sequential(
            ConcreteDropout(nn.Linear(64, 64), generator=g),
            nn.ReLU(),
            ConcreteDropout(nn.Linear(64, 10), generator=g),
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(200):
            idx = torch.randint(0, n, (64,), generator=g)
            opt.zero_grad()
            objective(model, xs[idx], ys[idx], nll, n).backward()
            opt.step()
        return [float(m.p) for m in model if isinstance(m, ConcreteDropout)]

    small, large = learned_rates(100), learned_rates(1500)
    for p_small, p_large in zip(small, large):
        assert p_small > 2 * p_large
    assert large[0] < 0.1  # init 0.1: with much data the input rate falls below its start
