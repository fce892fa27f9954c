r"""Temperature scaling: the standard post-hoc calibration baseline.

Guo, Pleiss, Sun & Weinberger (2017), *On Calibration of Modern Neural Networks*, ICML: divide
a trained classifier's logits by one scalar :math:`T > 0` fitted on held-out data,

.. math::
    \hat p(y \mid x) = \mathrm{softmax}(z(x) / T)_y,\qquad
    T^\star = \arg\min_T \frac1N\sum_{n=1}^N \Bigl[\log\sum_c e^{z_{nc}/T} - z_{n y_n}/T\Bigr].

It changes no prediction (the arg max is the same for every :math:`T`) and only the confidence,
so it is the baseline that learned dropout's calibration is compared with.

**Monte Carlo predictions.** For MC dropout and the other families, scale the *log of the mean
probabilities* over the passes: ``log_probs = mc_predict(model, x).probs.log()`` is a valid logit
vector (:math:`\mathrm{softmax}(\log\bar p) = \bar p`), and :math:`T = 1` returns the MC average
itself. Probabilities that underflowed to 0 give logits of :math:`-\infty`, which are allowed
(they stay at probability 0 for every :math:`T`), except on the true label of a calibration
example, where the NLL would be infinite for every :math:`T`.

**How T is fitted.** With :math:`\beta = 1/T` the NLL is convex in :math:`\beta` (a log-sum-exp of
linear functions minus a linear one), with

.. math::
    \frac{d\,\mathrm{NLL}}{d\beta} = \frac1N\sum_n \bigl(\mathbb E_{p_n}[z_n] - z_{n y_n}\bigr),

which increases with :math:`\beta`; its root is found by Brent's method in float64 inside
``bounds`` (a bound is returned when the root lies beyond it, e.g. ``T`` at the lower bound for
held-out data that the model separates with growing margins).

Example:
    >>> import torch
    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [4.0, 0.0]])
    >>> labels = torch.tensor([0, 1, 1, 0])  # 3 of 4 right: over-confident at T = 1
    >>> scaler = TemperatureScaling().fit(logits, labels)
    >>> round(scaler.temperature, 4)  # sigmoid(4 / T) = 3/4
    3.641
    >>> [round(v, 4) for v in scaler(logits)[0].tolist()]
    [0.75, 0.25]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["TemperatureScaling", "fit_temperature", "temperature_scale"]

#: default search interval for T
BOUNDS = (1e-2, 1e2)


def _as_logits(logits: Any, name: str = "logits") -> Tensor:
    if not isinstance(logits, Tensor):
        if isinstance(logits, np.ndarray):
            logits = torch.from_numpy(logits)
        else:
            raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(logits)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, but got dtype {logits.dtype}")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"{name} must have shape (N, C) with C >= 2 classes, but got {tuple(logits.shape)}"
        )
    if bool(torch.isnan(logits).any()) or bool((logits == math.inf).any()):
        raise ValueError(f"{name} must not contain NaN or +inf (-inf is a probability of 0)")
    if not bool(torch.isfinite(logits).any(1).all()):
        raise ValueError(f"every row of {name} needs a finite entry, but one is all -inf")
    return logits


def _check_labels(labels: Any, n: int, c: int) -> Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor or a numpy array, got {type(labels)}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must hold class indices (integers), but got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(
            f"labels must have shape ({n},) to match logits, got {tuple(labels.shape)}"
        )
    if bool(((labels < 0) | (labels >= c)).any()):
        raise ValueError(f"labels must be class indices in [0, {c}), but some are outside it")
    return labels.long()


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, but got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, but got {temperature}")
    return float(temperature)


def _nll_slope(z: np.ndarray, finite: np.ndarray, z_true: np.ndarray, beta: float) -> float:
    r""":math:`d\,\mathrm{NLL}/d\beta = \mathrm{mean}_n(\mathbb E_{p_n}[z_n] - z_{n y_n})` at
    :math:`\beta`; entries of :math:`-\infty` (``~finite``) have probability 0."""
    s = np.where(finite, beta * z, -np.inf)
    s = s - s.max(1, keepdims=True)
    e = np.exp(s)
    p = e / e.sum(1, keepdims=True)
    return float(((p * np.where(finite, z, 0.0)).sum(1) - z_true).mean())


def fit_temperature(
    logits: Tensor, labels: Tensor, *, bounds: tuple[float, float] = BOUNDS
) -> float:
    r"""The temperature :math:`T^\star` minimising the NLL of ``softmax(logits / T)`` on
    held-out ``(logits, labels)`` (Guo et al. 2017), in ``bounds``.

    Solves the stationarity condition
    :math:`\frac1N\sum_n(\mathbb E_{\mathrm{softmax}(z_n/T)}[z_n] - z_{ny_n}) = 0` (the
    derivative of the NLL in :math:`\beta = 1/T`, increasing in :math:`\beta`) by Brent's method
    in float64; returns the nearer bound when the root lies outside ``bounds``, and 1 when the
    NLL does not depend on :math:`T` (every row constant).

    Args:
        logits: held-out logits ``(N, C)`` (or ``log`` of MC-averaged probabilities; ``-inf``
            allowed except on the true label).
        labels: class indices ``(N,)`` in ``[0, C)``.
        bounds: ``(T_min, T_max)``, ``0 < T_min < T_max``.

    Returns:
        :math:`T^\star` as a float.
    """
    from scipy.optimize import brentq

    logits = _as_logits(logits)
    n, c = logits.shape
    labels = _check_labels(labels, n, c)
    if (
        not isinstance(bounds, tuple)
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
        or not 0 < bounds[0] < bounds[1]
    ):
        raise ValueError(f"bounds must be a tuple (T_min, T_max), 0 < T_min < T_max, got {bounds}")
    z = logits.detach().cpu().double().numpy()
    finite = np.isfinite(z)
    z_true = z[np.arange(n), labels.cpu().numpy()]
    if not bool(np.isfinite(z_true).all()):
        raise ValueError(
            "logits are -inf on the true label of some example (a probability of 0): the NLL "
            "is infinite for every temperature; clip the probabilities before taking the log"
        )
    lo_beta, hi_beta = 1.0 / bounds[1], 1.0 / bounds[0]
    slope_lo = _nll_slope(z, finite, z_true, lo_beta)
    slope_hi = _nll_slope(z, finite, z_true, hi_beta)
    if slope_lo >= 0 and slope_hi <= 0:  # flat: every row constant, T does not matter
        return 1.0
    if slope_lo >= 0:  # NLL increasing in beta on the interval: largest T
        return float(bounds[1])
    if slope_hi <= 0:  # still decreasing at the smallest T
        return float(bounds[0])
    beta = brentq(
        lambda b: _nll_slope(z, finite, z_true, b), lo_beta, hi_beta, xtol=1e-15, rtol=1e-15
    )
    return 1.0 / float(beta)


def temperature_scale(logits: Tensor, temperature: float, *, log: bool = False) -> Tensor:
    """``softmax(logits / temperature)`` (or its logarithm with ``log=True``), in the dtype of
    ``logits``; ``logits`` ``(N, C)`` may hold ``-inf`` (probability 0 for every T).

    Example:
        >>> import torch
        >>> temperature_scale(torch.tensor([[2.0, 0.0]]), 2.0).tolist()[0][0] > 0.7
        True
    """
    logits = _as_logits(logits)
    t = _check_temperature(temperature)
    scaled = logits / t
    return torch.log_softmax(scaled, -1) if log else torch.softmax(scaled, -1)


class TemperatureScaling:
    """Post-hoc temperature scaling (Guo et al. 2017): :meth:`fit` on held-out logits and
    labels, then call on new logits for calibrated probabilities.

    Args:
        bounds: search interval ``(T_min, T_max)`` for the temperature.

    Attributes:
        temperature: the fitted :math:`T` (``None`` before :meth:`fit`).
    """

    def __init__(self, bounds: tuple[float, float] = BOUNDS) -> None:
        self.bounds = bounds
        self.temperature: float | None = None

    def fit(self, logits: Tensor, labels: Tensor) -> TemperatureScaling:
        """Fit the temperature on held-out ``logits`` ``(N, C)`` and ``labels`` ``(N,)``
        (:func:`fit_temperature`); returns ``self``."""
        self.temperature = fit_temperature(logits, labels, bounds=self.bounds)
        return self

    def _fitted(self) -> float:
        if self.temperature is None:
            raise RuntimeError("TemperatureScaling is not fitted yet: call fit(logits, labels)")
        return self.temperature

    def __call__(self, logits: Tensor) -> Tensor:
        """Calibrated probabilities ``softmax(logits / T)``, ``(N, C)``."""
        return temperature_scale(logits, self._fitted())

    def log_probs(self, logits: Tensor) -> Tensor:
        """Calibrated log-probabilities ``log_softmax(logits / T)``, ``(N, C)``."""
        return temperature_scale(logits, self._fitted(), log=True)

    def __repr__(self) -> str:
        t = "unfitted" if self.temperature is None else f"temperature={self.temperature:.4g}"
        return f"TemperatureScaling({t})"
