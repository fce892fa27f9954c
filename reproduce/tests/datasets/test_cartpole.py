from __future__ import annotations

import importlib.util

import pytest
import torch

from bayesdrop_reproduce.datasets.cartpole import (
    CARTPOLE_CONSTANTS,
    cartpole_step,
    cartpole_transitions,
)


def test_push_from_rest_matches_the_closed_form() -> None:
    # At θ = θ̇ = 0 the equations reduce to: temp = F/M, θ̈ = -temp / (l (4/3 - m_p/M)),
    # ẍ = temp - m_p l θ̈ / M; one Euler step gives ẋ = τ ẍ and θ̇ = τ θ̈.
    c = CARTPOLE_CONSTANTS
    m = c["masscart"] + c["masspole"]
    temp = c["force_mag"] / m
    theta_acc = -temp / (c["length"] * (4 / 3 - c["masspole"] / m))
    x_acc = temp - c["masspole"] * c["length"] * theta_acc / m
    out = cartpole_step(torch.zeros(4, dtype=torch.float64), torch.tensor(1))
    expected = torch.tensor([0.0, c["tau"] * x_acc, 0.0, c["tau"] * theta_acc], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_mirror_symmetry() -> None:
    # Reflecting the state (x, ẋ, θ, θ̇) -> -(...) and the push direction reflects the next state.
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.2
    a = torch.randint(0, 2, (50,), generator=gen)
    torch.testing.assert_close(cartpole_step(-s, 1 - a), -cartpole_step(s, a))


def test_gravity_pulls_a_tilted_pole_down() -> None:
    s = torch.tensor([[0.0, 0.0, 0.1, 0.0], [0.0, 0.0, -0.1, 0.0]], dtype=torch.float64)
    # with the push balanced out over both actions, θ̈ has the sign of θ
    mean_acc = (cartpole_step(s, torch.tensor([0, 0])) + cartpole_step(s, torch.tensor([1, 1])))[
        :, 3
    ]
    assert mean_acc[0] > 0 > mean_acc[1]


@pytest.mark.skipif(importlib.util.find_spec("gymnasium") is None, reason="pip install gymnasium")
def test_equations_reproduce_gymnasium_exactly() -> None:
    a = cartpole_transitions(400, seed=3, simulator="equations")
    b = cartpole_transitions(400, seed=3, simulator="gymnasium")
    assert torch.equal(a.actions, b.actions)
    torch.testing.assert_close(a.next_states, b.next_states, rtol=0, atol=1e-6)


def test_transitions_chain_and_reset() -> None:
    data = cartpole_transitions(300, seed=1, simulator="equations")
    chained = (data.states[1:] == data.next_states[:-1]).all(1)
    resets = ~chained
    # every break in the chain is a reset to the small initial box after the pole fell
    assert resets.any()
    assert (data.states[1:][resets].abs() <= 0.05).all()
    fell = (data.next_states[:-1][resets][:, 2].abs() > CARTPOLE_CONSTANTS["theta_threshold"]) | (
        data.next_states[:-1][resets][:, 0].abs() > CARTPOLE_CONSTANTS["x_threshold"]
    )
    assert fell.all()
    torch.testing.assert_close(
        cartpole_step(data.states.double(), data.actions).float(), data.next_states
    )


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="simulator must be one of"):
        cartpole_transitions(3, simulator="mujoco")
    with pytest.raises(ValueError, match="state must have shape"):
        cartpole_step(torch.zeros(3), torch.tensor(0))
