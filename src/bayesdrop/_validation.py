"""Argument checks shared by every module: each error names the argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_probability",
    "check_positive",
    "check_choice",
    "check_finite",
    "check_int",
    "check_bool",
    "check_input_dtype",
]


def check_probability(
    name: str, value: float, *, low_open: bool = True, high_open: bool = True
) -> float:
    """Return ``value`` as a float after checking it lies in (0, 1) (bounds configurable)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, but got {type(value).__name__}")
    v = float(value)
    lo_ok = v > 0.0 if low_open else v >= 0.0
    hi_ok = v < 1.0 if high_open else v <= 1.0
    if not (lo_ok and hi_ok) or math.isnan(v):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, but got {value}")
    return v


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float after checking it is finite and > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, but got {type(value).__name__}")
    v = float(value)
    ok = v >= 0.0 if allow_zero else v > 0.0
    if not ok or not math.isfinite(v):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, but got {value}")
    return v


def check_int(name: str, value: int, *, minimum: int = 1) -> int:
    """Return ``value`` after checking it is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, but got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, but got {value}")
    return value


def check_bool(name: str, value: bool) -> bool:
    """Return ``value`` after checking it is a ``bool`` (a string such as ``"no"`` is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), but got {value!r}")
    return value


def check_input_dtype(
    x: Tensor, expected: torch.dtype | None, *, owner: str, name: str = "input"
) -> Tensor:
    """Check the dtype of a module's input before any work, naming the dtype it expects.

    The input must be a real floating-point tensor; when ``expected`` is given (the dtype of the
    parameters the input meets, e.g. a wrapped layer's weight) it must have that dtype, except
    under :func:`torch.autocast` for the input's device, where autocast chooses the precision.

    Args:
        x: the input.
        expected: the required dtype, or ``None`` for any real floating dtype.
        owner: the module's name, for the message.
        name: the argument's name, for the message.

    Raises:
        TypeError: ``x`` is not a tensor, is integer, boolean or complex, or (outside autocast)
            has another floating dtype than ``expected``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, but got {type(x).__name__}")
    dtype = x.dtype
    if not dtype.is_floating_point:
        want = str(expected) if expected is not None else "a floating-point dtype"
        hint = "complex inputs are not supported" if dtype.is_complex else "convert it with .to()"
        raise TypeError(
            f"{owner}: {name} must be a real floating-point tensor ({want}), but got {dtype}; "
            + hint
        )
    if expected is not None and dtype != expected:
        if torch.is_autocast_enabled(x.device.type):
            return x
        raise TypeError(
            f"{owner}: {name} must have the dtype of the module's parameters, {expected}, but "
            f"got {dtype}; convert the input (.to({expected})) or the module (.to({dtype})), or "
            "run under torch.autocast"
        )
    return x


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, but got {value!r}")
    return value


def check_finite(name: str, t: Tensor) -> Tensor:
    """Raise if ``t`` is not a tensor or contains NaN/inf."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, but got {type(t).__name__}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, but it contains NaN or inf")
    return t
