"""DropPath: a learned drop rate per residual block, checked against exact enumeration.

A tiny residual network with two learned drop-path blocks and a batch of two has four Bernoulli
variables (two blocks times two examples). The exact expected loss is summed over all 2^4 joint
masks and differentiated by autograd; objective()'s ARM/DisARM gradient is integrated exactly over
its uniforms (the regions in which the antithetic masks are constant) and must agree to rounding,
and its Monte Carlo mean with real random draws must agree within a few standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop import (
    ConcreteDropout,
    LearnableBernoulliDropout,
    MCDropout,
    kl_divergence,
    mc_sampling,
    objective,
    rate_parameters,
)
from bayesdrop.nn import DropPath
from tests.conftest import all_masks, antithetic_regions, assert_within_se, bernoulli_log_prob

N_DATA = 20
X = torch.tensor([[0.5, -1.2], [1.5, 0.3]], dtype=torch.float64)
Y = torch.tensor([0.7, -0.4], dtype=torch.float64)

pytestmark = pytest.mark.usefixtures("one_thread")


def sq_err(out, y):
    return (out.squeeze(-1) - y) ** 2


class ResidualNet(nn.Module):
    """x -> x + dp1(tanh(f1 x)) -> h + dp2(tanh(f2 h)) -> head."""

    def __init__(self, estimator: str = "disarm") -> None:
        super().__init__()
        torch.manual_seed(5)
        self.f1, self.f2, self.head = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1)
        self.dp1 = DropPath(LearnableBernoulliDropout(num_features=1, estimator=estimator))
        self.dp2 = DropPath(LearnableBernoulliDropout(num_features=1, estimator=estimator))
        with torch.no_grad():
            self.dp1.dropout.logit_p.fill_(-0.7)  # p = 0.33
            self.dp2.dropout.logit_p.fill_(0.4)  # p = 0.60
        self.double()

    def forward(self, x):
        h = x + self.dp1(torch.tanh(self.f1(x)))
        h = h + self.dp2(torch.tanh(self.f2(h)))
        return self.head(h)


def exact_loss(net: ResidualNet, x=X, y=Y) -> torch.Tensor:
    """E_z[mean_i (out_i(z) - y_i)^2] - (H(keep_1) + H(keep_2))/N over the 2^4 joint masks,
    written out by hand (z[:, :2]: block 1 for examples 0, 1; z[:, 2:]: block 2)."""
    a1, a2 = net.dp1.dropout.logit_p, net.dp2.dropout.logit_p  # drop logits
    keep_logits = torch.cat([-a1, -a1, -a2, -a2])
    z = all_masks(4)  # (16, 4)
    prob = bernoulli_log_prob(z, keep_logits).exp()
    s1, s2 = 1 + torch.exp(a1), 1 + torch.exp(a2)  # 1 / (1 - p)
    h = x[None] + (z[:, :2, None] * s1) * torch.tanh(net.f1(x))[None]  # (16, 2, 2)
    h = h + (z[:, 2:, None] * s2) * torch.tanh(net.f2(h))
    out = net.head(h).squeeze(-1)  # (16, 2)
    data = (prob * ((out - y) ** 2).mean(1)).sum()
    p = torch.sigmoid(torch.cat([a1, a2]))
    neg_entropy = (p * torch.log(p) + (1 - p) * torch.log1p(-p)).sum()
    return data + neg_entropy / N_DATA


def grads(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def exact_gradient(net: ResidualNet) -> torch.Tensor:
    net.zero_grad()
    exact_loss(net).backward()
    return grads(net).clone()


def expected_estimate(net: ResidualNet, **kw) -> torch.Tensor:
    """E_u of objective()'s gradient, summing over the regions of the 4 uniforms (exact)."""
    keep = torch.cat([-net.dp1.dropout.logit_p.repeat(2), -net.dp2.dropout.logit_p.repeat(2)])
    u_all, prob = antithetic_regions(keep)
    total = torch.zeros(sum(p.numel() for p in net.parameters()), dtype=torch.float64)
    mods = (net.dp1.dropout, net.dp2.dropout)
    for u, w in zip(u_all, prob):
        for j, m in enumerate(mods):
            part = u[2 * j : 2 * j + 2]
            m._uniforms = lambda shape, bd, dtype, x, part=part: part.reshape(shape).to(dtype)
        net.zero_grad()
        objective(net, X, Y, sq_err, N_DATA, **kw).backward()
        total += w * grads(net)
    for m in mods:
        del m._uniforms
    return total


@pytest.mark.parametrize("estimator", ["arm", "disarm"])
@pytest.mark.parametrize("pair", ["nograd", "concat"])
def test_gradient_equals_the_enumerated_gradient(estimator, pair):
    net = ResidualNet(estimator)
    exact = exact_gradient(net)
    got = expected_estimate(net, pair=pair)
    assert torch.allclose(got, exact, rtol=1e-9, atol=1e-12), (got, exact)
    rates = torch.cat(
        [g for g, (n, _) in zip(split(got, net), net.named_parameters()) if "logit_p" in n]
    )
    assert rates.abs().min() > 1e-3  # the rates' gradient is not trivially zero


def split(flat: torch.Tensor, net: nn.Module) -> list[torch.Tensor]:
    return list(torch.split(flat, [p.numel() for p in net.parameters()]))


def test_monte_carlo_mean_within_standard_errors_of_the_exact_gradient():
    net = ResidualNet("disarm")
    exact = exact_gradient(net)
    gen = torch.Generator().manual_seed(7)
    net.dp1.dropout.generator = gen
    net.dp2.dropout.generator = gen
    reps, copies = 200, 50  # each objective call averages 50 copies of the 2 examples
    xb, yb = X.repeat(copies, 1), Y.repeat(copies)
    est = []
    for _ in range(reps):
        net.zero_grad()
        objective(net, xb, yb, sq_err, N_DATA).backward()
        est.append(grads(net).clone())
    assert_within_se(torch.stack(est), exact, k=4.5)


def test_pathwise_part_alone_is_biased():
    """The score-function part matters: dropping the surrogate changes the rates' gradient."""
    net = ResidualNet("disarm")
    exact = exact_gradient(net)
    rate_idx = [n.endswith("logit_p") for n, _ in net.named_parameters()]
    sizes = [p.numel() for p in net.parameters()]
    keep = torch.cat([torch.full((s,), r) for s, r in zip(sizes, rate_idx)])
    # pathwise only: differentiate the enumerated loss with the mask probabilities held fixed
    a1, a2 = net.dp1.dropout.logit_p, net.dp2.dropout.logit_p
    with torch.no_grad():
        keep_logits = torch.cat([-a1, -a1, -a2, -a2])
        prob = bernoulli_log_prob(all_masks(4), keep_logits).exp()
    z = all_masks(4)
    s1, s2 = 1 + torch.exp(a1), 1 + torch.exp(a2)
    h = X[None] + (z[:, :2, None] * s1) * torch.tanh(net.f1(X))[None]
    h = h + (z[:, 2:, None] * s2) * torch.tanh(net.f2(h))
    data = (prob * ((net.head(h).squeeze(-1) - Y) ** 2).mean(1)).sum()
    pathwise = torch.autograd.grad(data, [a1, a2])
    exact_rates = exact[keep]
    entropy_grad = torch.autograd.grad(kl_divergence(net) / N_DATA, [a1, a2])
    pathwise_total = torch.cat([g + e for g, e in zip(pathwise, entropy_grad)])
    assert (pathwise_total - exact_rates).abs().max() > 1e-2


def test_masks_drop_whole_examples_at_the_rate_and_scale_by_keep():
    torch.manual_seed(1)
    m = DropPath(LearnableBernoulliDropout(num_features=1, init_p=0.3)).train()
    x = torch.randn(20000, 3, 4).abs() + 0.1
    y = m(x)
    zero = (y == 0).reshape(20000, -1)
    assert torch.equal(zero.all(1), zero.any(1))  # an example is dropped whole or not at all
    kept = ~zero.any(1)
    assert torch.allclose(y[kept], x[kept] / 0.7, rtol=1e-6)  # inverted-dropout scale
    values = kept.double()
    dropped = 1 - values.mean()
    se = math.sqrt(0.3 * 0.7 / 20000)
    assert abs(float(dropped) - 0.3) < 4 * se


def test_eval_is_the_identity_and_mc_sampling_samples():
    m = DropPath(LearnableBernoulliDropout(num_features=1, init_p=0.5))
    x = torch.randn(64, 5)
    m.eval()
    assert m(x) is x
    torch.manual_seed(3)
    with mc_sampling(m):
        y = m(x)
    assert (y == 0).all(1).any() and not torch.equal(y, x)
    assert m(x) is x  # sampling off again


def test_prior_is_the_entropy_term_only():
    m = DropPath(LearnableBernoulliDropout(num_features=1, init_p=0.2, length_scale=3.0))
    p = torch.tensor(0.2)
    entropy = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
    assert torch.allclose(kl_divergence(m), -entropy, atol=1e-6)
    c = DropPath(ConcreteDropout(num_features=1, init_p=0.2, dropout_regularizer=2.0))
    assert torch.allclose(kl_divergence(c).float(), -2.0 * entropy, atol=1e-6)


def test_concrete_and_mc_inner_modules():
    torch.manual_seed(2)
    c = DropPath(ConcreteDropout(num_features=1, init_p=0.3)).train()
    x = torch.randn(8, 4, 3)
    y = c(x)
    ratio = (y / x).reshape(8, -1)
    assert torch.allclose(ratio.min(1).values, ratio.max(1).values)  # one value per example
    y.sum().backward()
    assert c.dropout.logit_p.grad is not None and c.dropout.logit_p.grad.abs() > 0
    assert rate_parameters(c) == [c.dropout.logit_p]
    mc = DropPath(MCDropout(0.4)).eval()
    with mc_sampling(mc):
        out = mc(torch.ones(200, 3, dtype=torch.float64))
    assert torch.allclose(out.unique(), torch.tensor([0.0, 1 / 0.6], dtype=torch.float64))


def test_state_dict_round_trip_and_repr():
    a = DropPath(LearnableBernoulliDropout(num_features=1, init_p=0.15))
    b = DropPath(LearnableBernoulliDropout(num_features=1, init_p=0.5))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.p, b.p) and list(a.state_dict()) == ["dropout.logit_p"]
    assert "LearnableBernoulliDropout" in repr(a)


def test_bad_arguments():
    with pytest.raises(TypeError, match="dropout must be a bayesdrop dropout module"):
        DropPath(nn.Dropout(0.1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bare form"):
        DropPath(LearnableBernoulliDropout(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="one unit"):
        DropPath(LearnableBernoulliDropout(num_features=3))
    with pytest.raises(ValueError, match="batched"):
        DropPath(MCDropout(0.1))(torch.tensor(1.0))


def test_objective_rejects_a_batch_the_masks_do_not_match():
    """A block whose input does not have the batch first is refused, not silently biased."""

    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(3, 3)
            self.dp = DropPath(LearnableBernoulliDropout(num_features=1, init_p=0.2))

        def forward(self, x):
            return self.dp(self.f(x).T).T.sum(1)

    def nll(out, t):
        return F.mse_loss(out, t, reduction="none")

    with pytest.raises(ValueError, match="batch"):
        objective(Transposed().train(), torch.randn(4, 3), torch.zeros(4), nll, 10)
