r"""Fast dropout: deterministic Gaussian moment propagation instead of sampled Bernoulli masks.

Wang & Manning (2013), *Fast dropout training*, ICML.
Under dropout the pre-activation :math:`Y = \sum_i w_i x_i z_i/(1-p_i)` of a unit is a weighted sum
of many independent Bernoulli variables; by Lyapunov's central limit theorem it is close to a
Gaussian with the exact mean and variance of :math:`Y`. Fast dropout carries these two moments
through the network (:func:`.fast_dropout_linear`, then :func:`relu_moments` or
:func:`sigmoid_moments` for the hidden units) and replaces the sampled loss by its expectation
under the output Gaussian:

* squared error, exactly (:func:`expected_squared_error`, eq. 16–17 of the paper);
* the logistic log-likelihood, in the closed form of eq. 10–11
  (:func:`expected_logistic_nll`), or by sampling / the unscented transform;
* the softmax cross-entropy, by sampling from the output Gaussian or by the unscented transform
  (:func:`expected_softmax_cross_entropy`); :func:`expected_softmax` gives the class
  probabilities the same way (used by :func:`bayesdrop.mc_predict` for moment models);
* the mean of a sigmoid, :math:`\mathbb E[\sigma(Y)]` (:func:`expected_sigmoid`), to
  :math:`10^{-9}` by a normal scale-mixture quadrature, or by the probit approximation of eq. 9.

For linear models on (possibly sparse) features, :class:`DesignMatrix` holds the features ready
for repeated products and :func:`linear_logit_moments` gives the exact logit moments, full
covariance included (the estimators of :mod:`bayesdrop.linear_model` are built on them).

Nothing is sampled in the deterministic variants, so training and test run the same computation
(no weight halving). Inputs are treated as independent (the paper's diagonal assumption); the
softmax functions also accept a full output covariance.

``p`` is a **drop** probability throughout; the mask is inverted,
:math:`z_i \sim \mathrm{Bernoulli}(1-p_i)` scaled by :math:`1/(1-p_i)`, so means are unchanged.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice, check_int
from .noise import standard_normal, uniform

__all__ = [
    "DesignMatrix",
    "Moments",
    "SIGMOID_VAR_A",
    "SIGMOID_VAR_B",
    "fast_dropout_linear",
    "relu_moments",
    "sigmoid_moments",
    "expected_squared_error",
    "expected_logistic_nll",
    "expected_softmax",
    "expected_softmax_cross_entropy",
    "expected_sigmoid",
    "linear_logit_moments",
    "as_feature_tensor",
    "check_moments",
    "check_drop_probability",
]

#: Slope :math:`a = 4 - 2\sqrt2` of :math:`\sigma(x)^2 \approx \sigma(a(x-b))` (paper eq. 12–13):
#: it matches the value and the slope of :math:`\sigma(x)^2` where :math:`\sigma(x)^2 = 1/2`.
SIGMOID_VAR_A = 4.0 - 2.0 * math.sqrt(2.0)
#: Offset :math:`b = -\log(\sqrt2 - 1)` of the same approximation (:math:`\sigma(b)^2 = 1/2`).
SIGMOID_VAR_B = -math.log(math.sqrt(2.0) - 1.0)

_PI_8 = math.pi / 8.0
_R_MAX = 40.0
_METHODS_LOGISTIC = ("closed_form", "sample", "unscented")
_METHODS_SOFTMAX = ("unscented", "sample")


class Moments(NamedTuple):
    """Mean and variance (never a standard deviation) of a Gaussian approximation."""

    mean: Tensor
    var: Tensor


# --------------------------------------------------------------------------- validation
def _values(t: Tensor) -> Tensor:
    return t.values() if t.layout != torch.strided else t


def _is_sparse(t: Tensor) -> bool:
    return t.layout != torch.strided


def check_moments(mean: Tensor, var: Tensor | None, *, names: tuple[str, str] = ("mean", "var")):
    """Check that ``mean`` is a finite tensor and ``var`` (if given) a finite, non-negative one.

    ``mean`` may be a sparse tensor (COO or CSR). Raises ``TypeError``/``ValueError`` naming the
    argument.
    """
    mname, vname = names
    if not isinstance(mean, Tensor):
        raise TypeError(f"{mname} must be a torch.Tensor, but got {type(mean).__name__}")
    if not mean.is_floating_point():
        raise TypeError(f"{mname} must be a floating-point tensor, but got dtype {mean.dtype}")
    mv = _values(mean.coalesce() if mean.layout == torch.sparse_coo else mean)
    if not bool(torch.isfinite(mv).all()):
        raise ValueError(f"{mname} must be finite, but it contains NaN or inf")
    if var is None:
        return
    if not isinstance(var, Tensor):
        raise TypeError(f"{vname} must be a torch.Tensor or None, but got {type(var).__name__}")
    vv = _values(var.coalesce() if var.layout == torch.sparse_coo else var)
    if not bool(torch.isfinite(vv).all()):
        raise ValueError(f"{vname} must be finite, but it contains NaN or inf")
    if bool((vv < 0).any()):
        raise ValueError(f"{vname} must be >= 0 (a variance), but it has negative entries")


def check_drop_probability(p: float | Tensor, name: str = "p") -> float | Tensor:
    """Check a drop probability (a number or a tensor of them) lies in ``[0, 1)``."""
    if isinstance(p, Tensor):
        if not p.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating-point tensor, got {p.dtype}")
        if not bool(((p >= 0) & (p < 1)).all()):  # also rejects NaN
            raise ValueError(f"{name} must be in [0, 1), but got values outside it")
        return p
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a float or a tensor, but got {type(p).__name__}")
    if not 0.0 <= float(p) < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1), but got {p}")
    return float(p)


def _check_layer(mean: Tensor, var: Tensor | None, weight: Tensor, p: float | Tensor) -> None:
    """Shapes of :func:`.fast_dropout_linear`'s arguments."""
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 2-d tensor (out_features, in_features), got {shape}")
    d = weight.shape[1]
    if mean.dim() < 1 or mean.shape[-1] != d:
        raise ValueError(
            f"mean must have shape (*, in_features={d}) to match weight, "
            f"but got {tuple(mean.shape)}"
        )
    if var is not None and var.shape != mean.shape:
        raise ValueError(
            f"var must have the shape of mean {tuple(mean.shape)}, but got {tuple(var.shape)}"
        )
    if isinstance(p, Tensor) and p.dim() > 0 and p.shape != (d,):
        raise ValueError(
            f"p must be a float, a 0-dim tensor or have shape (in_features={d},), "
            f"but got {tuple(p.shape)}"
        )


def _safe_sqrt(var: Tensor) -> Tensor:
    """``sqrt(var)`` for ``var >= 0`` whose gradient at 0 is 0 instead of inf."""
    pos = var > 0
    return torch.where(pos, torch.where(pos, var, torch.ones_like(var)).sqrt(), 0.0)


def _to_scipy(x: Tensor) -> Any:
    """A ``scipy.sparse`` CSR view of a CPU CSR/COO tensor (no copy of CSR buffers)."""
    import scipy.sparse as sp

    if x.layout == torch.sparse_csr:
        return sp.csr_matrix(
            (x.values().numpy(), x.col_indices().numpy(), x.crow_indices().numpy()),
            shape=tuple(x.shape),
        )
    x = x.coalesce()
    idx = x.indices().numpy()
    return sp.csr_matrix((x.values().numpy(), (idx[0], idx[1])), shape=tuple(x.shape))


class _ScipySparseMatmul(torch.autograd.Function):
    """``x @ w_t`` for a constant CPU sparse ``x`` through scipy (torch's sparse kernels are far
    slower on CPU); the backward is ``x.T @ grad``."""

    @staticmethod
    def forward(ctx: Any, x_sp: Any, w_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.x_sp = x_sp
        out = x_sp @ w_t.detach().numpy()
        return torch.from_numpy(np.ascontiguousarray(out, dtype=out.dtype)).to(w_t.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        g = ctx.x_sp.T @ grad.detach().numpy()
        return None, torch.from_numpy(np.ascontiguousarray(g)).to(grad.dtype)


def _mm(x: Tensor, w_t: Tensor) -> Tensor:
    """``x @ w_t`` for dense or sparse (COO/CSR, 2-d) ``x``."""
    if not _is_sparse(x):
        return x @ w_t
    if x.device.type == "cpu" and not x.requires_grad and w_t.dtype == x.dtype:
        return _ScipySparseMatmul.apply(_to_scipy(x), w_t)
    return torch.sparse.mm(x, w_t) if x.layout == torch.sparse_coo else x @ w_t


def _square(x: Tensor) -> Tensor:
    """Element-wise square that keeps a sparse layout."""
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(
            x.crow_indices(), x.col_indices(), x.values() ** 2, x.shape, dtype=x.dtype
        )
    if x.layout == torch.sparse_coo:
        x = x.coalesce()
        return torch.sparse_coo_tensor(x.indices(), x.values() ** 2, x.shape, dtype=x.dtype)
    return x * x


# --------------------------------------------------------------------------- hidden layers
def fast_dropout_linear(
    mean: Tensor,
    var: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    p: float | Tensor,
    *,
    validate: bool = True,
) -> Moments:
    r"""Exact mean and variance of a linear layer whose (independent) inputs go through dropout.

    For inputs :math:`x_i` with mean :math:`m_i` and variance :math:`v_i`, independent of each
    other and of the masks :math:`z_i \sim \mathrm{Bernoulli}(1-p_i)`, the output
    :math:`y_j = \sum_i W_{ji} x_i z_i/(1-p_i) + c_j` has

    .. math::
        \mathbb E[y_j] = \sum_i W_{ji} m_i + c_j,\qquad
        \mathrm{Var}[y_j] = \sum_i W_{ji}^2\,\frac{p_i\,m_i^2 + v_i}{1-p_i},

    because :math:`\mathbb E[(x_i z_i/(1-p_i))^2] = (m_i^2+v_i)/(1-p_i)`. With ``var = 0`` (data)
    this is the :math:`\sum_i p_i(1-p_i)(w_ix_i)^2` of eq. 4 of Wang & Manning (2013) in the
    inverted parameterisation; for hidden layers it is the variance of §3.2. The output units
    are correlated (they share the masks); only the per-unit variances are returned.

    Args:
        mean: input means :math:`m`, ``(*, in_features)``; may be a 2-d sparse tensor (COO/CSR).
        var: input variances :math:`v \ge 0`, same shape, or ``None`` for exactly known inputs.
        weight: :math:`W`, ``(out_features, in_features)``.
        bias: optional :math:`c`, ``(out_features,)`` (never dropped).
        p: drop probability in ``[0, 1)``: a float or a tensor of shape ``(in_features,)``.
        validate: check the arguments (``False`` skips the checks, for moments that a caller
            has already validated, as inside a network).

    Returns:
        :class:`Moments` ``(mean, var)``, each ``(*, out_features)`` (dense).

    Example:
        >>> import torch
        >>> w = torch.tensor([[1.0, 2.0]])
        >>> m, v = fast_dropout_linear(torch.tensor([[3.0, 1.0]]), None, w, None, 0.5)
        >>> m.tolist(), v.tolist()  # 1*9 + 4*1 = 13
        ([[5.0]], [[13.0]])
    """
    if validate:
        check_moments(mean, var)
        p = check_drop_probability(p)
        _check_layer(mean, var, weight, p)
    return _linear_moments(mean, var, weight, bias, p)


def _linear_moments(
    mean: Tensor, var: Tensor | None, weight: Tensor, bias: Tensor | None, p: float | Tensor
) -> Moments:
    """:func:`.fast_dropout_linear` without the argument checks (for validated inputs)."""
    keep = 1.0 - p
    w2 = weight * weight
    out_mean = _mm(mean, weight.t())
    if bias is not None:
        out_mean = out_mean + bias
    out_var = _mm(_square(mean), (w2 * (p / keep)).t())
    if var is not None:
        out_var = out_var + _mm(var, (w2 / keep).t())
    return Moments(out_mean, out_var)


def relu_moments(mean: Tensor, var: Tensor, *, validate: bool = True) -> Moments:
    r"""Exact mean and variance of :math:`\max(0, X)` for :math:`X \sim \mathcal N(\mu, s^2)`.

    With :math:`r = \mu/s`, :math:`\Phi` and :math:`\varphi` the standard normal CDF and density
    (paper eq. 13 for the mean),

    .. math::
        \mathbb E = \mu\Phi(r) + s\varphi(r),\qquad
        \mathrm{Var} = s^2\bigl[(r^2+1)\Phi(r) + r\varphi(r)\bigr] - \mathbb E^2
        = s^2\bigl[r^2\Phi(r)\Phi(-r) + \Phi(r) + r\varphi(r)(1 - 2\Phi(r)) - \varphi(r)^2\bigr].

    At :math:`s = 0` the result is :math:`(\max(0,\mu), 0)`, with finite gradients.

    Args:
        mean: :math:`\mu`, any shape.
        var: :math:`s^2 \ge 0`, same shape.
        validate: check that the moments are finite and the variances non-negative.

    Example:
        >>> import torch
        >>> m, v = relu_moments(torch.tensor([0.0]), torch.tensor([1.0]))
        >>> round(m.item(), 6), round(v.item(), 6)  # 1/sqrt(2 pi), 1/2 - 1/(2 pi)
        (0.398942, 0.340845)
    """
    if validate:
        check_moments(mean, var)
    return _relu_moments(mean, var)


def _relu_moments(mean: Tensor, var: Tensor) -> Moments:
    """:func:`relu_moments` without the argument checks."""
    s = _safe_sqrt(var)
    pos = s > 0
    # |r| > 40: Phi, phi saturate (bracket = 1 or 0); clamping avoids inf * 0 when s underflows
    r = (mean / torch.where(pos, s, torch.ones_like(s))).clamp(-_R_MAX, _R_MAX)
    cdf = torch.special.ndtr(r)
    sf = torch.special.ndtr(-r)
    pdf = torch.exp(-0.5 * r * r) / math.sqrt(2.0 * math.pi)
    out_mean = torch.where(pos, mean * cdf + s * pdf, F.relu(mean))
    bracket = r * r * cdf * sf + cdf + r * pdf * (sf - cdf) - pdf * pdf
    out_var = torch.where(pos, var * bracket.clamp_min(0.0), torch.zeros_like(var))
    return Moments(out_mean, out_var)


def sigmoid_moments(mean: Tensor, var: Tensor, *, validate: bool = True) -> Moments:
    r"""Approximate mean and variance of :math:`\sigma(X)` for :math:`X \sim \mathcal N(\mu, s^2)`.

    The mean uses :math:`\sigma(x) \approx \Phi(\sqrt{\pi/8}\,x)` (paper eq. 8–9, 12), the
    variance :math:`\sigma(x)^2 \approx \sigma(a(x-b))` with :math:`a = 4-2\sqrt2`,
    :math:`b = -\log(\sqrt2-1)` (eq. 11–13, matching value and slope where
    :math:`\sigma^2 = 1/2`):

    .. math::
        \mathbb E \approx \sigma\!\Bigl(\frac{\mu}{\sqrt{1+\pi s^2/8}}\Bigr),\qquad
        \mathrm{Var} \approx \sigma\!\Bigl(\frac{a(\mu-b)}{\sqrt{1+\pi a^2 s^2/8}}\Bigr)
            - \mathbb E^2 \quad(\text{clamped at } 0).

    Errors against numerical integration (tests/functional/test_fast_dropout.py, over
    :math:`|\mu| \le 8`, :math:`s \le 8`): mean at most 0.0148, variance at most 0.0271 (the
    variance approximation is not exactly 0 at :math:`s = 0`: there it is
    :math:`\sigma(a(\mu-b)) - \sigma(\mu)^2`, up to 0.0271).

    Args:
        mean: :math:`\mu`, any shape.
        var: :math:`s^2 \ge 0`, same shape.
        validate: check that the moments are finite and the variances non-negative.

    Example:
        >>> import torch
        >>> m, v = sigmoid_moments(torch.tensor([0.0]), torch.tensor([0.0]))
        >>> m.item()
        0.5
    """
    if validate:
        check_moments(mean, var)
    return _sigmoid_moments(mean, var)


def _sigmoid_moments(mean: Tensor, var: Tensor) -> Moments:
    """:func:`sigmoid_moments` without the argument checks."""
    out_mean = torch.sigmoid(mean * torch.rsqrt(1.0 + _PI_8 * var))
    a, b = SIGMOID_VAR_A, SIGMOID_VAR_B
    second = torch.sigmoid(a * (mean - b) * torch.rsqrt(1.0 + _PI_8 * a * a * var))
    return Moments(out_mean, (second - out_mean * out_mean).clamp_min(0.0))


# --------------------------------------------------------------------------- output layers
def expected_squared_error(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    r"""Exact :math:`\mathbb E_{X\sim\mathcal N(\mu,s^2)}[(X-t)^2] = s^2 + (\mu-t)^2` (eq. 16–17).

    Element-wise (sum over output units yourself). With input dropout on a linear model the
    :math:`s^2` term is the data-dependent L2 penalty :math:`\sum_j \frac{p}{1-p}w_j^2x_j^2`.

    Example:
        >>> import torch
        >>> expected_squared_error(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.0)).item()
        3.0
    """
    check_moments(mean, var)
    return var + (mean - target) ** 2


def _sigma_points(mean: Tensor, var: Tensor, kappa: float) -> tuple[Tensor, Tensor]:
    """Unscented sigma points ``(*, P, K)`` and their weights ``(P,)`` (diagonal or full var)."""
    k = mean.shape[-1]
    scale = k + kappa
    if var.shape == mean.shape:
        step = torch.diag_embed(_safe_sqrt(scale * var))  # row j: sqrt((K+kappa) v_j) e_j
    else:
        step = _cholesky(scale * var).transpose(-1, -2)  # row j: column j of the factor
    m = mean.unsqueeze(-2)
    points = torch.cat([m, m + step, m - step], dim=-2)
    w_side = 1.0 / (2.0 * scale)
    weights = torch.full((2 * k + 1,), w_side, dtype=mean.dtype, device=mean.device)
    weights[0] = kappa / scale
    return points, weights


def _gaussian_samples(
    mean: Tensor, var: Tensor, num_samples: int, generator: torch.Generator | None
) -> Tensor:
    """``num_samples`` reparameterised draws ``(*, S, K)`` from N(mean, diag var) or N(mean, cov)."""
    k = mean.shape[-1]
    shape = (*mean.shape[:-1], num_samples, k)
    eps = standard_normal(shape, dtype=mean.dtype, device=mean.device, generator=generator)
    m = mean.unsqueeze(-2)
    if var.shape == mean.shape:
        return m + _safe_sqrt(var).unsqueeze(-2) * eps
    return m + eps @ _cholesky(var).transpose(-1, -2)


@functools.lru_cache(maxsize=16)
def _qmc_normal_points(num_samples: int, k: int) -> np.ndarray:
    """``num_samples`` scrambled Sobol points mapped to standard normals, ``(S, K)`` (fixed seed)."""
    from scipy.special import ndtri
    from scipy.stats import qmc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # balance needs a power of 2; not required
        u = qmc.Sobol(d=k, scramble=True, seed=0).random(num_samples)
    return ndtri(np.clip(u, 1e-12, 1.0 - 1e-12))


def _check_softmax_args(mean: Tensor, var: Tensor) -> None:
    check_moments(mean, None)
    if not isinstance(var, Tensor):
        raise TypeError(f"var must be a torch.Tensor, but got {type(var).__name__}")
    if mean.dim() < 1:
        raise ValueError("mean must have a class dimension (last), but it is 0-dim")
    k = mean.shape[-1]
    if var.shape == mean.shape:
        check_moments(mean, var)
        return
    if var.shape != (*mean.shape, k):
        raise ValueError(
            f"var must have the shape of mean {tuple(mean.shape)} (variances) or "
            f"{(*mean.shape, k)} (covariances), but got {tuple(var.shape)}"
        )
    if not bool(torch.isfinite(var).all()):
        raise ValueError("var must be finite, but it contains NaN or inf")
    if bool((torch.diagonal(var, dim1=-2, dim2=-1) < 0).any()):
        raise ValueError("var (covariances) must have a non-negative diagonal, but it has not")


def _cholesky(cov: Tensor) -> Tensor:
    r"""Lower Cholesky factor of a positive *semi*-definite ``cov`` ``(*, K, K)``.

    Covariances of dropout logits are often singular (rank :math:`\le` the number of non-zero
    features), so a jitter of ``100 eps`` times the mean variance (plus a tiny absolute floor) is
    added to the diagonal, doubled until the factorisation succeeds.
    """
    k = cov.shape[-1]
    eye = torch.eye(k, dtype=cov.dtype, device=cov.device)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).detach()[..., None, None]
    jitter = 100.0 * torch.finfo(cov.dtype).eps
    tiny = torch.finfo(cov.dtype).tiny ** 0.5
    for _ in range(20):
        chol, info = torch.linalg.cholesky_ex(cov + (jitter * scale + tiny) * eye)
        if not bool((info > 0).any()):
            return chol
        jitter *= 4.0
    raise ValueError("var (covariances) must be positive semi-definite, but it is not")


def expected_logistic_nll(
    mean: Tensor,
    var: Tensor,
    target: Tensor,
    *,
    method: str = "closed_form",
    num_samples: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Expected negative log-likelihood of a logistic unit whose logit is :math:`\mathcal N(\mu, s^2)`.

    ``"closed_form"`` is eq. 10–11 of Wang & Manning (2013), from
    :math:`\sigma(x)\approx\Phi(\sqrt{\pi/8}\,x)`:

    .. math::
        \mathbb E[\log\sigma(Y)] \approx \kappa\,\log\sigma(\mu/\kappa),\qquad
        \kappa = \sqrt{1+\pi s^2/8},

    and :math:`1-\sigma(x)=\sigma(-x)` gives the other label, so for a target :math:`t\in[0,1]`

    .. math::
        -\mathbb E[\log p(t\mid Y)] \approx
        \kappa\bigl[t\,\mathrm{softplus}(-\mu/\kappa) + (1-t)\,\mathrm{softplus}(\mu/\kappa)\bigr].

    It is exact at :math:`s=0`; for large :math:`s` the true value grows like
    :math:`s/\sqrt{2\pi}\approx 0.399\,s` and the closed form like
    :math:`\sqrt{\pi/8}\log 2\,s \approx 0.434\,s`. **Error bound** (against adaptive
    quadrature, tests/functional/test_fast_dropout.py, :math:`|\mu| \le 3s` up to
    :math:`s = 50` and :math:`|\mu| \le 8` for :math:`s \in [0.25, 8]`): the absolute error is
    below :math:`0.0355\,s`, the large-:math:`s` limit
    :math:`(\sqrt{\pi/8}\log 2 - 1/\sqrt{2\pi})\,s = 0.03542\,s` being the worst case; it is
    at most 0.0012 at :math:`s = 0.25`, 0.0046 at :math:`s = 0.5`, 0.016 at :math:`s=1`, 0.049
    at :math:`s=2` and 0.086 at :math:`s=3`. ``"sample"`` averages ``num_samples`` reparameterised
    draws of :math:`Y` (unbiased, differentiable); ``"unscented"`` uses the three sigma points
    :math:`\mu, \mu\pm\sqrt3 s` with weights 2/3, 1/6, 1/6.

    Args:
        mean: logit means :math:`\mu`, any shape.
        var: logit variances :math:`s^2 \ge 0`, same shape.
        target: labels in ``[0, 1]`` (0/1 or soft), same shape.
        method: ``"closed_form"``, ``"sample"`` or ``"unscented"``.
        num_samples: number of draws for ``"sample"``.
        generator: random source for ``"sample"``.

    Returns:
        Element-wise expected NLL, shaped like ``mean``.

    Example:
        >>> import torch
        >>> nll = expected_logistic_nll(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0))
        >>> round(nll.item(), 6)  # log 2
        0.693147
    """
    check_choice("method", method, _METHODS_LOGISTIC)
    check_moments(mean, var)
    target = target.to(mean.dtype)
    if bool(((target < 0) | (target > 1)).any()):
        raise ValueError("target must be in [0, 1] (binary labels), but has values outside it")
    if method == "closed_form":
        kappa = torch.sqrt(1.0 + _PI_8 * var)
        z = mean / kappa
        return kappa * (target * F.softplus(-z) + (1.0 - target) * F.softplus(z))
    if method == "sample":
        check_int("num_samples", num_samples)
        y = _gaussian_samples(mean.unsqueeze(-1), var.unsqueeze(-1), num_samples, generator)[..., 0]
    else:
        s = _safe_sqrt(3.0 * var).unsqueeze(-1)
        y = torch.cat([mean.unsqueeze(-1), mean.unsqueeze(-1) + s, mean.unsqueeze(-1) - s], -1)
    t = target.unsqueeze(-1)
    losses = t * F.softplus(-y) + (1.0 - t) * F.softplus(y)
    if method == "sample":
        return losses.mean(-1)
    w = torch.tensor([2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0], dtype=mean.dtype, device=mean.device)
    return (losses * w).sum(-1)


def expected_softmax(
    mean: Tensor,
    var: Tensor,
    method: str = "unscented",
    *,
    num_samples: int = 100,
    generator: torch.Generator | None = None,
    kappa: float = 0.0,
    log: bool = False,
) -> Tensor:
    r"""Class probabilities :math:`\mathbb E_{Y\sim\mathcal N(\mu,\Sigma)}[\mathrm{softmax}(Y)]`.

    ``"unscented"`` (deterministic, Julier & Uhlmann; paper §2.2.2) averages the softmax over the
    :math:`2K+1` sigma points :math:`\mu` and :math:`\mu \pm \sqrt{K+\kappa}\,L_{:,j}`
    (:math:`LL^\top=\Sigma`; :math:`L = \mathrm{diag}(s)` for independent logits) with weights
    :math:`\kappa/(K+\kappa)` and :math:`1/(2(K+\kappa))`. The default :math:`\kappa = 0` gives
    the :math:`2K` equally weighted points :math:`\mu\pm\sqrt{K v_k}e_k` that
    :func:`bayesdrop.mc_predict` uses for the entropy terms; the weights stay non-negative, so the
    result is a probability vector. ``"sample"`` averages ``num_samples`` draws (differentiable).
    ``"qmc"`` is deterministic quasi-Monte Carlo: the average over ``num_samples`` scrambled Sobol
    points mapped to the Gaussian (the same points for every example, so each example's answer
    depends on its own moments only); its error falls roughly like ``1/num_samples``.
    ``"quadrature"`` (two classes only) is exact to :math:`10^{-9}`: the softmax of two logits is
    :math:`\sigma(Y_2 - Y_1)`, and the difference is Gaussian with mean :math:`\mu_2-\mu_1` and
    variance :math:`\Sigma_{11}+\Sigma_{22}-2\Sigma_{12}`, so :func:`.expected_sigmoid` applies.

    For two classes the unscented rule is coarse when one logit is known exactly, as for a
    binary model written as the class logits :math:`(0, Y)`: it averages
    :math:`\sigma(\mu)` (weight 1/2) and :math:`\sigma(\mu\pm\sqrt2 s)` (1/4 each), which can
    differ from the exact :math:`\mathbb E[\sigma(Y)]` by 0.04; use ``"quadrature"`` there.

    Args:
        mean: logit means, ``(*, K)``.
        var: logit variances ``(*, K)`` (independent logits, the paper's assumption) or
            covariances ``(*, K, K)``.
        method: ``"unscented"``, ``"sample"``, ``"qmc"`` or ``"quadrature"`` (``K = 2``).
        num_samples: number of draws for ``"sample"``, of points for ``"qmc"``.
        generator: random source for ``"sample"``.
        kappa: unscented spread parameter :math:`\kappa \ge 0`.
        log: return the logarithms of the probabilities, accurate where they underflow.

    Returns:
        Probabilities ``(*, K)`` summing to 1 (or their logarithms).

    Example:
        >>> import torch
        >>> probs = expected_softmax(torch.tensor([[0.0, 0.0, 2.0]]), torch.ones(1, 3))
        >>> round(probs.sum().item(), 6), probs.argmax().item()
        (1.0, 2)
    """
    check_choice("method", method, (*_METHODS_SOFTMAX, "qmc", "quadrature"))
    _check_softmax_args(mean, var)
    if method == "quadrature":
        k = mean.shape[-1]
        if k != 2:
            raise ValueError(f"method='quadrature' needs K = 2 classes, but mean has K = {k}")
        diff = mean[..., 1] - mean[..., 0]
        if var.shape == mean.shape:
            dvar = var[..., 0] + var[..., 1]
        else:
            dvar = (var[..., 0, 0] + var[..., 1, 1] - 2.0 * var[..., 0, 1]).clamp_min(0.0)
        return torch.stack(
            [expected_sigmoid(-diff, dvar, log=log), expected_sigmoid(diff, dvar, log=log)], -1
        )
    if method in ("sample", "qmc"):
        check_int("num_samples", num_samples)
        if method == "sample":
            y = _gaussian_samples(mean, var, num_samples, generator)
        else:
            k = mean.shape[-1]
            eps = torch.as_tensor(
                _qmc_normal_points(num_samples, k), dtype=mean.dtype, device=mean.device
            )
            if var.shape == mean.shape:
                y = mean.unsqueeze(-2) + _safe_sqrt(var).unsqueeze(-2) * eps
            else:
                y = mean.unsqueeze(-2) + eps @ _cholesky(var).transpose(-1, -2)
        if log:
            return torch.logsumexp(torch.log_softmax(y, -1), -2) - math.log(num_samples)
        return torch.softmax(y, -1).mean(-2)
    kappa = _check_kappa(kappa)
    points, weights = _sigma_points(mean, var, kappa)
    if log:  # weights are >= 0; a zero weight (kappa = 0) contributes nothing
        return torch.logsumexp(torch.log_softmax(points, -1) + weights.log().unsqueeze(-1), -2)
    return (torch.softmax(points, -1) * weights.unsqueeze(-1)).sum(-2)


def expected_softmax_cross_entropy(
    mean: Tensor,
    var: Tensor,
    target: Tensor,
    method: str = "unscented",
    *,
    num_samples: int = 100,
    generator: torch.Generator | None = None,
    kappa: float = 0.0,
) -> Tensor:
    r"""Expected cross-entropy :math:`\mathbb E_{Y\sim\mathcal N(\mu,\Sigma)}[-\log\mathrm{softmax}(Y)_t]`.

    The same sigma points / draws as :func:`expected_softmax` (paper §2.2.2 and §3.3: sampling
    from the output Gaussian, or the unscented transform as the deterministic option).

    Args:
        mean: logit means, ``(*, K)``.
        var: logit variances ``(*, K)`` or covariances ``(*, K, K)``.
        target: class indices, ``(*)`` (long).
        method: ``"unscented"`` or ``"sample"``.
        num_samples: number of draws for ``"sample"``.
        generator: random source for ``"sample"``.
        kappa: unscented spread parameter :math:`\kappa \ge 0`.

    Returns:
        Expected losses, shape ``(*)``.

    Example:
        >>> import torch
        >>> m = torch.tensor([[0.0, 0.0]])
        >>> ce = expected_softmax_cross_entropy(m, torch.zeros(1, 2), torch.tensor([1]))
        >>> round(ce.item(), 6)  # log 2
        0.693147
    """
    check_choice("method", method, _METHODS_SOFTMAX)
    _check_softmax_args(mean, var)
    if target.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"target must hold class indices (an integer tensor), got {target.dtype}")
    k = mean.shape[-1]
    if target.shape != mean.shape[:-1]:
        raise ValueError(
            f"target must have shape {tuple(mean.shape[:-1])}, but got {tuple(target.shape)}"
        )
    if bool(((target < 0) | (target >= k)).any()):
        raise ValueError(f"target must be class indices in [0, {k}), but has values outside it")
    if method == "sample":
        check_int("num_samples", num_samples)
        y = _gaussian_samples(mean, var, num_samples, generator)
        weights = None
    else:
        y, weights = _sigma_points(mean, var, _check_kappa(kappa))
    idx = target.long().unsqueeze(-1).unsqueeze(-1).expand(*y.shape[:-1], 1)
    losses = -torch.log_softmax(y, -1).gather(-1, idx).squeeze(-1)  # (*, P)
    if weights is None:
        return losses.mean(-1)
    return (losses * weights).sum(-1)


def _check_kappa(kappa: float) -> float:
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)):
        raise TypeError(f"kappa must be a number, but got {type(kappa).__name__}")
    if not (math.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa must be finite and >= 0, but got {kappa}")
    return float(kappa)


# --------------------------------------------------------------------------- mean of a sigmoid
def _scale_mixture_rule(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes :math:`\lambda_j = 4K_j^2` and weights of :math:`\sigma(x)\approx\sum_j w_j\Phi(x/\sqrt{\lambda_j})`.

    The logistic distribution is a normal scale mixture whose standard deviation is :math:`2K`,
    :math:`K` Kolmogorov-distributed (Andrews & Mallows 1974, *Scale mixtures of normal
    distributions*). The expectation over :math:`K` is taken in its quantile
    :math:`u \in (0, 1)` with ``n``-point Gauss–Legendre after the substitution
    :math:`u = t^3(10 - 15t + 6t^2)`, which flattens both ends (where the quantile function is
    steep).
    """
    from scipy.special import kolmogi

    t, w = np.polynomial.legendre.leggauss(n)
    t, w = (t + 1.0) / 2.0, w / 2.0

    def smooth(v: np.ndarray) -> np.ndarray:
        return v**3 * (10.0 - 15.0 * v + 6.0 * v * v)

    weights = w * 30.0 * t * t * (1.0 - t) ** 2
    k = kolmogi(smooth(1.0 - t))  # survival 1 - u, computed without cancellation
    return 4.0 * k * k, weights / weights.sum()


_MIX_LAMBDA, _MIX_WEIGHTS = _scale_mixture_rule()
_METHODS_SIGMOID = ("quadrature", "probit")


def expected_sigmoid(
    mean: Tensor, var: Tensor, *, method: str = "quadrature", log: bool = False
) -> Tensor:
    r""":math:`\mathbb E[\sigma(Y)]` for :math:`Y \sim \mathcal N(\mu, s^2)`: the probability of a
    logistic unit whose logit is Gaussian (a fast-dropout model's predictive probability).

    ``"quadrature"`` (default) uses that the logistic distribution is a normal scale mixture
    with standard deviation :math:`2K`, :math:`K` Kolmogorov-distributed (Andrews & Mallows
    1974), so :math:`\sigma(x) = \mathbb E_K[\Phi(x/2K)]` and

    .. math::
        \mathbb E[\sigma(Y)] = \mathbb E_K\Bigl[\Phi\Bigl(\frac{\mu}{\sqrt{4K^2+s^2}}\Bigr)\Bigr]
        \approx \sum_{j=1}^{32} w_j\,\Phi\Bigl(\frac{\mu}{\sqrt{\lambda_j+s^2}}\Bigr),

    a smooth integrand for every :math:`s` (Gauss–Hermite quadrature over :math:`Y` is not: its
    error reaches 0.05 at :math:`s = 64`). Error against adaptive quadrature
    (tests/functional/test_fast_dropout.py, :math:`s \le 200`, :math:`|\mu| \le 3s+8`): below
    :math:`10^{-9}`. ``"probit"`` is eq. 9 of Wang & Manning (2013),
    :math:`\sigma(\mu/\sqrt{1+\pi s^2/8})`, from :math:`\sigma(x)\approx\Phi(\sqrt{\pi/8}\,x)`,
    within 0.018 of the exact value. Both are exact at :math:`s = 0`, odd-symmetric
    (:math:`\mathbb E[\sigma(-Y)] = 1 - \mathbb E[\sigma(Y)]`) and above 1/2 exactly when
    :math:`\mu > 0`.

    In the lower tail (:math:`\mu < -s^2/2`) the quadrature is applied after exponential tilting,
    :math:`\mathbb E[\sigma(Y)] = e^{\mu+s^2/2}\,\mathbb E[\sigma(-Y')]`,
    :math:`Y'\sim\mathcal N(\mu+s^2, s^2)` (from :math:`\sigma(y) = e^y\sigma(-y)`), whose
    expectation is at least 1/2; so small probabilities, and ``log=True``, keep a relative
    accuracy of about :math:`10^{-9}` too, except for large :math:`s` with :math:`\mu` near
    :math:`-s^2/2`, where both terms of the split are small and only the absolute error bound
    holds.

    Args:
        mean: logit means :math:`\mu`, any shape.
        var: logit variances :math:`s^2 \ge 0`, same shape.
        method: ``"quadrature"`` or ``"probit"``.
        log: return :math:`\log\mathbb E[\sigma(Y)]`, accurate where the probability underflows.

    Returns:
        Probabilities (or their logarithms), shaped like ``mean``.

    Example:
        >>> import torch
        >>> p = expected_sigmoid(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
        >>> [round(v, 6) for v in p.tolist()]  # 1/2 by symmetry; sigmoid(2)
        [0.5, 0.880797]
    """
    check_choice("method", method, _METHODS_SIGMOID)
    check_moments(mean, var)
    if var.shape != mean.shape:
        raise ValueError(
            f"var must have the shape of mean {tuple(mean.shape)}, but got {tuple(var.shape)}"
        )
    if method == "probit":
        z = mean * torch.rsqrt(1.0 + _PI_8 * var)
        return F.logsigmoid(z) if log else torch.sigmoid(z)
    lam = torch.as_tensor(_MIX_LAMBDA, dtype=mean.dtype, device=mean.device)
    log_w = torch.as_tensor(_MIX_WEIGHTS, dtype=mean.dtype, device=mean.device).log()

    def log_mixture(m: Tensor) -> Tensor:
        z = m.unsqueeze(-1) * torch.rsqrt(lam + var.unsqueeze(-1))
        return torch.logsumexp(torch.special.log_ndtr(z) + log_w, -1)

    # lower tail: sigma(y) = e^y sigma(-y) and exponential tilting give
    # E sigma(Y) = exp(mu + s^2/2) E sigma(-Y'), Y' ~ N(mu + s^2, s^2), whose expectation is
    # >= 1/2 when mu < -s^2/2, so its logarithm keeps the quadrature's relative accuracy
    tilt = mean < -0.5 * var
    direct = log_mixture(torch.where(tilt, torch.zeros_like(mean), mean))
    tilted = mean + 0.5 * var + log_mixture(torch.where(tilt, -mean - var, torch.zeros_like(mean)))
    out = torch.where(tilt, tilted, direct)
    return out if log else out.exp()


# --------------------------------------------------------------------------- linear models
def as_feature_tensor(x: Any, dtype: torch.dtype = torch.float32) -> Tensor:
    """Turn features (tensor, torch sparse, ``scipy.sparse``, NumPy) into a tensor, checked finite.

    ``scipy.sparse`` matrices become torch CSR tensors; torch sparse tensors keep their layout
    (COO is coalesced); NumPy arrays are copied (read-only arrays are fine). Raises
    ``ValueError`` for NaN/inf or a shape other than 2-d, ``TypeError`` for other types.

    Example:
        >>> import scipy.sparse
        >>> as_feature_tensor(scipy.sparse.eye(2, format="csr")).layout
        torch.sparse_csr
    """
    if not isinstance(x, Tensor):
        import scipy.sparse as sp

        if sp.issparse(x):
            csr = sp.csr_matrix(x)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                x = torch.sparse_csr_tensor(
                    torch.from_numpy(csr.indptr.astype(np.int64)),
                    torch.from_numpy(csr.indices.astype(np.int64)),
                    torch.from_numpy(np.array(csr.data, dtype=np.float64)),
                    csr.shape,
                    dtype=dtype,
                )
        elif isinstance(x, np.ndarray):
            x = torch.tensor(x, dtype=dtype)
        else:
            raise TypeError(
                "x must be a torch.Tensor, a scipy.sparse matrix or a numpy array, "
                f"but got {type(x).__name__}"
            )
    if x.layout == torch.sparse_coo:
        x = x.coalesce()
    if not x.is_floating_point():
        x = x.to(dtype)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-d (examples, features), but got shape {tuple(x.shape)}")
    check_moments(x, None, names=("x", "var"))
    return x


class DesignMatrix:
    """Features ``x`` ``(N, d)`` prepared once for repeated products with weights.

    Sparse CPU features are held as ``scipy.sparse`` CSR matrices (``x`` and its element-wise
    square), so every loss evaluation is two sparse products and nothing is re-validated or
    re-converted (torch's CPU sparse kernels are far slower). Dense or GPU features stay tensors.
    Products are differentiable in the weights.

    Args:
        x: features, anything :func:`as_feature_tensor` accepts.
        dtype: floating dtype of the products.

    Example:
        >>> import torch
        >>> d = DesignMatrix(torch.tensor([[1.0, 2.0]]))
        >>> d.mm(torch.ones(2, 1)).tolist(), d.mm_square(torch.ones(2, 1)).tolist()
        ([[3.0]], [[5.0]])
    """

    def __init__(self, x: Any, dtype: torch.dtype = torch.float32) -> None:
        x = as_feature_tensor(x, dtype)
        self._setup(x if x.dtype == dtype else x.to(dtype))

    @classmethod
    def _checked(cls, x: Tensor) -> DesignMatrix:
        """A design of an already validated 2-d floating tensor (mini-batches of a checked one)."""
        out = cls.__new__(cls)
        out._setup(x)
        return out

    def _setup(self, x: Tensor) -> None:
        self.x = x
        self.n = int(self.x.shape[0])
        self._sp: Any = None
        if self.x.layout != torch.strided and self.x.device.type == "cpu":
            self._sp = _to_scipy(self.x)
            self._sp.sum_duplicates()
        self._sq: Any = None

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    def mm(self, w_t: Tensor) -> Tensor:
        """``x @ w_t``."""
        if self._sp is not None:
            return _ScipySparseMatmul.apply(self._sp, w_t)
        return _mm(self.x, w_t)

    def mm_square(self, w_t: Tensor) -> Tensor:
        """``(x * x) @ w_t`` (the square is computed once)."""
        if self._sq is None:
            self._sq = (
                self._sp.multiply(self._sp).tocsr() if self._sp is not None else _square(self.x)
            )
        if self._sp is not None:
            return _ScipySparseMatmul.apply(self._sq, w_t)
        return _mm(self._sq, w_t)

    def mm_masked(self, w_t: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
        """``(x * z / (1 - p)) @ w_t`` for one inverted Bernoulli mask ``z`` per entry.

        For sparse ``x`` only the stored (non-zero) entries are masked: zeros stay zero anyway.
        """
        if self._sp is not None:
            data = self._sp.data
            u_np = torch.rand(data.shape[0], dtype=torch.float64, generator=generator).numpy()
            masked = self._sp.copy()
            masked.data = data * ((u_np >= p) / (1.0 - p)).astype(data.dtype)
            return _ScipySparseMatmul.apply(masked, w_t)
        x = self.x
        vals = x.values() if x.layout != torch.strided else x
        u = uniform(vals.shape, dtype=vals.dtype, device=vals.device, generator=generator)
        dropped = vals * ((u >= p).to(vals.dtype) / (1.0 - p))
        return _mm(dropped if x.layout == torch.strided else _sparse_map(x, dropped), w_t)

    def rows(self, idx: Tensor) -> DesignMatrix:
        """The design of rows ``idx`` (mini-batches)."""
        if self._sp is not None:
            return DesignMatrix._checked(as_feature_tensor(self._sp[idx.numpy()], self.dtype))
        x = self.x
        if x.layout == torch.strided:
            return DesignMatrix._checked(x[idx])
        coo = x if x.layout == torch.sparse_coo else x.to_sparse_coo()
        return DesignMatrix._checked(coo.index_select(0, idx).coalesce())


def _sparse_map(x: Tensor, values: Tensor) -> Tensor:
    """A sparse tensor with the structure of ``x`` and new ``values``."""
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(
            x.crow_indices(), x.col_indices(), values, x.shape, dtype=values.dtype
        )
    return torch.sparse_coo_tensor(x.indices(), values, x.shape, dtype=values.dtype)


def linear_logit_moments(
    design: DesignMatrix,
    weight: Tensor,
    bias: Tensor | None,
    p: float,
    covariance: str = "diagonal",
) -> Moments:
    r"""Exact moments of the logits of a linear model with inverted dropout on its inputs.

    For data :math:`x` (known exactly), :math:`Y = W(x\odot z)/(1-p) + c`,
    :math:`z_i \sim \mathrm{Bernoulli}(1-p)`:

    .. math::
        \mathbb E[Y] = Wx + c,\qquad
        \mathrm{Cov}[Y_k, Y_l] = \frac{p}{1-p}\sum_i W_{ki}W_{li}\,x_i^2

    (:func:`.fast_dropout_linear` gives the diagonal; the logits are correlated because they share
    the masks).

    Args:
        design: the features ``(N, d)``.
        weight: :math:`W`, ``(R, d)``.
        bias: :math:`c`, ``(R,)`` or ``None``.
        p: drop probability in ``[0, 1)``.
        covariance: ``"diagonal"`` (variances ``(N, R)``) or ``"full"`` (``(N, R, R)``).

    Example:
        >>> import torch
        >>> d = DesignMatrix(torch.tensor([[3.0, 1.0]]))
        >>> w = torch.tensor([[1.0, 2.0], [1.0, -1.0]])
        >>> m, c = linear_logit_moments(d, w, None, 0.5, "full")
        >>> m.tolist(), c.tolist()  # 9 + 4, 9 - 2, 9 + 1
        ([[5.0, 2.0]], [[[13.0, 7.0], [7.0, 10.0]]])
    """
    check_choice("covariance", covariance, ("diagonal", "full"))
    p = float(check_drop_probability(p))
    mean = design.mm(weight.t())
    if bias is not None:
        mean = mean + bias
    c = p / (1.0 - p)
    r = weight.shape[0]
    if covariance == "diagonal":
        var = design.mm_square((c * weight * weight).t()) if c > 0 else torch.zeros_like(mean)
        return Moments(mean, var)
    if c == 0:
        return Moments(mean, mean.new_zeros(design.n, r, r))
    outer = (weight.unsqueeze(1) * weight.unsqueeze(0)).reshape(r * r, -1)
    return Moments(mean, design.mm_square((c * outer).t()).reshape(-1, r, r))
