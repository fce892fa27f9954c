"""LearnableBernoulliDropout: masks per unit/channel/sequence, eval behaviour, prior, errors."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from bayesdrop import LearnableBernoulliDropout, objective
from bayesdrop.functional import bernoulli_entropy

# Small models: a second intra-op thread only adds synchronisation on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def captured_input(layer: nn.Module):
    seen = {}
    layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    return seen


def test_linear_masks_are_exact_bernoulli_with_inverted_scale():
    m = LearnableBernoulliDropout(
        nn.Linear(4, 2), init_p=0.3, generator=torch.Generator().manual_seed(0)
    )
    seen = captured_input(m.layer)
    m(torch.ones(20000, 4))
    x = seen["x"]
    vals = torch.unique(x)
    assert vals.numel() == 2 and vals[0] == 0.0
    assert float(vals[1]) == pytest.approx(1 / 0.7, rel=1e-6)
    frac_dropped = (x == 0).double().mean(0)
    se = (0.3 * 0.7 / 20000) ** 0.5
    assert ((frac_dropped - 0.3).abs() < 4.5 * se).all()


def test_conv_drops_whole_channels():
    conv = nn.Conv2d(3, 2, 3, padding=1)
    m = LearnableBernoulliDropout(conv, init_p=0.5)
    seen = captured_input(conv)
    m(torch.ones(64, 3, 5, 5))
    x = seen["x"]
    per_channel = x.flatten(2)
    assert (per_channel.amax(-1) == per_channel.amin(-1)).all()  # constant over space
    assert m.p.shape == (3,)


@pytest.mark.parametrize("batch_first", [True, False])
def test_rnn_mask_shared_over_time(batch_first):
    lstm = nn.LSTM(4, 3, batch_first=batch_first)
    m = LearnableBernoulliDropout(lstm, init_p=0.5)
    seen = captured_input(lstm)
    x = torch.ones(6, 7, 4)
    out, _ = m(x)
    xin = seen["x"]
    time_dim = 1 if batch_first else 0
    assert (xin.amax(time_dim) == xin.amin(time_dim)).all()
    assert out.shape[-1] == 3


def test_objective_with_conv_and_rnn_wrappers():
    conv = LearnableBernoulliDropout(nn.Conv1d(2, 3, 3), estimator="arm")
    x = torch.randn(5, 2, 8)
    loss = objective(conv, x, None, lambda o, t: o.pow(2).mean(dim=(1, 2)), 100)
    loss.backward()
    assert conv.logit_p.grad.shape == (2,)
    gru = LearnableBernoulliDropout(nn.GRU(3, 2))  # sequence-first: batch_dim=1
    xs = torch.randn(4, 6, 3)
    loss = objective(gru, xs, None, lambda o, t: o[0].pow(2).mean(dim=(0, 2)), 100, batch_dim=1)
    loss.backward()
    assert torch.isfinite(gru.logit_p.grad).all()


def test_eval_is_identity_on_the_mask_and_train_samples():
    m = LearnableBernoulliDropout(nn.Linear(3, 2), init_p=0.4)
    x = torch.randn(5, 3)
    m.eval()
    assert torch.equal(m(x), m.layer(x))
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    m.mc_sampling = True
    assert not torch.equal(m(x), m(x))


def test_layer_granularity_and_bare_form():
    m = LearnableBernoulliDropout(nn.Linear(5, 2), granularity="layer", init_p=0.2)
    assert m.p.shape == (1,) and torch.allclose(m.p, torch.tensor([0.2]))
    bare = LearnableBernoulliDropout(num_features=4, init_p=0.5)
    assert bare(torch.randn(3, 4)).shape == (3, 4)
    # bare form: KL is minus the entropy of each unit
    assert torch.allclose(bare.kl(), -4 * torch.log(torch.tensor(2.0)))


def test_kl_matches_gal_formula_by_hand():
    lin = nn.Linear(3, 2)
    m = LearnableBernoulliDropout(lin, length_scale=0.7)
    with torch.no_grad():
        m.logit_p.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    p = torch.sigmoid(m.logit_p.detach())
    keep = 1 - p
    col_sq = (lin.weight.detach() ** 2).sum(0)
    H = -(keep * keep.log() + p * p.log())
    expected = (0.7**2 * col_sq / (2 * keep) - H).sum()
    assert torch.allclose(m.kl(), expected, atol=1e-6)
    assert torch.allclose(bernoulli_entropy(m.logit_p.detach()), H, atol=1e-6)


def test_state_dict_round_trip_exact():
    a = LearnableBernoulliDropout(nn.Linear(4, 3), init_p=0.25)
    with torch.no_grad():
        a.logit_p.add_(torch.randn(4))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = LearnableBernoulliDropout(nn.Linear(4, 3))
    b.load_state_dict(torch.load(buf, weights_only=True))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert set(a.state_dict()) == {"logit_p", "layer.weight", "layer.bias"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="init_p"):
        LearnableBernoulliDropout(nn.Linear(2, 2), init_p=0.0)
    with pytest.raises(ValueError, match="init_p"):
        LearnableBernoulliDropout(nn.Linear(2, 2), init_p=1.2)
    with pytest.raises(TypeError, match="layer must be one of"):
        LearnableBernoulliDropout(nn.ReLU())
    with pytest.raises(ValueError, match="estimator"):
        LearnableBernoulliDropout(nn.Linear(2, 2), estimator="gumbel")
    with pytest.raises(ValueError, match="granularity"):
        LearnableBernoulliDropout(nn.Linear(2, 2), granularity="weight")
    with pytest.raises(ValueError, match="num_features"):
        LearnableBernoulliDropout()
    with pytest.raises(ValueError, match="does not match"):
        LearnableBernoulliDropout(nn.Linear(2, 2), num_features=3)
    with pytest.raises(ValueError, match="input must have shape"):
        LearnableBernoulliDropout(nn.Linear(3, 2))(torch.randn(4, 5))
    with pytest.raises(ValueError, match="channels"):
        LearnableBernoulliDropout(nn.Conv2d(3, 2, 1))(torch.randn(4, 5, 2, 2))
    with pytest.raises(TypeError, match="generator"):
        LearnableBernoulliDropout(nn.Linear(2, 2), generator=3)


def test_repr_names_the_settings():
    r = repr(LearnableBernoulliDropout(num_features=3, estimator="arm"))
    assert "num_features=3" in r and "'arm'" in r


# ------------------------------------------------------------------------------------------------
# Batch dimension: sequence-first inputs get the masks of the batch-first input they permute
# ------------------------------------------------------------------------------------------------


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    for m in model.modules():
        if isinstance(m, LearnableBernoulliDropout):
            m.generator = torch.Generator().manual_seed(seed)
    return model


class Tokens(nn.Module):
    """Per-position LBD(Linear) then a bare LBD, on (*, F) inputs of either layout."""

    def __init__(self):
        super().__init__()
        self.a = LearnableBernoulliDropout(nn.Linear(3, 4), init_p=0.4)
        self.b = LearnableBernoulliDropout(num_features=4, init_p=0.3)
        self.out = nn.Linear(4, 1)

    def forward(self, x):
        return self.out(self.b(torch.tanh(self.a(x))))


class Recurrent(nn.Module):
    """LBD(GRU) over the sequence, then LBD(Linear) on the last step's (batch, hidden) output."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = LearnableBernoulliDropout(nn.GRU(3, 5, batch_first=batch_first), init_p=0.3)
        self.head = LearnableBernoulliDropout(nn.Linear(5, 1), init_p=0.4)

    def forward(self, x):
        out, _ = self.rnn(x)
        last = out[:, -1] if self.batch_first else out[-1]
        return self.head(last)


@pytest.mark.parametrize("pair", ["nograd", "concat"])
@pytest.mark.parametrize("estimator", ["arm", "disarm"])
def test_sequence_first_linear_and_bare_match_batch_first(pair, estimator):
    torch.manual_seed(1)
    bf = Tokens().double()
    for m in (bf.a, bf.b):
        m.estimator = estimator
    sf = copy.deepcopy(bf)
    x = torch.randn(4, 6, 3, dtype=torch.float64)  # (B, T, F)
    y = torch.randn(4, dtype=torch.float64)

    def nll_bf(o, t):
        return (o.squeeze(-1).mean(1) - t) ** 2

    def nll_sf(o, t):
        return (o.squeeze(-1).mean(0) - t) ** 2

    objective(_seeded(bf, 7), x, y, nll_bf, 50, pair=pair).backward()
    objective(_seeded(sf, 7), x.transpose(0, 1), y, nll_sf, 50, pair=pair, batch_dim=1).backward()
    g_bf, g_sf = _grads(bf), _grads(sf)
    assert bf.a.logit_p.grad.abs().min() > 0  # the pair's masks differ: a real rate gradient
    for a, b in zip(g_bf, g_sf):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pair", ["nograd", "concat"])
def test_sequence_first_rnn_matches_batch_first(pair):
    torch.manual_seed(2)
    bf = Recurrent(batch_first=True).double()
    sf = Recurrent(batch_first=False).double()
    sf.load_state_dict(bf.state_dict())
    x = torch.randn(5, 7, 3, dtype=torch.float64)  # (B, T, F)
    y = torch.randn(5, dtype=torch.float64)
    objective(_seeded(bf, 3), x, y, lambda o, t: (o.squeeze(-1) - t) ** 2, 50, pair=pair).backward()
    objective(
        _seeded(sf, 3),
        x.transpose(0, 1),
        y,
        lambda o, t: (o.squeeze(-1) - t) ** 2,
        50,
        pair=pair,
        batch_dim=1,
    ).backward()
    assert bf.rnn.logit_p.grad.abs().min() > 0
    for a, b in zip(_grads(bf), _grads(sf)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_batch_the_module_cannot_see_is_refused_then_coupled_form_works():
    class Flatten(nn.Module):  # (B, T, F) -> (B*T, F): the module no longer sees the batch
        def __init__(self):
            super().__init__()
            self.lbd = LearnableBernoulliDropout(nn.Linear(3, 1))

        def forward(self, x):
            return self.lbd(x.reshape(-1, 3)).reshape(x.shape[0], -1)

    m = Flatten()
    x, y = torch.randn(4, 5, 3), torch.randn(4)

    def nll(o, t):
        return (o.mean(1) - t) ** 2

    with pytest.raises(ValueError, match="coupled=True"):
        objective(m, x, y, nll, 10)
    objective(m, x, y, nll, 10, coupled=True).backward()
    assert torch.isfinite(m.lbd.logit_p.grad).all()
    with pytest.raises(ValueError, match="batch_dim"):
        LearnableBernoulliDropout(nn.Conv1d(2, 2, 1), batch_dim=1)
    with pytest.raises(ValueError, match="batch_dim"):
        LearnableBernoulliDropout(nn.Linear(2, 2), batch_dim=-1)


# ------------------------------------------------------------------------------------------------
# Uniforms in float32 whatever the activation dtype
# ------------------------------------------------------------------------------------------------


def _record_uniforms(model: nn.Module) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, LearnableBernoulliDropout):
            draw = m._uniforms

            def spy(shape, bd, dtype, x, draw=draw):
                u = draw(shape, bd, dtype, x)
                dtypes.append(u.dtype)
                return u

            m._uniforms = spy
    return dtypes


def _record_masks(model: nn.Module) -> list[torch.Tensor]:
    masks: list[torch.Tensor] = []
    for m in model.modules():
        if isinstance(m, LearnableBernoulliDropout):
            m.layer.register_forward_pre_hook(lambda mod, a: masks.append(a[0] != 0))
    return masks


def _small_net() -> nn.Sequential:
    torch.manual_seed(4)
    net = nn.Sequential(
        LearnableBernoulliDropout(nn.Linear(6, 8)),
        nn.Tanh(),
        LearnableBernoulliDropout(nn.Linear(8, 1), estimator="arm"),
    )
    with torch.no_grad():  # logits exactly representable in bfloat16 and float16
        net[0].logit_p.copy_(torch.tensor([-1.5, -0.5, 0.25, 1.0, 0.75, -2.0]))
        net[2].logit_p.copy_(torch.linspace(-1.75, 1.75, 8))
    return net


@pytest.mark.parametrize("mode", ["bfloat16", "float16", "autocast"])
def test_low_precision_activations_use_float32_uniforms_and_the_same_masks(mode):
    x = torch.randn(64, 6) + 2.0  # away from zero: a zero input means a dropped unit
    y = torch.randn(64)

    def run(net, inputs):
        masks, dtypes = _record_masks(net), _record_uniforms(net)
        for m in (net[0], net[2]):
            m.generator = torch.Generator().manual_seed(9)
        if mode == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = objective(net, inputs, y, lambda o, t: (o.squeeze(-1).float() - t) ** 2, 99)
        else:
            loss = objective(net, inputs, y, lambda o, t: (o.squeeze(-1).float() - t) ** 2, 99)
        loss.backward()
        return masks, dtypes, net[0].logit_p.grad.float()

    ref_masks, ref_dtypes, ref_grad = run(_small_net(), x)
    low = _small_net()
    if mode != "autocast":
        low = low.to(getattr(torch, mode))
        xin = x.to(getattr(torch, mode))
    else:
        xin = x
    masks, dtypes, grad = run(low, xin)
    assert ref_dtypes == dtypes == [torch.float32] * 2  # 2 modules, drawn in the first pass
    assert len(masks) == len(ref_masks) == 4
    for a, b in zip(masks, ref_masks):
        assert torch.equal(a, b)
    # same masks and float32 coefficients: the rate gradient differs only by the low-precision
    # forward pass (bfloat16 keeps 8 bits)
    assert torch.allclose(grad, ref_grad, rtol=0.1, atol=0.02 * ref_grad.abs().max())


def test_bfloat16_masks_keep_with_the_exact_probability():
    m = LearnableBernoulliDropout(num_features=50, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.logit_p.fill_(1.8)  # keep probability sigmoid(-1.8) = 0.1419
    keep = torch.sigmoid(torch.tensor(-1.8, dtype=torch.float64)).item()
    x = torch.ones(200_000, 50, dtype=torch.bfloat16)
    kept = (m(x) != 0).double().mean().item()
    se = (keep * (1 - keep) / x.numel()) ** 0.5
    assert abs(kept - keep) < 4.5 * se, (kept, keep, se)
    # bfloat16 uniforms would be off by many standard errors: the check has power
    u = torch.rand(x.shape, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    biased = (u < torch.sigmoid(torch.tensor(-1.8, dtype=torch.bfloat16))).double().mean().item()
    assert abs(biased - keep) > 8 * se, (biased, keep, se)


# ------------------------------------------------------------------------------------------------
# Training outside objective: rates get only the pathwise part (warned once)
# ------------------------------------------------------------------------------------------------


def test_backward_outside_objective_warns_once(monkeypatch):
    monkeypatch.setattr(LearnableBernoulliDropout, "_warned_pathwise_only", False)
    m = LearnableBernoulliDropout(nn.Linear(3, 1))
    x = torch.randn(4, 3)
    m(x).sum()  # a forward alone (no backward reaches the rates) does not warn
    with pytest.warns(UserWarning, match="outside bayesdrop.objective"):
        m(x).sum().backward()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x).sum().backward()  # once only


def test_no_warning_inside_objective_nor_in_eval(monkeypatch):
    import warnings

    monkeypatch.setattr(LearnableBernoulliDropout, "_warned_pathwise_only", False)
    m = nn.Sequential(nn.Linear(3, 3), LearnableBernoulliDropout(nn.Linear(3, 1)))
    x, y = torch.randn(4, 3), torch.randn(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pair in ("nograd", "concat"):
            objective(m, x, y, lambda o, t: (o.squeeze(-1) - t) ** 2, 10, pair=pair).backward()
        m.eval()
        m[1].mc_sampling = True
        m(x).sum().backward()  # MC sampling in eval mode is not training
    assert LearnableBernoulliDropout._warned_pathwise_only is False


def test_fused_column_norms_match_autograd_bit_for_bit():
    from bayesdrop.functional.bernoulli import column_sq_norms

    w = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, dtype=torch.float64)
    (fused,) = torch.autograd.grad((column_sq_norms(w) * g).sum(), w)
    (plain,) = torch.autograd.grad((w.pow(2).sum(0) * g).sum(), w)
    assert torch.equal(column_sq_norms(w), w.pow(2).sum(0)) and torch.equal(fused, plain)
    assert torch.autograd.gradcheck(column_sq_norms, (w,))
    with pytest.raises(ValueError, match="matrix"):
        column_sq_norms(torch.randn(3))
    # the module's KL is Gal's formula with these norms, gradients included
    m = LearnableBernoulliDropout(nn.Linear(5, 3), length_scale=0.7).double()
    m.kl().backward()
    expected = m.layer.weight.detach() * 0.7**2 * (1 + torch.exp(m.logit_p.detach()))
    assert torch.allclose(m.layer.weight.grad, expected, rtol=1e-12)


@pytest.mark.parametrize("estimator", ["arm", "disarm"])
def test_summed_coefficient_equals_the_full_coefficient_summed(estimator):
    """The surrogate sums each estimator's coefficient over the entries that share a rate from
    the draws directly; it must equal the full per-entry coefficient tensor summed (float64)."""
    from bayesdrop.estimators import COEFFICIENTS, antithetic_masks
    from bayesdrop.nn.learnable_bernoulli import _Draw, _summed_coefficient

    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, 7, 3, generator=g, dtype=torch.float64)
    for phi in (torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64), torch.tensor([0.7]).double()):
        z1, z2 = antithetic_masks(phi, u)
        d = _Draw(u, z1, z2, 0)
        for dims in ([1], [0, 1], [1, 2] if phi.numel() == 1 else [1]):
            full = COEFFICIENTS[estimator](u, z1, z2, phi).sum(dims, keepdim=True)
            summed = _summed_coefficient(estimator, COEFFICIENTS[estimator], d, phi, dims)
            torch.testing.assert_close(summed.expand_as(full), full, rtol=1e-12, atol=1e-12)
