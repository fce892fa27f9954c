"""LearnableBernoulliDropout: masks per unit/channel/sequence, eval behaviour, prior, errors."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from bayesdrop import LearnableBernoulliDropout, objective
from bayesdrop.functional import bernoulli_entropy


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
