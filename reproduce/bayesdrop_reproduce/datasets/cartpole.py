r"""Cart-pole transition data for learning a dynamics model (Concrete replication §3.4).

The cart-pole system of Barto, Sutton & Anderson (1983) with the constants and explicit Euler
integration of gymnasium's ``CartPole-v1``. :func:`cartpole_step` implements the standard
equations of motion in code (vectorised, float64):

.. math::
    a_\text{tmp} = \frac{F + m_p l \dot\theta^2 \sin\theta}{m_c + m_p},\qquad
    \ddot\theta = \frac{g\sin\theta - \cos\theta\, a_\text{tmp}}
                       {l\,(4/3 - m_p\cos^2\theta/(m_c + m_p))},\qquad
    \ddot x = a_\text{tmp} - \frac{m_p l\,\ddot\theta\cos\theta}{m_c + m_p},

with :math:`F = \pm 10` N, :math:`g = 9.8`, :math:`m_c = 1`, :math:`m_p = 0.1`, half pole length
:math:`l = 0.5` and step :math:`\tau = 0.02` s. :func:`cartpole_transitions` collects transitions
under a uniformly random policy, resetting to a uniform state in :math:`[-0.05, 0.05]^4` whenever
the pole falls (:math:`|\theta| > 12°`) or the cart leaves :math:`|x| \le 2.4`. With
``simulator="gymnasium"`` (the default when gymnasium is installed, ``pip install gymnasium``) the
steps are taken by gymnasium's own ``CartPoleEnv`` from the same states and actions, so both
simulators give the same data.

Example:
    >>> data = cartpole_transitions(5, seed=0, simulator="equations")
    >>> tuple(data.states.shape), tuple(data.actions.shape), tuple(data.next_states.shape)
    ((5, 4), (5,), (5, 4))
"""

from __future__ import annotations

import importlib.util
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice, check_int

__all__ = [
    "CARTPOLE_CONSTANTS",
    "SIMULATORS",
    "Transitions",
    "cartpole_step",
    "cartpole_transitions",
]

#: Physical constants and limits, as in gymnasium's ``CartPole-v1``.
CARTPOLE_CONSTANTS = {
    "gravity": 9.8,
    "masscart": 1.0,
    "masspole": 0.1,
    "length": 0.5,  # half the pole's length
    "force_mag": 10.0,
    "tau": 0.02,
    "theta_threshold": 12 * 2 * math.pi / 360,
    "x_threshold": 2.4,
}

#: Accepted values of ``simulator`` in :func:`cartpole_transitions`.
SIMULATORS = ("auto", "gymnasium", "equations")


class Transitions(NamedTuple):
    """States ``(n, 4)`` = (x, ẋ, θ, θ̇), actions ``(n,)`` in {0, 1} (push left/right), next states."""

    states: Tensor
    actions: Tensor
    next_states: Tensor


def cartpole_step(state: Tensor, action: Tensor) -> Tensor:
    """One Euler step of the cart-pole equations for a batch of states ``(*, 4)``, actions ``(*)``.

    Example:
        >>> s = torch.zeros(1, 4, dtype=torch.float64)
        >>> cartpole_step(s, torch.tensor([1]))[0, 1].item()  # ẋ after pushing right for 0.02 s
        0.1951219512195122
    """
    if state.shape[-1:] != (4,):
        raise ValueError(f"state must have shape (*, 4), but got {tuple(state.shape)}")
    c = CARTPOLE_CONSTANTS
    total_mass = c["masspole"] + c["masscart"]
    polemass_length = c["masspole"] * c["length"]
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = torch.where(action.to(torch.bool), c["force_mag"], -c["force_mag"]).to(state.dtype)
    cos, sin = torch.cos(theta), torch.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
    theta_acc = (c["gravity"] * sin - cos * temp) / (
        c["length"] * (4.0 / 3.0 - c["masspole"] * cos**2 / total_mass)
    )
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    tau = c["tau"]
    return torch.stack(
        [
            x + tau * x_dot,
            x_dot + tau * x_acc,
            theta + tau * theta_dot,
            theta_dot + tau * theta_acc,
        ],
        dim=-1,
    )


def _gymnasium_stepper():  # type: ignore[no-untyped-def]
    try:
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "simulator='gymnasium' needs gymnasium: run `pip install gymnasium`, or pass "
            "simulator='equations'"
        ) from err
    env = CartPoleEnv()
    env.reset(seed=0)

    def step(state: np.ndarray, action: int) -> np.ndarray:
        env.state = state.copy()
        env.steps_beyond_terminated = None
        env.step(action)
        return np.asarray(env.state, dtype=np.float64)

    return step


def _equations_step(state: np.ndarray, action: int) -> np.ndarray:
    s = torch.from_numpy(state)
    return cartpole_step(s, torch.tensor(action)).numpy()


def cartpole_transitions(n: int, *, seed: int = 0, simulator: str = "auto") -> Transitions:
    """Collect ``n`` transitions of the cart-pole under a uniformly random policy.

    Args:
        n: number of transitions.
        seed: seeds the initial states and the actions (same data for both simulators).
        simulator: ``"gymnasium"`` (gymnasium's ``CartPoleEnv``), ``"equations"``
            (:func:`cartpole_step`) or ``"auto"`` (gymnasium when installed, else the equations).

    Returns:
        :class:`Transitions` as float32 (states) and int64 (actions) tensors.
    """
    n = check_int("n", n, minimum=1)
    check_choice("simulator", simulator, SIMULATORS)
    if simulator == "auto":
        simulator = "gymnasium" if importlib.util.find_spec("gymnasium") else "equations"
    step = _gymnasium_stepper() if simulator == "gymnasium" else _equations_step
    rng = np.random.default_rng(seed)
    c = CARTPOLE_CONSTANTS
    states = np.empty((n, 4))
    next_states = np.empty((n, 4))
    actions = np.empty(n, dtype=np.int64)
    state = rng.uniform(-0.05, 0.05, size=4)
    for i in range(n):
        action = int(rng.integers(2))
        nxt = step(state, action)
        states[i], actions[i], next_states[i] = state, action, nxt
        fallen = abs(nxt[0]) > c["x_threshold"] or abs(nxt[2]) > c["theta_threshold"]
        state = rng.uniform(-0.05, 0.05, size=4) if fallen else nxt
    return Transitions(
        torch.from_numpy(states).float(),
        torch.from_numpy(actions),
        torch.from_numpy(next_states).float(),
    )
