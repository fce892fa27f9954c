r"""The deterministic fast-dropout objective of a linear model and its exact gradient, in NumPy.

:class:`bayesdrop.linear_model.FastDropoutLogisticRegression` fits its deterministic objectives
the way scikit-learn fits its own logistic regression: L-BFGS (``scipy.optimize.minimize``) on a
flat float64 parameter vector, with the loss and its analytic gradient computed together in one
pass of NumPy (no autograd graph, no per-call validation). The loss is the mean over the
examples of the expected negative log-likelihood under the Gaussian approximation of the logits
(Wang & Manning 2013, *Fast dropout training*, ICML), plus :math:`\tfrac{l_2}2\|W\|^2`; it is the
same function as the torch path of the estimator (:func:`~bayesdrop.functional.fast_dropout.
expected_logistic_nll`, :func:`~bayesdrop.functional.fast_dropout.expected_softmax_cross_entropy`
on :func:`~bayesdrop.functional.fast_dropout.linear_logit_moments`), written out with its
derivatives:

* binary, closed form (eq. 10-11): :math:`\ell = \kappa\,\mathrm{softplus}(a\mu/\kappa)`,
  :math:`a = 1 - 2t`, :math:`\kappa = \sqrt{1 + \pi v/8}`, :math:`v = c\,(x^{\odot2})^\top
  w^{\odot 2}`, :math:`c = p/(1-p)`;
* binary, unscented: the three points :math:`\mu, \mu\pm\sqrt{3v}` with weights 2/3, 1/6, 1/6;
* several classes, unscented: the :math:`2K` points :math:`\mu \pm \sqrt K\,L_{:,j}` with
  :math:`LL^\top = \Sigma = c\,W\mathrm{diag}(x^{\odot2})W^\top` (full covariance: the
  gradient reaches :math:`\Sigma` through the reverse mode of the factorisation, Murray 2016,
  *Differentiation of the Cholesky decomposition*, equal to
  :math:`\bar\Sigma = L^{-\top}\Phi(L^\top\bar L)L^{-1}` with :math:`\Phi` the lower triangle
  with a halved diagonal) or :math:`\mu \pm \sqrt{K v_k}\,e_k` (diagonal covariance).

Every per-example :math:`K\times K` quantity is held class-major, ``(K, K, N)``, so each step of
the factorisation and of its reverse is one vectorised operation over the examples; while the
point offsets are moderate the softmax of the points is factorised,
:math:`e^{\mu_a + \delta_a} = e^{\mu_a}e^{\delta_a}`, so the exponentials are taken once per
offset and the sums over classes are small matrix products (a per-point stabilised softmax
takes over beyond :math:`|\delta| = 300`). Tests: the value and gradient against autograd of
the torch objective and against central finite differences, in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import expit

__all__ = ["FastDropoutLinearLoss"]

_PI_8 = math.pi / 8.0
#: largest |point offset| for which the softmax of the points is factorised (exp stays finite)
_SEPARABLE_MAX = 300.0


def _log_softmax_parts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``logsumexp(z, -1)`` and ``softmax(z, -1)`` (stable), computed together."""
    zmax = z.max(-1, keepdims=True)
    e = np.exp(z - zmax)
    s = e.sum(-1, keepdims=True)
    return (np.log(s) + zmax)[..., 0], e / s


class FastDropoutLinearLoss:
    r"""Mean fast-dropout loss of a linear model and its gradient, ``loss, grad = f(theta)``.

    ``theta`` is the flat float64 vector ``[W.ravel(), b]`` with ``W`` of shape ``(R, d)``
    (``R = 1`` for two classes, ``K`` otherwise) and ``b`` of shape ``(R,)``. The loss is

    .. math::
        f(W, b) = \frac1N\sum_{n=1}^N \mathbb E_{Y_n\sim\mathcal N(\mu_n,\Sigma_n)}^{\text{rule}}
        \bigl[-\log p(y_n\mid Y_n)\bigr] + \frac{l_2}2\|W\|^2,

    :math:`\mu_n = Wx_n + b`, :math:`\Sigma_n = \frac{p}{1-p} W\mathrm{diag}(x_n^{\odot2})W^\top`,
    with the rule (closed form or unscented) of the module docstring.

    Args:
        x: features ``(N, d)``, a float64 C-contiguous array or a ``scipy.sparse`` CSR matrix.
        y: class indices ``(N,)`` in ``[0, K)``.
        num_classes: ``K >= 2``.
        p: drop probability in ``[0, 1)``.
        l2: L2 penalty on ``W`` (not on ``b``).
        objective: ``"closed_form"`` or ``"unscented"`` (``"closed_form"``: two classes only).
        covariance: ``"full"`` or ``"diagonal"`` logit covariance (several classes).
    """

    def __init__(
        self,
        x: Any,
        y: np.ndarray,
        num_classes: int,
        p: float,
        l2: float,
        objective: str,
        covariance: str = "full",
    ) -> None:
        self.x = x
        self.x2 = x.multiply(x).tocsr() if hasattr(x, "multiply") else x * x
        self.y = np.asarray(y, dtype=np.int64)
        self.n, self.d = x.shape
        self.k = num_classes
        self.rows = 1 if num_classes == 2 else num_classes
        self.c = p / (1.0 - p)
        self.l2 = l2
        self.objective = objective
        self.covariance = covariance
        if num_classes > 2:
            self.onehot = np.zeros((self.n, num_classes))
            self.onehot[np.arange(self.n), self.y] = 1.0
            self.onehot_t = np.ascontiguousarray(self.onehot.T)
            cols, rows = np.triu_indices(num_classes)  # lower triangle, packed column by column
            self._pack = (rows, cols)
            self._offsets = np.flatnonzero(rows == cols)  # where each column starts (diagonal)
            self._diag = np.arange(num_classes)
            self._examples = np.arange(self.n)
            ones = np.ones((num_classes, num_classes))
            self._before = np.tril(ones, -1)  # [j, a] = 1 for a < j
            self._after = np.triu(ones, 1)  # [a, j] = 1 for j > a
            self._by_col = (cols == self._diag[:, None]).astype(np.float64)  # (K, packed)
            self._by_row = (rows == self._diag[:, None]).astype(np.float64)
            self._others = 1.0 - np.eye(num_classes)
        self._buf: dict[str, np.ndarray] | None = None
        self._xt = x.T.tocsr() if hasattr(x, "multiply") else np.ascontiguousarray(x.T)
        self._x2t = self.x2.T.tocsr() if hasattr(x, "multiply") else np.ascontiguousarray(self.x2.T)

    def _rmm(self, x: Any, m: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``m @ x.T`` ``(R, N)`` into ``out`` for ``x`` = ``self.x`` or ``self.x2``."""
        xt = self._xt if x is self.x else self._x2t
        if isinstance(xt, np.ndarray):
            return np.matmul(m, xt, out=out)
        out[...] = (x @ m.T).T
        return out

    def _lmm(self, a: np.ndarray, x: Any) -> np.ndarray:
        """``a @ x`` ``(R, d)`` for ``a`` ``(R, N)``."""
        if isinstance(x, np.ndarray):
            return a @ x
        xt = self._xt if x is self.x else self._x2t
        return np.asarray(xt @ a.T).T

    @property
    def size(self) -> int:
        """Length of ``theta``."""
        return self.rows * (self.d + 1)

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``W`` ``(R, d)`` and ``b`` ``(R,)`` from the flat vector."""
        r, d = self.rows, self.d
        return theta[: r * d].reshape(r, d), theta[r * d :]

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = self.unpack(theta)
        gb: Any
        if self.rows == 1:
            value, gw, gb0 = self._binary(w[0], b[0])
            gw, gb = gw[None], np.array([gb0])
        elif self.covariance == "full" and self.c > 0:
            value, gw, gb = self._multiclass_full(w, b)
        else:
            value, gw, gb = self._multiclass_diagonal(w, b)
        if self.l2 > 0:
            value += 0.5 * self.l2 * float(np.dot(theta[: w.size], theta[: w.size]))
            gw = gw + self.l2 * w
        return float(value), np.concatenate([gw.ravel(), gb])

    # ------------------------------------------------------------------ two classes
    def _binary(self, w: np.ndarray, b: float) -> tuple[float, np.ndarray, float]:
        n, c = self.n, self.c
        mu = self.x @ w + b
        a = 1.0 - 2.0 * self.y  # t = 1 -> -1, t = 0 -> +1: loss softplus(a * logit)
        v = self.x2 @ (c * w * w) if c > 0 else np.zeros(n)
        if self.objective == "closed_form":
            kappa = np.sqrt(1.0 + _PI_8 * v)
            z = a * mu / kappa
            sp = np.logaddexp(0.0, z)
            sig = expit(z)
            value = float((kappa * sp).sum())
            d_mu = a * sig
            d_v = (sp - z * sig) * (0.5 * _PI_8) / kappa
        else:  # unscented: mu, mu +- sqrt(3 v) with weights 2/3, 1/6, 1/6
            s = np.sqrt(3.0 * v)
            pts = np.stack([mu, mu + s, mu - s])  # (3, N)
            wts = np.array([2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0])[:, None]
            z = a * pts
            value = float((wts * np.logaddexp(0.0, z)).sum())
            d_pts = wts * a * expit(z)
            d_mu = d_pts.sum(0)
            d_s = d_pts[1] - d_pts[2]
            pos = s > 0
            d_v = np.where(pos, d_s * 1.5 / np.where(pos, s, 1.0), 0.0)
        gw = self.x.T @ d_mu
        if c > 0:
            gw = gw + 2.0 * c * w * (self.x2.T @ d_v)
        return value / n, np.asarray(gw).ravel() / n, float(d_mu.sum()) / n

    # ------------------------------------------------------------------ several classes
    def _points_loss(
        self, mu: np.ndarray, step: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Unscented loss of the points ``mu +- step[:, j]``; gradients in ``mu`` and ``step``.

        ``step`` is ``(N, J, K)`` (point offsets); every one of the ``2J`` points has weight
        ``1 / (2J)``.
        """
        weight = 0.5 / step.shape[1]
        m = mu[:, None, :]
        lse_p, sm_p = _log_softmax_parts(m + step)
        lse_m, sm_m = _log_softmax_parts(m - step)
        target = (mu * self.onehot).sum(-1)  # the mu part of the target logit
        # the +-step parts of the target logit cancel between the pair of points
        value = weight * float((lse_p + lse_m).sum()) - 2.0 * step.shape[1] * weight * float(
            target.sum()
        )
        d_mu = weight * (sm_p.sum(1) + sm_m.sum(1)) - self.onehot
        d_step = weight * (sm_p - sm_m)
        return value, d_mu, d_step

    def _multiclass_full(self, w: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, Any]:
        """Full-covariance unscented loss, class-major: every per-example ``K x K`` quantity is
        an array ``(K, K, N)`` (rows, columns, examples), so each step is one vectorised NumPy
        operation over the examples; the covariances and their adjoints are packed column by
        column (lower triangle, ``(K(K+1)/2, N)``); the buffers are allocated once per fit."""
        n, k, c = self.n, self.k, self.c
        buf = self._buffers()
        rows, cols = self._pack
        mu = self._rmm(self.x, w, buf["mu"])
        mu += b[:, None]
        low = self._rmm(self.x2, c * w[rows] * w[cols], buf["low"])
        chol, rdiag, tmp = buf["chol"], buf["rdiag"], buf["tmp"]
        _cholesky(low, self._offsets, chol, tmp, rdiag, buf["lchol"])
        root, wt = math.sqrt(k), 0.5 / k
        # |L_aj| <= sqrt(Sigma_aa): exp of the offsets cannot overflow below the bound
        if root * math.sqrt(max(float(low[self._offsets].max()), 0.0)) <= _SEPARABLE_MAX:
            value, d_mu, d_chol = self._points_separable(mu, buf)
        else:
            value, d_mu, d_chol = self._points_direct(mu, root * chol)
        d_chol *= root * wt
        d_mu *= wt
        d_mu -= self.onehot_t
        d_low = _cholesky_backward(chol, rdiag, d_chol, tmp, self._offsets, buf["d_low"])
        # Sigma_kl = c sum_i W_ki W_li x_i^2 (k >= l; the factorisation reads the lower triangle)
        a_low = self._lmm(d_low, self.x2)  # (K(K+1)/2, d): sum_n Sigma_bar_n,kl x_n^2
        a_full = buf["a_full"]
        a_full[rows, cols] = a_low
        a_full[cols, rows] = a_low
        a_full[self._diag, self._diag] *= 2.0  # d Sigma_kk / d W_ki = 2 c W_ki x_i^2
        gw = self._lmm(d_mu, self.x) + c * np.einsum("kli,li->ki", a_full, w)
        return value / n, gw / n, d_mu.sum(1) / n

    def _points_separable(
        self, mu: np.ndarray, buf: dict[str, np.ndarray]
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Sums over the ``2K`` points with ``exp(mu - m + step) = exp(mu - m) exp(step)``.

        Only the lower triangle of the offsets is non-zero (``L`` is lower triangular), so the
        exponentials are taken on the packed factor; the sums over a point's classes, over a
        class's points and over the zero offsets are small matrix products.
        """
        rows, cols = self._pack
        shift = mu.max(0)
        e_mu = np.exp(np.subtract(mu, shift, out=buf["e_mu"]), out=buf["e_mu"])  # (K, N)
        e_p = np.multiply(buf["lchol"], math.sqrt(self.k), out=buf["e_p"])
        np.exp(e_p, out=e_p)  # exp(+offset), packed lower
        e_m = np.divide(1.0, e_p, out=buf["e_m"])
        gathered = np.take(e_mu, rows, axis=0, out=buf["gathered"])
        e_p *= gathered
        e_m *= gathered
        prefix = self._before @ e_mu  # classes a < j of point j: offset 0
        s_p = self._by_col @ e_p + prefix  # (j, N): softmax denominators
        s_m = self._by_col @ e_m + prefix
        value = (
            0.5 / self.k * float(np.log(s_p).sum() + np.log(s_m).sum())
            + float(shift.sum())
            - float(mu[self.y, self._examples].sum())
        )
        inv_p, inv_m = 1.0 / s_p, 1.0 / s_m
        e_p *= np.take(inv_p, cols, axis=0, out=gathered)  # softmax of the point, class a >= j
        e_m *= np.take(inv_m, cols, axis=0, out=gathered)
        d_mu = self._by_row @ (e_p + e_m) + e_mu * (self._after @ (inv_p + inv_m))
        d_chol = buf["d_chol"]
        d_chol[rows, cols] = np.subtract(e_p, e_m, out=e_p)
        return value, d_mu, d_chol

    def _points_direct(
        self, mu: np.ndarray, step: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """The same sums with every point's softmax stabilised by its own maximum."""
        m = mu[:, None, :]
        lse_p, sm_p = _log_softmax_parts0(m + step)
        lse_m, sm_m = _log_softmax_parts0(m - step)
        value = 0.5 / self.k * float(lse_p.sum() + lse_m.sum()) - float((mu * self.onehot_t).sum())
        return value, sm_p.sum(1) + sm_m.sum(1), sm_p - sm_m

    def _buffers(self) -> dict[str, np.ndarray]:
        """Work arrays ``(K, K, N)`` of the full-covariance loss, allocated on first use (fresh
        large temporaries on every call would cost more in page faults than in arithmetic)."""
        if self._buf is None:
            k, n = self.k, self.n
            self._buf = {name: np.zeros((k, k, n)) for name in ("chol", "tmp", "d_chol")}
            for name in ("rdiag", "mu", "e_mu"):
                self._buf[name] = np.zeros((k, n))
            packed = ("low", "d_low", "lchol", "e_p", "e_m", "gathered")
            for name in packed:
                self._buf[name] = np.zeros((k * (k + 1) // 2, n))
            self._buf["a_full"] = np.zeros((k, k, self.d))
        return self._buf

    def _multiclass_diagonal(self, w: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, Any]:
        r"""Diagonal-covariance unscented loss: point :math:`\pm k` moves logit ``k`` only, so
        with :math:`e = \exp(\mu - \max\mu)` its softmax denominator is
        :math:`\sum_{a\ne k} e_a + e_k\exp(\pm s_k)`, and everything is ``(K, N)``."""
        n, k, c = self.n, self.k, self.c
        mu = self._rmm(self.x, w, np.empty((k, n))) + b[:, None]  # (K, N)
        var = self._rmm(self.x2, c * w * w, np.empty((k, n))) if c > 0 else np.zeros((k, n))
        s = np.sqrt(k * var)
        if float(s.max(initial=0.0)) > _SEPARABLE_MAX:
            return self._multiclass_diagonal_direct(w, b)
        wt = 0.5 / k
        shift = mu.max(0)
        e = np.exp(mu - shift)
        others = self._others @ e  # sum over a != k, without cancellation
        big = np.exp(s)
        s_p = others + e * big
        s_m = others + e / big
        value = wt * float(np.log(s_p).sum() + np.log(s_m).sum()) + float(shift.sum())
        value -= float(mu[self.y, self._examples].sum())
        inv_p, inv_m = 1.0 / s_p, 1.0 / s_m
        own_p, own_m = big * inv_p, inv_m / big  # softmax of class k at its own points / e_k
        total = (inv_p + inv_m).sum(0)
        d_mu = wt * e * (total - inv_p - inv_m + own_p + own_m) - self.onehot_t
        d_s = wt * e * (own_p - own_m)
        pos = s > 0
        d_var = np.where(pos, d_s * (0.5 * k) / np.where(pos, s, 1.0), 0.0)
        gw = self._lmm(d_mu, self.x)
        if c > 0:
            gw = gw + 2.0 * c * w * self._lmm(d_var, self.x2)
        return value / n, gw / n, d_mu.sum(1) / n

    def _multiclass_diagonal_direct(
        self, w: np.ndarray, b: np.ndarray
    ) -> tuple[float, np.ndarray, Any]:
        """The diagonal loss with every point's softmax stabilised by its own maximum."""
        n, k, c = self.n, self.k, self.c
        mu = self.x @ w.T + b
        var = self.x2 @ (c * w * w).T if c > 0 else np.zeros((n, k))
        s = np.sqrt(k * var)  # (N, K)
        step = np.zeros((n, k, k))
        idx = np.arange(k)
        step[:, idx, idx] = s
        value, d_mu, d_step = self._points_loss(mu, step)
        d_s = d_step[:, idx, idx]
        pos = s > 0
        d_var = np.where(pos, d_s * (0.5 * k) / np.where(pos, s, 1.0), 0.0)
        gw = np.asarray(self.x.T @ d_mu).T
        if c > 0:
            gw = gw + 2.0 * c * w * np.asarray(self.x2.T @ d_var).T
        return value / n, gw / n, d_mu.sum(0) / n


def _log_softmax_parts0(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``logsumexp(z, 0)`` and ``softmax(z, 0)`` (stable), computed together."""
    zmax = z.max(0)
    e = np.exp(z - zmax)
    s = e.sum(0)
    return np.log(s) + zmax, e / s


def _cholesky(
    low: np.ndarray,
    offsets: np.ndarray,
    chol: np.ndarray,
    tmp: np.ndarray,
    rdiag: np.ndarray,
    packed: np.ndarray,
) -> None:
    r"""Lower Cholesky factors of the covariances packed in ``low`` (lower triangle column by
    column, ``(K(K+1)/2, N)``; column ``j`` starts at row ``offsets[j]``) into ``chol``
    ``(K, K, N)`` and, packed like ``low``, into ``packed``; the reciprocals of their diagonals
    into ``rdiag`` ``(K, N)``.

    The jitter is that of :mod:`bayesdrop.functional.fast_dropout`: ``100 eps`` times each
    matrix's mean variance plus a tiny floor on the diagonal, quadrupled for the whole batch
    until every factorisation succeeds; it is a constant, not differentiated (as in the torch
    path). Each column of the factor (Cholesky-Crout) is one vectorised step over the examples.
    """
    k = chol.shape[0]
    scale = low[offsets].mean(0)
    jitter = 100.0 * np.finfo(np.float64).eps
    tiny = np.finfo(np.float64).tiny ** 0.5
    for _ in range(20):
        shift = jitter * scale + tiny
        for j in range(k):
            col = chol[j:, j]  # (K - j, N)
            seg = low[offsets[j] : offsets[j] + k - j]
            if j:
                t = np.multiply(chol[j:, :j], chol[j, :j], out=tmp[: k - j, :j])
                np.subtract(seg, t.sum(1), out=col)
            else:
                col[...] = seg
            col[0] += shift
            if not bool((col[0] > 0).all()):
                break
            np.sqrt(col[0], out=col[0])
            np.divide(1.0, col[0], out=rdiag[j])
            col[1:] *= rdiag[j]
            packed[offsets[j] : offsets[j] + k - j] = col
        else:
            return
        jitter *= 4.0
    raise ValueError("the logit covariances must be positive semi-definite, but are not")


def _cholesky_backward(
    chol: np.ndarray,
    rdiag: np.ndarray,
    d_chol: np.ndarray,
    tmp: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    r"""Reverse mode of :func:`_cholesky`: from :math:`\bar L` (``d_chol``, lower triangle
    read and overwritten) to the derivatives in the packed lower triangle of the covariance
    (``out``, ``(K(K+1)/2, N)``; an off-diagonal entry stands for the symmetric pair).

    The forward loop run backwards (Murray 2016, *Differentiation of the Cholesky
    decomposition*, unblocked algorithm): for :math:`j = K-1, \dots, 0`, with
    :math:`L_{ij} = (A_{ij} - L_{i,<j}\cdot L_{j,<j})/L_{jj}` and
    :math:`L_{jj} = (A_{jj} - \|L_{j,<j}\|^2)^{1/2}`, the adjoints flow to :math:`A_{ij}`,
    :math:`L_{jj}` and the earlier columns.
    """
    k = chol.shape[0]
    lb = d_chol
    for j in range(k - 1, -1, -1):
        seg = out[offsets[j] : offsets[j] + k - j]  # column j: (j, j), (j + 1, j), ...
        if j < k - 1:
            cb = np.multiply(lb[j + 1 :, j], rdiag[j], out=seg[1:])  # adjoint of A_ij - ...
            t = np.multiply(cb, chol[j + 1 :, j], out=tmp[0, : k - j - 1])
            lb[j, j] -= t.sum(0)
            if j:
                t = np.multiply(cb[:, None], chol[j, :j], out=tmp[: k - j - 1, :j])
                lb[j + 1 :, :j] -= t
                t = np.multiply(cb[:, None], chol[j + 1 :, :j], out=tmp[: k - j - 1, :j])
                lb[j, :j] -= t.sum(0)
        db = np.multiply(lb[j, j], 0.5 * rdiag[j], out=seg[0])  # L_jj = sqrt(A_jj - ...)
        if j:
            lb[j, :j] -= 2.0 * db * chol[j, :j]
    return out
