"""clamp_log_alpha and the variational-dropout KL sum."""

from __future__ import annotations

import pytest
import torch

from bayesdrop.functional import (
    KL_LOG_ALPHA_MIN,
    clamp_log_alpha,
    kl_log_uniform,
    variational_dropout_kl,
    weight_variance,
)

DT = torch.float64


def test_clamp_values() -> None:
    la = torch.tensor([-1e4, -25.0, -3.0, 0.0, 0.7, 1e4])
    out = clamp_log_alpha(la, max_log_alpha=0.5)
    assert out.tolist() == [KL_LOG_ALPHA_MIN, KL_LOG_ALPHA_MIN, -3.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clamp_gradient_passes_only_inwards(sign: float) -> None:
    la = torch.tensor([-30.0, -1.0, 0.0, 2.0], requires_grad=True)
    clamp_log_alpha(la, 0.0).backward(torch.full((4,), sign))
    assert la.grad is not None
    # Descent moves by -grad: with grad > 0 the value above the range may come back (pass), the
    # one below would move further out (blocked); the opposite for grad < 0.
    expected = [0.0, 1.0, 1.0, 1.0] if sign > 0 else [1.0, 1.0, 1.0, 0.0]
    assert (la.grad * sign).tolist() == expected


def test_clamp_does_not_trap_a_parameter_above_the_bound() -> None:
    # A plain clamp has zero gradient above the bound, so this parameter could never return.
    la = torch.nn.Parameter(torch.tensor([0.3]))
    opt = torch.optim.SGD([la], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        clamp_log_alpha(la, 0.0).sum().backward()  # loss increasing in alpha: pushes it down
        opt.step()
    assert float(la.detach()) < 0.0
    plain = torch.nn.Parameter(torch.tensor([0.3]))
    plain.clamp(max=0.0).sum().backward()
    assert float(plain.grad) == 0.0


def test_clamp_bad_range() -> None:
    with pytest.raises(ValueError, match="min_log_alpha"):
        clamp_log_alpha(torch.zeros(2), max_log_alpha=-30.0)


def test_kl_sum_is_per_weight_kingma() -> None:
    la = torch.tensor([-2.0, -0.5, 0.0], dtype=DT)
    counts = torch.tensor([1.0, 3.0, 5.0], dtype=DT)
    expected = sum(float(c * kl_log_uniform(v)) for c, v in zip(counts, la))
    assert float(variational_dropout_kl(la, counts)) == pytest.approx(expected)
    # Type A: one alpha per input unit with fan-out n equals the type-B KL of the tied weights.
    per_unit = torch.tensor([-1.0, -0.2, 0.0, -3.0], dtype=DT)
    tied = per_unit.expand(6, 4)  # (out, in) weight matrix, column i has alpha_i
    torch.testing.assert_close(variational_dropout_kl(per_unit, 6), variational_dropout_kl(tied))


@pytest.mark.parametrize("values", [[-3.0, -0.5, 0.0, 0.7], [-1e3, -25.0, -1.0, 0.0, 25.0, 1e3]])
def test_fused_kl_matches_elementwise_kl_and_its_gradient(values: list[float]) -> None:
    # An int multiplicity takes a fused path with a closed-form derivative; a tensor one the
    # elementwise autograd path. Both must agree, also where the [-20, 20] clamp is active.
    la1 = torch.tensor(values, dtype=DT, requires_grad=True)
    la2 = torch.tensor(values, dtype=DT, requires_grad=True)
    fused = variational_dropout_kl(la1, 7)
    plain = variational_dropout_kl(la2, torch.tensor(7.0, dtype=DT))
    torch.testing.assert_close(fused, plain)
    fused.backward()
    plain.backward()
    torch.testing.assert_close(la1.grad, la2.grad)


def test_clamp_fast_path_and_function_agree() -> None:
    inside = torch.tensor([-2.0, -0.5, 0.0], requires_grad=True)
    assert clamp_log_alpha(inside) is inside  # nothing to clamp: the tensor itself
    mixed = torch.tensor([-2.0, -0.5, 0.0, 0.5], requires_grad=True)
    out = clamp_log_alpha(mixed)
    out[:3].sum().backward()
    assert mixed.grad.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_kl_gradcheck() -> None:
    la = torch.linspace(-4.0, -0.1, 5, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: variational_dropout_kl(clamp_log_alpha(t), 3), (la,))


@pytest.mark.parametrize("la_shape", [(3, 4), (3, 1), (1,)])
def test_weight_variance_value_and_gradcheck(la_shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    la = (torch.rand(la_shape, generator=g, dtype=DT) - 2.0).requires_grad_(True)
    w = torch.randn(3, 4, generator=g, dtype=DT).requires_grad_(True)
    torch.testing.assert_close(weight_variance(la, w), la.exp() * w**2)
    assert torch.autograd.gradcheck(weight_variance, (la, w))


def test_weight_variance_zero_weights() -> None:
    la = torch.zeros(2, 3, requires_grad=True)
    w = torch.zeros(2, 3, requires_grad=True)
    weight_variance(la, w).sum().backward()
    assert torch.equal(la.grad, torch.zeros(2, 3)) and torch.equal(w.grad, torch.zeros(2, 3))


def test_fused_kl_in_chunks_matches_autograd() -> None:
    """A tensor larger than two chunks takes the chunked path (value and derivative in one
    cache-sized pass); same value and gradient as autograd through the formula, clamps included."""
    from bayesdrop.functional.variational import KL_CHUNK

    g = torch.Generator().manual_seed(0)
    values = torch.empty(2 * KL_CHUNK + 1001, dtype=DT).uniform_(-8.0, 0.0, generator=g)
    values[::9973] = 30.0  # above the [-20, 20] clamp
    values[5::9973] = -40.0  # below it
    fused_in = values.clone().requires_grad_(True)
    plain_in = values.clone().requires_grad_(True)
    fused = variational_dropout_kl(fused_in, 3)
    plain = variational_dropout_kl(plain_in, torch.tensor(3.0, dtype=DT))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-8)
    (0.7 * fused).backward()
    (0.7 * plain).backward()
    torch.testing.assert_close(fused_in.grad, plain_in.grad, rtol=1e-12, atol=1e-12)
