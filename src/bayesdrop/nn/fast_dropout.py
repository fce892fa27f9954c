r"""Fast dropout models (Wang & Manning 2013): deterministic Gaussian moments instead of masks.

* :class:`FastDropoutLinear` — a linear layer with input dropout that propagates
  ``(mean, var)`` exactly (:func:`~bayesdrop.functional.fast_dropout_linear`).
* :class:`FastDropoutMLP` — ReLU or sigmoid hidden units, moments carried through every layer;
  training and test are the same deterministic computation (no weight halving).
* :class:`FastDropoutLogisticRegression` — binary (closed-form objective, eq. 10–11) or
  multinomial (unscented transform) logistic regression with dropout on the inputs, with the
  Gaussian-sampling objective as an option.
* :class:`MCDropoutLogisticRegression` — the baseline that samples real Bernoulli masks.

Every fast-dropout model has ``output_moments(x) -> (mean, var)``: the Gaussian moments of its
output logits, shape ``(N, K)`` (binary logistic regression reports the two class logits
``(0, Y)``, so a softmax gives :math:`(1-\sigma(Y), \sigma(Y))`). :func:`bayesdrop.mc_predict`
answers these models from the moments, without sampling. ``forward`` returns the mean logits.

The logistic-regression models accept dense tensors, torch sparse (COO/CSR) tensors,
``scipy.sparse`` matrices and NumPy arrays, and train with :meth:`fit` (L-BFGS with a strong Wolfe
line search, or Adam).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_positive
from ..functional.fast_dropout import (
    Moments,
    _linear_moments,
    _mm,
    _relu_moments,
    _ScipySparseMatmul,
    _sigmoid_moments,
    _square,
    _to_scipy,
    check_drop_probability,
    check_moments,
    expected_logistic_nll,
    expected_softmax,
    expected_softmax_cross_entropy,
    expected_squared_error,
    fast_dropout_linear,
)
from ._base import DropoutModule

__all__ = [
    "FastDropoutLinear",
    "FastDropoutMLP",
    "FastDropoutLogisticRegression",
    "MCDropoutLogisticRegression",
    "as_feature_tensor",
]

_PI_8 = math.pi / 8.0


def as_feature_tensor(x: Any, dtype: torch.dtype = torch.float32) -> Tensor:
    """Turn features (tensor, torch sparse, ``scipy.sparse``, NumPy) into a tensor, checked finite.

    ``scipy.sparse`` matrices become torch CSR tensors; torch sparse tensors keep their layout
    (COO is coalesced). Raises ``ValueError`` for NaN/inf and ``TypeError`` for other types.

    Example:
        >>> import scipy.sparse
        >>> as_feature_tensor(scipy.sparse.eye(2, format="csr")).layout
        torch.sparse_csr
    """
    if not isinstance(x, Tensor):
        try:
            import scipy.sparse as sp
        except ImportError:  # pragma: no cover - scipy is a dependency
            sp = None
        if sp is not None and sp.issparse(x):
            csr = sp.csr_matrix(x)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                x = torch.sparse_csr_tensor(
                    torch.from_numpy(csr.indptr.astype(np.int64)),
                    torch.from_numpy(csr.indices.astype(np.int64)),
                    torch.from_numpy(np.asarray(csr.data, dtype=np.float64)),
                    csr.shape,
                    dtype=dtype,
                )
        elif isinstance(x, np.ndarray):
            x = torch.as_tensor(x, dtype=dtype)
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


class _Design:
    """Validated features ``x`` ``(N, d)`` prepared once for repeated products with weights.

    Sparse CPU features are held as ``scipy.sparse`` CSR matrices (``x`` and its element-wise
    square), so every loss evaluation is two sparse products and nothing is re-validated or
    re-converted (torch's CPU sparse kernels are far slower). Dense or GPU features stay tensors.
    """

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self.n = int(x.shape[0])
        self.sp: Any = None
        if x.layout != torch.strided and x.device.type == "cpu":
            self.sp = _to_scipy(x)
            self.sp.sum_duplicates()
        self._sq: Any = None

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def mm(self, w_t: Tensor) -> Tensor:
        """``x @ w_t``."""
        if self.sp is not None:
            return _sparse_product(self.sp, w_t)
        return _mm(self.x, w_t)

    def mm_square(self, w_t: Tensor) -> Tensor:
        """``(x * x) @ w_t`` (the square is computed once)."""
        if self._sq is None:
            self._sq = self.sp.multiply(self.sp).tocsr() if self.sp is not None else _square(self.x)
        if self.sp is not None:
            return _sparse_product(self._sq, w_t)
        return _mm(self._sq, w_t)

    def mm_masked(self, w_t: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
        """``(x * z / (1 - p)) @ w_t`` for one inverted Bernoulli mask ``z`` per entry.

        For sparse ``x`` only the stored (non-zero) entries are masked: zeros stay zero anyway.
        """
        if self.sp is not None:
            data = self.sp.data
            u_np = torch.rand(data.shape[0], dtype=torch.float64, generator=generator).numpy()
            masked = self.sp.copy()
            masked.data = data * ((u_np >= p) / (1.0 - p)).astype(data.dtype)
            return _sparse_product(masked, w_t)
        x = self.x
        vals = x.values() if x.layout != torch.strided else x
        u = torch.rand(vals.shape, dtype=vals.dtype, device=vals.device, generator=generator)
        dropped = vals * ((u >= p).to(vals.dtype) / (1.0 - p))
        return _mm(dropped if x.layout == torch.strided else _sparse_map(x, dropped), w_t)

    def rows(self, idx: Tensor) -> _Design:
        """The design of rows ``idx`` (mini-batches)."""
        if self.sp is not None:
            return _Design(as_feature_tensor(self.sp[idx.numpy()], self.dtype))
        x = self.x
        if x.layout == torch.strided:
            return _Design(x[idx])
        coo = x if x.layout == torch.sparse_coo else x.to_sparse_coo()
        return _Design(coo.index_select(0, idx).coalesce())


def _sparse_product(x_sp: Any, w_t: Tensor) -> Tensor:
    """``x_sp @ w_t`` for a constant ``scipy.sparse`` matrix, differentiable in ``w_t``."""
    return _ScipySparseMatmul.apply(x_sp, w_t)


def _sparse_map(x: Tensor, values: Tensor) -> Tensor:
    """A sparse tensor with the structure of ``x`` and new ``values``."""
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(
            x.crow_indices(), x.col_indices(), values, x.shape, dtype=values.dtype
        )
    return torch.sparse_coo_tensor(x.indices(), values, x.shape, dtype=values.dtype)


# --------------------------------------------------------------------------- layers and MLP
class FastDropoutLinear(DropoutModule):
    r"""Linear layer with input dropout whose output moments are propagated, not sampled.

    .. math::
        \mathbb E[y] = W m + c,\qquad
        \mathrm{Var}[y] = W^{\odot2}\,\frac{p\,m^{\odot 2} + v}{1-p}

    for inputs with means :math:`m` and variances :math:`v` (exact for independent inputs; see
    :func:`~bayesdrop.functional.fast_dropout_linear`). Nothing is sampled: train and eval mode
    compute the same thing, and ``forward`` returns the mean :math:`Wx + c` (the expected output
    under inverted dropout, not a halved-weight heuristic).

    Args:
        in_features, out_features: sizes.
        p: drop probability of the inputs, in ``[0, 1)``.
        bias: learn an additive bias (never dropped).

    Shape:
        ``forward``: ``(*, in_features)`` → ``(*, out_features)``.

    Example:
        >>> import torch
        >>> layer = FastDropoutLinear(3, 2, p=0.5)
        >>> mean, var = layer.output_moments(torch.ones(4, 3))
        >>> mean.shape, bool((var >= 0).all())
        (torch.Size([4, 2]), True)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float = 0.5,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.out_features = check_int("out_features", out_features)
        self._p = float(check_drop_probability(float(p) if isinstance(p, int) else p))
        lin = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight = lin.weight
        self.bias = lin.bias

    @property
    def p(self) -> Tensor:
        return torch.tensor([self._p])

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, p={self._p}, "
            f"bias={self.bias is not None}"
        )

    def moments(self, mean: Tensor, var: Tensor | None = None) -> Moments:
        """Output ``(mean, var)`` for inputs with the given means and variances (``None``: 0)."""
        return fast_dropout_linear(mean, var, self.weight, self.bias, self._p)

    def output_moments(self, x: Tensor) -> Moments:
        """Output ``(mean, var)`` for exactly known inputs ``x``."""
        return self.moments(x, None)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


_ACTIVATIONS = {"relu": _relu_moments, "sigmoid": _sigmoid_moments}
_MLP_LOSSES = ("cross_entropy", "logistic", "squared")


class FastDropoutMLP(DropoutModule):
    r"""Multi-layer perceptron trained and evaluated with fast dropout (Wang & Manning 2013, §3).

    Each layer is a :class:`FastDropoutLinear` (dropout on its inputs: ``input_p`` for the data,
    ``p`` for hidden units); hidden units map Gaussian inputs to output moments with
    :func:`~bayesdrop.functional.relu_moments` (exact) or
    :func:`~bayesdrop.functional.sigmoid_moments` (the paper's approximations). Units are treated
    as independent (the paper's diagonal approximation). Training and test use the same
    deterministic computation: :meth:`output_moments` gives the Gaussian moments of the output
    logits, :meth:`expected_nll` the expected loss under them, :meth:`predict_proba` the
    expected softmax.

    Args:
        in_features: input size.
        hidden_features: sizes of the hidden layers.
        out_features: number of outputs (classes, or regression targets).
        p: drop probability of hidden units, in ``[0, 1)``.
        input_p: drop probability of the inputs, in ``[0, 1)``.
        activation: ``"relu"`` or ``"sigmoid"``.
        loss: default of :meth:`expected_nll`: ``"cross_entropy"`` (softmax),
            ``"logistic"`` (one-vs-rest logistic units, eq. 10–11) or ``"squared"`` (exact).
        method: ``"unscented"`` or ``"sample"`` for the softmax cross-entropy.
        samples: draws for ``method="sample"``.
        generator: random source for ``method="sample"``.

    Shape:
        ``forward``: ``(N, in_features)`` → mean logits ``(N, out_features)``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> mlp = FastDropoutMLP(4, [8], 3, p=0.5)
        >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> mlp.expected_nll(x, y).shape, mlp.predict_proba(x).sum(1).allclose(torch.ones(5))
        (torch.Size([5]), True)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int,
        p: float = 0.5,
        input_p: float = 0.2,
        activation: str = "relu",
        *,
        loss: str = "cross_entropy",
        method: str = "unscented",
        samples: int = 100,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.activation = check_choice("activation", activation, tuple(_ACTIVATIONS))
        self.loss = check_choice("loss", loss, _MLP_LOSSES)
        self.method = check_choice("method", method, ("unscented", "sample"))
        self.samples = check_int("samples", samples)
        self._p = float(check_drop_probability(float(p)))
        self._input_p = float(check_drop_probability(float(input_p), "input_p"))
        sizes = [check_int("in_features", in_features)]
        sizes += [check_int("hidden_features", h) for h in hidden_features]
        sizes.append(check_int("out_features", out_features))
        self.layers = nn.ModuleList(
            FastDropoutLinear(a, b, p=self._input_p if i == 0 else self._p)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
        )

    @property
    def p(self) -> Tensor:
        """Drop probabilities of the layers' inputs (data first)."""
        return torch.tensor([layer._p for layer in self.layers])

    def extra_repr(self) -> str:
        return (
            f"p={self._p}, input_p={self._input_p}, activation={self.activation!r}, "
            f"loss={self.loss!r}"
        )

    def output_moments(self, x: Tensor) -> Moments:
        """Gaussian ``(mean, var)`` of the output logits, each ``(N, out_features)``."""
        act = _ACTIVATIONS[self.activation]
        layers: list[FastDropoutLinear] = list(self.layers)  # type: ignore[arg-type]
        mean, var = layers[0].output_moments(x)  # checks x; the moments below are finite
        for layer in layers[1:]:
            mean, var = _linear_moments(*act(mean, var), layer.weight, layer.bias, layer._p)
        return Moments(mean, var)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_moments(x).mean

    def expected_nll(self, x: Tensor, target: Tensor, loss: str | None = None) -> Tensor:
        """Per-example expected loss ``(N,)`` under the output Gaussian (the training objective).

        ``"cross_entropy"`` takes class indices; ``"logistic"`` 0/1 targets ``(N, out)`` (summed
        over units); ``"squared"`` real targets ``(N, out)`` (summed over outputs).
        """
        loss = self.loss if loss is None else check_choice("loss", loss, _MLP_LOSSES)
        mean, var = self.output_moments(x)
        if loss == "cross_entropy":
            return expected_softmax_cross_entropy(
                mean, var, target, self.method, samples=self.samples, generator=self.generator
            )
        if loss == "logistic":
            return expected_logistic_nll(mean, var, target.reshape(mean.shape)).sum(-1)
        return expected_squared_error(mean, var, target.reshape(mean.shape)).sum(-1)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Expected softmax probabilities ``(N, out_features)`` (unscented transform)."""
        mean, var = self.output_moments(x)
        return expected_softmax(mean, var, "unscented")


# --------------------------------------------------------------------------- logistic regression
_OPTIMIZERS = ("lbfgs", "adam")


class _LogisticRegression(DropoutModule):
    """Shared parameters, prediction helpers and :meth:`fit` of the logistic-regression models."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        p: float,
        l2: float,
        generator: torch.Generator | None,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(generator)
        self.in_features = check_int("in_features", in_features)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self._p = float(check_drop_probability(float(p)))
        self.l2 = check_positive("l2", l2, allow_zero=True)
        rows = 1 if self.num_classes == 2 else self.num_classes
        self.weight = nn.Parameter(torch.zeros(rows, self.in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(rows, dtype=dtype))
        self.fit_time_: float | None = None
        self.n_iter_: int = 0
        self.n_evals_: int = 0

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def p(self) -> Tensor:
        return torch.tensor([self._p])

    def _x(self, x: Any) -> Tensor:
        x = as_feature_tensor(x, self.weight.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"x must have {self.in_features} features (columns), but got {x.shape[1]}"
            )
        return x

    def _y(self, y: Any, n: int) -> Tensor:
        y = torch.as_tensor(y)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},), but got {tuple(y.shape)}")
        if y.is_floating_point() and not bool((y == y.round()).all()):
            raise ValueError("y must hold class indices, but it has non-integer values")
        y = y.long()
        if bool(((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(f"y must be class indices in [0, {self.num_classes}), but is not")
        return y

    def _design(self, x: Any) -> _Design:
        return x if isinstance(x, _Design) else _Design(self._x(x))

    def _logits(self, d: _Design) -> Tensor:
        """The linear logits ``(N, rows)`` without dropout."""
        return d.mm(self.weight.t()) + self.bias

    def _nll(self, d: _Design, y: Tensor) -> Tensor:
        raise NotImplementedError

    def nll(self, x: Any, y: Any) -> Tensor:
        """Per-example training loss ``(N,)`` (expected NLL under the model's dropout)."""
        d = self._design(x)
        return self._nll(d, self._y(y, d.n))

    def _loss(self, d: _Design, y: Tensor) -> Tensor:
        self.n_evals_ += 1
        out = self._nll(d, y).mean()
        if self.l2 > 0:
            out = out + 0.5 * self.l2 * (self.weight * self.weight).sum()
        return out

    def loss(self, x: Any, y: Any) -> Tensor:
        """Mean training loss plus the optional L2 penalty :math:`\\tfrac{l2}{2}\\|W\\|^2`."""
        d = self._design(x)
        return self._loss(d, self._y(y, d.n))

    def forward(self, x: Tensor) -> Tensor:
        logits = _mm(x, self.weight.t()) + self.bias
        return _class_logits(logits) if self.binary else logits

    def _proba(self, d: _Design) -> Tensor:
        logits = self._logits(d)
        return torch.softmax(_class_logits(logits) if self.binary else logits, -1)

    @torch.no_grad()
    def predict_proba(self, x: Any) -> Tensor:
        """Class probabilities ``(N, num_classes)``."""
        return self._proba(self._design(x))

    @torch.no_grad()
    def predict(self, x: Any) -> Tensor:
        """Predicted class indices ``(N,)``."""
        return self.predict_proba(x).argmax(-1)

    @torch.no_grad()
    def score(self, x: Any, y: Any) -> float:
        """Accuracy of :meth:`predict` on ``(x, y)``."""
        d = self._design(x)
        return float((self.predict(d) == self._y(y, d.n)).double().mean())

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        optimizer: str = "lbfgs",
        max_iter: int = 100,
        lr: float | None = None,
        batch_size: int | None = None,
        tol: float = 1e-6,
        seed: int = 0,
    ) -> _LogisticRegression:
        """Train on ``(x, y)`` and return ``self``; records ``fit_time_`` (s), ``n_iter_`` and
        ``n_evals_`` (loss evaluations).

        Args:
            x: features ``(N, in_features)``: dense or torch sparse tensor, ``scipy.sparse``
                matrix or NumPy array (validated once, then prepared for fast products).
            y: class indices ``(N,)``.
            optimizer: ``"lbfgs"`` (full batch, strong Wolfe line search; stochastic objectives
                draw new noise once per iteration and keep it during the line search) or
                ``"adam"`` (``max_iter`` epochs of mini-batches of ``batch_size``, default the
                full batch).
            max_iter: L-BFGS iterations or Adam epochs.
            lr: step size (default 1 for L-BFGS, 0.05 for Adam).
            batch_size: Adam mini-batch size (``None``: full batch).
            tol: L-BFGS stops when the loss or the step changes by less than ``tol``.
            seed: seeds the mini-batch order and, when no ``generator`` was given, the noise.
        """
        check_choice("optimizer", optimizer, _OPTIMIZERS)
        check_int("max_iter", max_iter)
        check_positive("tol", tol)
        if lr is not None:
            check_positive("lr", lr)
        d = self._design(x)
        y_t = self._y(y, d.n)
        bs = d.n if batch_size is None else check_int("batch_size", batch_size)
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(seed)
            own_gen = True
        else:
            own_gen = False
        self.train()
        self.n_evals_ = 0
        start = time.perf_counter()
        try:
            if optimizer == "lbfgs":
                self._fit_lbfgs(d, y_t, max_iter, 1.0 if lr is None else lr, tol)
            else:
                self._fit_adam(d, y_t, max_iter, 0.05 if lr is None else lr, bs, seed)
        finally:
            self.fit_time_ = time.perf_counter() - start
            if own_gen:
                self.generator = None
            self.eval()
        return self

    def _fit_lbfgs(self, d: _Design, y: Tensor, max_iter: int, lr: float, tol: float) -> None:
        def make_closure(opt: torch.optim.Optimizer, state: Tensor | None) -> Any:
            def closure() -> Tensor:
                if state is not None:
                    self.generator.set_state(state)  # type: ignore[union-attr]
                opt.zero_grad()
                value = self._loss(d, y)
                value.backward()
                return value.detach()

            return closure

        if not self._stochastic:  # one deterministic objective: ordinary L-BFGS
            opt = torch.optim.LBFGS(
                self.parameters(), lr=lr, max_iter=max_iter, max_eval=3 * max_iter,
                history_size=20, tolerance_change=tol, tolerance_grad=1e-7,
                line_search_fn="strong_wolfe",
            )  # fmt: skip
            opt.step(make_closure(opt, None))
            self.n_iter_ = int(opt.state[opt._params[0]].get("n_iter", 0))  # type: ignore[attr-defined]
            return
        # a stochastic objective: new noise each iteration, kept fixed during its line search
        opt = torch.optim.LBFGS(
            self.parameters(), lr=lr, max_iter=1, history_size=20, line_search_fn="strong_wolfe"
        )
        assert self.generator is not None
        for it in range(max_iter):
            opt.step(make_closure(opt, self.generator.get_state()))
            self.n_iter_ = it + 1

    def _fit_adam(self, d: _Design, y: Tensor, epochs: int, lr: float, bs: int, seed: int) -> None:
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        order_gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            perm = torch.randperm(d.n, generator=order_gen) if bs < d.n else None
            for start in range(0, d.n, bs):
                if perm is None:
                    db, yb = d, y
                else:
                    idx = perm[start : start + bs]
                    db, yb = d.rows(idx), y[idx]
                opt.zero_grad()
                self._loss(db, yb).backward()
                opt.step()
            self.n_iter_ = epoch + 1

    @property
    def _stochastic(self) -> bool:
        return False


def _class_logits(logit: Tensor) -> Tensor:
    """Binary logit ``(N, 1)`` → class logits ``(N, 2)`` = ``(0, logit)``."""
    return torch.cat([torch.zeros_like(logit), logit], -1)


class FastDropoutLogisticRegression(_LogisticRegression):
    r"""Logistic regression trained with fast dropout on its inputs (Wang & Manning 2013, §2).

    Under inverted dropout with drop probability :math:`p` on every input, the logits
    :math:`Y = W(x\odot z)/(1-p) + c` are approximated by the Gaussian with their exact moments
    (:func:`~bayesdrop.functional.fast_dropout_linear`):
    :math:`\mu = Wx + c`, :math:`\mathrm{Var}[Y_k] = \frac{p}{1-p}\sum_i W_{ki}^2x_i^2` and, for
    several classes, :math:`\mathrm{Cov}[Y_k, Y_l] = \frac{p}{1-p}\sum_i W_{ki}W_{li}x_i^2`.
    The training objective is the expected negative log-likelihood under this Gaussian:

    * binary, ``objective="closed_form"`` (default): eq. 10–11,
      :math:`\kappa\,\mathrm{softplus}(\mp\mu/\kappa)`, :math:`\kappa = \sqrt{1+\pi s^2/8}` —
      deterministic, so L-BFGS applies;
    * multinomial, ``objective="unscented"`` (default): the softmax cross-entropy averaged over
      the :math:`2K` sigma points of the full logit covariance (deterministic);
    * ``objective="sample"``: ``samples`` draws from the Gaussian per example (the paper's
      "Gaussian approximation", §2.2.1), :math:`O(\text{samples})` per example instead of
      :math:`O(\text{samples}\cdot d)` for real masks.

    Test-time prediction is the same computation: probabilities are the expectation under the
    Gaussian (binary: :math:`\sigma(\mu/\kappa)`, eq. 9; multinomial: unscented). With ``p=0``
    this is plain (L2-regularised if ``l2 > 0``) logistic regression.

    Args:
        in_features: number of features :math:`d`.
        num_classes: 2 (one logit) or more (one logit per class).
        p: drop probability of the inputs, in ``[0, 1)``.
        objective: ``"closed_form"`` (binary only), ``"unscented"`` or ``"sample"``; default
            ``"closed_form"`` for 2 classes, ``"unscented"`` otherwise.
        samples: Gaussian draws per example for ``objective="sample"``.
        covariance: ``"full"`` (default) or ``"diagonal"`` logit covariance for several classes.
        l2: optional L2 penalty on the weights (added to the mean loss as
            :math:`\tfrac{l2}{2}\|W\|^2`).
        generator: random source of ``objective="sample"``.
        dtype: parameter dtype.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
        >>> y = torch.tensor([1, 0, 1, 0])
        >>> model = FastDropoutLogisticRegression(2, p=0.5).fit(x, y)
        >>> model.predict(x).tolist()
        [1, 0, 1, 0]
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 2,
        p: float = 0.5,
        *,
        objective: str | None = None,
        samples: int = 100,
        covariance: str = "full",
        l2: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(in_features, num_classes, p, l2, generator, dtype)
        if objective is None:
            objective = "closed_form" if self.binary else "unscented"
        self.objective = check_choice(
            "objective", objective, ("closed_form", "unscented", "sample")
        )
        if objective == "closed_form" and not self.binary:
            raise ValueError(
                "objective='closed_form' exists for binary logistic regression only "
                "(num_classes=2); use 'unscented' or 'sample' for several classes"
            )
        self.samples = check_int("samples", samples)
        self.covariance = check_choice("covariance", covariance, ("full", "diagonal"))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, p={self._p}, "
            f"objective={self.objective!r}, l2={self.l2}"
        )

    @property
    def _stochastic(self) -> bool:
        return self.objective == "sample"

    def _logit_moments(self, d: _Design, covariance: str = "diagonal") -> Moments:
        mean = self._logits(d)
        c = self._p / (1.0 - self._p)
        w = self.weight
        if self.binary or covariance == "diagonal":
            var = d.mm_square((c * w * w).t()) if c > 0 else torch.zeros_like(mean)
            if self.binary:
                return Moments(mean[..., 0], var[..., 0])
            return Moments(mean, var)
        k = self.num_classes
        outer = (w.unsqueeze(1) * w.unsqueeze(0)).reshape(k * k, -1)
        if c > 0:
            cov = d.mm_square((c * outer).t()).reshape(-1, k, k)
        else:
            cov = mean.new_zeros(d.n, k, k)
        return Moments(mean, cov)

    def logit_moments(self, x: Any, covariance: str = "diagonal") -> Moments:
        """Moments of the model's own logits: ``(N,)`` for binary, ``(N, K)`` otherwise.

        ``covariance="full"`` returns covariances ``(N, K, K)`` for several classes.
        """
        check_choice("covariance", covariance, ("full", "diagonal"))
        return self._logit_moments(self._design(x), covariance)

    def output_moments(self, x: Any) -> Moments:
        """Mean and variance ``(N, num_classes)`` of the class logits (binary: ``(0, Y)``)."""
        mean, var = self.logit_moments(x)
        if self.binary:
            return Moments(_class_logits(mean.unsqueeze(-1)), _class_logits(var.unsqueeze(-1)))
        return Moments(mean, var)

    def _nll(self, d: _Design, y: Tensor) -> Tensor:
        if self.binary:
            mean, var = self._logit_moments(d)
            return expected_logistic_nll(
                mean, var, y.to(mean.dtype), method=self.objective, samples=self.samples,
                generator=self.generator,
            )  # fmt: skip
        mean, var = self._logit_moments(d, self.covariance)
        return expected_softmax_cross_entropy(
            mean, var, y, self.objective, samples=self.samples, generator=self.generator
        )

    def _proba(self, d: _Design) -> Tensor:
        """Expected class probabilities under the Gaussian logits (binary: eq. 8)."""
        if self.binary:
            mean, var = self._logit_moments(d)
            p1 = torch.sigmoid(mean * torch.rsqrt(1.0 + _PI_8 * var))
            return torch.stack([1.0 - p1, p1], -1)
        mean, var = self._logit_moments(d, self.covariance)
        return expected_softmax(mean, var, "unscented")


class MCDropoutLogisticRegression(_LogisticRegression):
    r"""Logistic regression trained with real (Monte Carlo) Bernoulli dropout on its inputs.

    .. math::
        \mathcal L = \frac1S\sum_{s=1}^S -\log p\bigl(y \mid W(x\odot z^{(s)})/(1-p) + c\bigr),
        \qquad z^{(s)}_i \sim \mathrm{Bernoulli}(1-p)

    the Monte Carlo estimate of the dropout objective (eq. 3 of Wang & Manning 2013) that fast
    dropout approximates deterministically. For sparse inputs only the non-zero entries are
    masked (zeros stay zero either way), as in the paper. In eval mode (``model.eval()``) the
    forward pass is deterministic (inverted dropout: the mean weights); with MC sampling on
    (:func:`bayesdrop.mc_predict`) it samples.

    Args:
        in_features: number of features.
        num_classes: 2 (one logit) or more.
        p: drop probability of the inputs, in ``[0, 1)``.
        samples: masks per example per loss evaluation (:math:`S`).
        l2: optional L2 penalty :math:`\tfrac{l2}{2}\|W\|^2`.
        generator: random source of the masks.
        dtype: parameter dtype.

    Example:
        >>> import torch
        >>> m = MCDropoutLogisticRegression(3, p=0.5).eval()
        >>> m(torch.ones(2, 3)).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 2,
        p: float = 0.5,
        *,
        samples: int = 1,
        l2: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(in_features, num_classes, p, l2, generator, dtype)
        self.samples = check_int("samples", samples)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, p={self._p}, "
            f"samples={self.samples}, l2={self.l2}"
        )

    @property
    def _stochastic(self) -> bool:
        return self._p > 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.sampling:
            return super().forward(x)
        logits = _Design(x).mm_masked(self.weight.t(), self._p, self.generator) + self.bias
        return _class_logits(logits) if self.binary else logits

    def _nll(self, d: _Design, y: Tensor) -> Tensor:
        """Per-example NLL ``(N,)`` averaged over ``samples`` fresh masks."""
        total: Tensor | None = None
        for _ in range(self.samples):
            logits = d.mm_masked(self.weight.t(), self._p, self.generator) + self.bias
            if self.binary:
                loss = F.binary_cross_entropy_with_logits(
                    logits[:, 0], y.to(logits.dtype), reduction="none"
                )
            else:
                loss = F.cross_entropy(logits, y, reduction="none")
            total = loss if total is None else total + loss
        assert total is not None
        return total / self.samples
