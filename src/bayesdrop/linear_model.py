r"""Logistic regression with dropout on its inputs, as scikit-learn estimators.

* :class:`FastDropoutLogisticRegression` — fast dropout (Wang & Manning 2013, *Fast dropout
  training*, ICML): the dropout objective's expectation over the masks is taken under the
  Gaussian approximation of the logits, deterministically.
* :class:`MCDropoutLogisticRegression` — the baseline that samples real Bernoulli masks.

Both are scikit-learn classifiers (``get_params``/``set_params``, ``fit`` returning ``self``,
``classes_`` of any label type, NumPy outputs), so they work in ``cross_val_score``,
``GridSearchCV`` and ``Pipeline``. Features may be dense arrays or ``scipy.sparse`` matrices
(sparse ones stay sparse: training costs two sparse products per loss evaluation). Training
options (optimiser, iterations, step size, ...) are constructor parameters, as in scikit-learn.
The module needs scikit-learn (``pip install "bayesdrop[sklearn]"``); the rest of bayesdrop
does not.

**Which probability to use.** :meth:`FastDropoutLogisticRegression.predict_proba` is the
model's predictive probability under dropout, :math:`\mathbb E_z[p(y\mid x, z)]`, in the fast
dropout approximation: the expectation of the softmax under the Gaussian logits
:math:`Y\sim\mathcal N(\mu, \Sigma)` with the exact mean and covariance over the masks. Binary:
:math:`\mathbb E[\sigma(Y)]` to :math:`10^{-9}`
(:func:`~bayesdrop.functional.fast_dropout.expected_sigmoid`); several classes: the unscented
transform, or with ``proba_method="qmc"`` quasi-Monte Carlo, which is far closer to the Gaussian
expectation. Use it (with ``"qmc"`` for several classes) for calibration. Passing the same model to :func:`bayesdrop.mc_predict`
(``mc_predict(est.to_module(), x)``) gives different numbers by default, because mc_predict's
moment path uses the :math:`2K`-point unscented rule on independent logits: for a binary model
(logits :math:`(0, Y)`) that is :math:`\tfrac12\sigma(\mu) + \tfrac14\sigma(\mu\pm\sqrt2 s)`,
up to 0.04 away from :math:`\mathbb E[\sigma(Y)]` (it is neither a sampled average nor the
deterministic pass :math:`\sigma(\mu)`). With ``moments_method="quadrature"`` mc_predict gives
the same binary probabilities as ``predict_proba``; for several classes, ``covariance="diagonal"``
makes the two agree (mc_predict ignores the correlation of the logits, which share the masks).
:meth:`MCDropoutLogisticRegression.predict_proba` is the deterministic pass with the mean
weights (the weight-scaling rule); ``mc_predict(est.to_module(), x, num_samples=S)`` averages
:math:`S` sampled masks instead.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from scipy.optimize import minimize
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "bayesdrop.linear_model needs scikit-learn >= 1.6: pip install 'bayesdrop[sklearn]'"
    ) from err

from ._linear_loss import FastDropoutLinearLoss
from ._validation import check_choice, check_int, check_positive
from .functional.fast_dropout import (
    DesignMatrix,
    check_drop_probability,
    expected_logistic_nll,
    expected_sigmoid,
    expected_softmax,
    expected_softmax_cross_entropy,
    linear_logit_moments,
)

__all__ = ["FastDropoutLogisticRegression", "MCDropoutLogisticRegression"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_OPTIMIZERS = ("lbfgs", "adam")
_X_DTYPES = (np.float64, np.float32)
#: quasi-Monte Carlo points of ``proba_method="qmc"``
QMC_POINTS = 1024


def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    return check_int(name, value, minimum=minimum)


def _float(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
    return check_positive(name, value, allow_zero=allow_zero)


def _torch_dtype(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in _DTYPES.values():
        return value
    if isinstance(value, str) and value in _DTYPES:
        return _DTYPES[value]
    raise ValueError(f"dtype must be one of {list(_DTYPES)}, but got {value!r}")


class _DropoutLogisticRegression(ClassifierMixin, BaseEstimator):
    """Validation, training loop and prediction plumbing shared by the two estimators.

    Subclasses define ``_nll(design, y, weight, bias, num_classes, generator)`` (per-example
    training loss ``(N,)``), ``_log_proba(design)`` and ``_stochastic``.
    """

    p: float
    l2: float
    optimizer: str
    max_iter: int
    lr: float | None
    batch_size: int | None
    tol: float
    random_state: Any
    dtype: Any
    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray

    # ------------------------------------------------------------------ scikit-learn plumbing
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _check_params(self) -> dict[str, Any]:
        """The constructor parameters, validated (scikit-learn validates in ``fit``)."""
        p = self.p
        if isinstance(p, numbers.Real) and not isinstance(p, bool):
            p = float(p)
        return {
            "p": float(check_drop_probability(p)),
            "l2": _float("l2", self.l2, allow_zero=True),
            "optimizer": check_choice("optimizer", self.optimizer, _OPTIMIZERS),
            "max_iter": _int("max_iter", self.max_iter),
            "lr": None if self.lr is None else _float("lr", self.lr),
            "batch_size": None if self.batch_size is None else _int("batch_size", self.batch_size),
            "tol": _float("tol", self.tol),
            "dtype": _torch_dtype(self.dtype),
        }

    def _encode(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``classes_`` (sorted unique labels) and the class index of each label."""
        check_classification_targets(y)
        classes, idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes, but y holds "
                f"1 class ({classes[0]!r})"
            )
        return classes, idx

    def _seed(self) -> int:
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    def _check_objective(self, num_classes: int) -> None:
        """Checks that need the number of classes (none by default)."""

    def _design(self, X: Any) -> DesignMatrix:
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=_X_DTYPES, reset=False)
        return DesignMatrix(X, torch.from_numpy(self.coef_).dtype)

    def _weights(self) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.coef_), torch.from_numpy(self.intercept_)

    # ------------------------------------------------------------------ training
    def _fit(self, X: Any, y: Any) -> Any:
        opts = self._check_params()
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=_X_DTYPES)
        classes, y_idx = self._encode(y)
        k = len(classes)
        self._check_objective(k)
        dtype = opts["dtype"]
        rows = 1 if k == 2 else k
        init = self._warm_start_weights(rows, X.shape[1])
        start = time.perf_counter()
        loss_fn = self._exact_loss(X, y_idx, k, opts)
        if loss_fn is not None:  # deterministic objective: scipy's L-BFGS on the exact gradient
            theta0 = (
                np.zeros(loss_fn.size)
                if init is None
                else np.concatenate([init[0].ravel(), init[1]])
            )
            res = minimize(
                loss_fn, theta0, method="L-BFGS-B", jac=True,
                options={
                    "maxiter": opts["max_iter"], "maxls": 50, "gtol": opts["tol"],
                    "ftol": 64 * np.finfo(np.float64).eps,
                },
            )  # fmt: skip
            w64, b64 = loss_fn.unpack(res.x)
            self.fit_time_ = time.perf_counter() - start
            self.n_iter_ = int(res.nit)
            self.n_evals_ = int(res.nfev)
            self.classes_ = classes
            np_dtype = np.float32 if dtype == torch.float32 else np.float64
            self.coef_ = np.array(w64, dtype=np_dtype)
            self.intercept_ = np.array(b64, dtype=np_dtype)
            return self
        design = DesignMatrix(X, dtype)
        y_t = torch.from_numpy(np.asarray(y_idx, dtype=np.int64))
        if init is None:
            weight = torch.zeros(rows, design.num_features, dtype=dtype, requires_grad=True)
            bias = torch.zeros(rows, dtype=dtype, requires_grad=True)
        else:
            weight = torch.tensor(init[0], dtype=dtype, requires_grad=True)
            bias = torch.tensor(init[1], dtype=dtype, requires_grad=True)
        seed = self._seed()
        noise = self._generator(seed)
        l2 = opts["l2"]
        evals = 0

        def loss(d: DesignMatrix, yb: Tensor) -> Tensor:
            nonlocal evals
            evals += 1
            out = self._nll(d, yb, weight, bias, k, noise).mean()
            if l2 > 0:
                out = out + 0.5 * l2 * (weight * weight).sum()
            return out

        if opts["optimizer"] == "lbfgs":
            lr = 1.0 if opts["lr"] is None else opts["lr"]
            n_iter = _fit_lbfgs(
                [weight, bias], lambda: loss(design, y_t), self._stochastic, noise,
                opts["max_iter"], lr, opts["tol"],
            )  # fmt: skip
        else:
            lr = 0.05 if opts["lr"] is None else opts["lr"]
            bs = design.n if opts["batch_size"] is None else opts["batch_size"]
            n_iter = _fit_adam([weight, bias], loss, design, y_t, opts["max_iter"], lr, bs, seed)
        self.fit_time_ = time.perf_counter() - start
        self.n_iter_ = n_iter
        self.n_evals_ = evals
        self.classes_ = classes
        self.coef_ = weight.detach().numpy().copy()
        self.intercept_ = bias.detach().numpy().copy()
        return self

    _stochastic = False

    def _exact_loss(
        self, X: Any, y_idx: np.ndarray, num_classes: int, opts: dict[str, Any]
    ) -> FastDropoutLinearLoss | None:
        """The loss-and-gradient function of a deterministic L-BFGS fit (``None``: torch path)."""
        return None

    def _warm_start_weights(self, rows: int, num_features: int) -> tuple[Any, Any] | None:
        """The previous fit's ``(coef_, intercept_)`` as float64 when ``warm_start`` applies."""
        if not getattr(self, "warm_start", False) or not hasattr(self, "coef_"):
            return None
        if self.coef_.shape != (rows, num_features):
            return None
        return np.array(self.coef_, dtype=np.float64), np.array(self.intercept_, dtype=np.float64)

    def _nll(
        self,
        design: DesignMatrix,
        y: Tensor,
        weight: Tensor,
        bias: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ prediction
    def _log_proba(self, design: DesignMatrix) -> Tensor:
        raise NotImplementedError

    def _predict(self, X: Any) -> np.ndarray:
        with torch.no_grad():
            idx = self._log_proba(self._design(X)).argmax(-1).numpy()
        return self.classes_[idx]

    def _decision(self, X: Any) -> np.ndarray:
        with torch.no_grad():
            logp = self._log_proba(self._design(X))
        if len(self.classes_) == 2:
            return (logp[:, 1] - logp[:, 0]).numpy()
        return logp.numpy()

    def _logit_moments(self, X: Any, covariance: str) -> tuple[np.ndarray, np.ndarray]:
        check_choice("covariance", covariance, ("diagonal", "full"))
        design = self._design(X)
        weight, bias = self._weights()
        with torch.no_grad():
            mean, var = linear_logit_moments(design, weight, bias, float(self.p), covariance)
        if len(self.classes_) == 2:
            return mean[:, 0].numpy(), (
                var[:, 0] if covariance == "diagonal" else var[:, 0, 0]
            ).numpy()
        return mean.numpy(), var.numpy()

    def _class_logit_weights(self) -> tuple[Tensor, Tensor]:
        """Weights ``(K, d)`` and bias ``(K,)`` of the class logits (binary: rows ``0`` and ``w``)."""
        weight, bias = self._weights()
        if len(self.classes_) == 2:
            weight = torch.cat([torch.zeros_like(weight), weight])
            bias = torch.cat([torch.zeros_like(bias), bias])
        return weight, bias


def _float64_features(X: Any) -> Any:
    """Validated features as a float64 C-ordered array or canonical CSR matrix."""
    if scipy.sparse.issparse(X):
        X = scipy.sparse.csr_matrix(X, dtype=np.float64)
        X.sum_duplicates()
        return X
    return np.ascontiguousarray(X, dtype=np.float64)


def _fit_lbfgs(
    params: list[Tensor],
    loss: Callable[[], Tensor],
    stochastic: bool,
    generator: torch.Generator,
    max_iter: int,
    lr: float,
    tol: float,
) -> int:
    """L-BFGS with a strong Wolfe line search; returns the number of iterations.

    A stochastic objective draws new noise once per iteration and keeps it fixed during that
    iteration's line search (the generator state is restored before every evaluation).
    """

    def make_closure(opt: torch.optim.Optimizer, state: Tensor | None) -> Callable[[], Tensor]:
        def closure() -> Tensor:
            if state is not None:
                generator.set_state(state)
            opt.zero_grad()
            value = loss()
            value.backward()
            return value.detach()

        return closure

    if not stochastic:  # one deterministic objective: ordinary L-BFGS
        opt = torch.optim.LBFGS(
            params, lr=lr, max_iter=max_iter, max_eval=3 * max_iter, history_size=20,
            tolerance_change=tol, tolerance_grad=1e-7, line_search_fn="strong_wolfe",
        )  # fmt: skip
        opt.step(make_closure(opt, None))
        return int(opt.state[params[0]].get("n_iter", 0))
    opt = torch.optim.LBFGS(
        params, lr=lr, max_iter=1, history_size=20, line_search_fn="strong_wolfe"
    )
    for _ in range(max_iter):
        opt.step(make_closure(opt, generator.get_state()))
    return max_iter


def _fit_adam(
    params: list[Tensor],
    loss: Callable[[DesignMatrix, Tensor], Tensor],
    design: DesignMatrix,
    y: Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> int:
    """``epochs`` passes of Adam over mini-batches in a seeded random order."""
    opt = torch.optim.Adam(params, lr=lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(design.n, generator=order) if batch_size < design.n else None
        for start in range(0, design.n, batch_size):
            if perm is None:
                db, yb = design, y
            else:
                idx = perm[start : start + batch_size]
                db, yb = design.rows(idx), y[idx]
            opt.zero_grad()
            loss(db, yb).backward()
            opt.step()
    return epochs


class FastDropoutLogisticRegression(_DropoutLogisticRegression):
    r"""Logistic regression trained with fast dropout on its inputs (Wang & Manning 2013, §2).

    Under inverted dropout with drop probability :math:`p` on every input, the logits
    :math:`Y = W(x\odot z)/(1-p) + c` are approximated by the Gaussian with their exact moments
    (:func:`~bayesdrop.functional.fast_dropout.linear_logit_moments`): :math:`\mu = Wx + c`,
    :math:`\mathrm{Cov}[Y_k, Y_l] = \frac{p}{1-p}\sum_i W_{ki}W_{li}x_i^2`. Training minimises
    the expected negative log-likelihood under this Gaussian (plus
    :math:`\tfrac{l2}{2}\|W\|^2`):

    * binary, ``objective="closed_form"`` (default): eq. 10–11,
      :math:`\kappa\,\mathrm{softplus}(\mp\mu/\kappa)`, :math:`\kappa = \sqrt{1+\pi s^2/8}` —
      deterministic, so L-BFGS applies;
    * several classes, ``objective="unscented"`` (default): the softmax cross-entropy averaged
      over the :math:`2K` sigma points of the logit covariance (deterministic);
    * ``objective="sample"``: ``num_samples`` draws from the Gaussian per example (the paper's
      "Gaussian approximation", §2.2.1).

    Prediction uses the same Gaussian: :meth:`predict_proba` is
    :math:`\mathbb E[\mathrm{softmax}(Y)]` (binary: :math:`\mathbb E[\sigma(Y)]` to
    :math:`10^{-9}`; several classes: ``proba_method``), the probability to use for
    calibration (see :mod:`bayesdrop.linear_model` for how it relates to
    :func:`bayesdrop.mc_predict`). With ``p=0`` this is plain (L2-regularised if ``l2 > 0``)
    logistic regression: scikit-learn's ``LogisticRegression(C=1 / (l2 * n_samples))``.

    Args:
        p: drop probability of the inputs, in ``[0, 1)``.
        objective: ``"closed_form"`` (binary only), ``"unscented"`` or ``"sample"``; ``None``:
            ``"closed_form"`` for 2 classes, ``"unscented"`` otherwise.
        num_samples: Gaussian draws per example for ``objective="sample"``.
        covariance: ``"full"`` or ``"diagonal"`` logit covariance for several classes (training
            and prediction).
        proba_method: how :meth:`predict_proba` averages the softmax over the Gaussian for
            several classes: ``"unscented"`` (the paper's :math:`2K` sigma points, coarse: on a
            three-class tweet set the largest class difference from the Gaussian expectation is
            0.048 on average over examples, 0.25 at most)
            or ``"qmc"`` (1024 quasi-Monte Carlo points, about :math:`2\cdot10^{-4}`; use it
            for calibration). Two classes always use the exact quadrature.
        l2: L2 penalty :math:`\tfrac{l2}{2}\|W\|^2` added to the mean loss (``>= 0``).
        optimizer: ``"lbfgs"`` (full batch) or ``"adam"`` (``max_iter`` epochs of mini-batches
            of ``batch_size``). With a deterministic objective (``"closed_form"``,
            ``"unscented"``) L-BFGS is fitted as scikit-learn fits ``LogisticRegression``:
            SciPy's L-BFGS-B on the loss and its exact analytic gradient, in float64;
            ``objective="sample"`` uses torch's L-BFGS (strong Wolfe line search), drawing new
            noise once per iteration and keeping it during the line search.
        max_iter: L-BFGS iterations or Adam epochs.
        lr: step size of Adam and of the stochastic L-BFGS; ``None``: 0.05 for Adam, 1 for
            L-BFGS. The deterministic L-BFGS fit takes its line search's steps and does not use
            it.
        batch_size: Adam mini-batch size; ``None``: the full batch.
        tol: deterministic L-BFGS: stop when the largest component of the gradient of the
            (mean) loss is at most ``tol`` (scikit-learn's criterion; also when the loss falls by
            less than 64 machine epsilons, relatively); stochastic L-BFGS: stop when the loss or
            the step changes by less than ``tol``.
        warm_start: start ``fit`` from the previous fit's ``coef_`` and ``intercept_`` when the
            numbers of features and of classes match (as scikit-learn's ``warm_start``);
            otherwise from zeros.
        random_state: seeds the Gaussian draws of ``objective="sample"`` and the Adam batch order
            (an int, a ``numpy.random.RandomState`` or ``None``).
        dtype: ``"float32"`` or ``"float64"``: the precision of ``coef_``, ``intercept_`` and
            prediction, and of training on the torch paths (Adam, ``objective="sample"``); the
            deterministic L-BFGS fit computes in float64 and stores its result in ``dtype``.

    Attributes:
        classes_: the class labels, sorted (``classes_[1]`` is the positive class).
        coef_: weights, ``(1, n_features)`` for two classes, ``(n_classes, n_features)``
            otherwise.
        intercept_: biases, ``(1,)`` or ``(n_classes,)``.
        n_features_in_: number of features seen in ``fit``.
        n_iter_: L-BFGS iterations or Adam epochs run.
        n_evals_: loss evaluations (line-search steps included).
        fit_time_: wall-clock seconds of the optimisation.

    Example:
        >>> import numpy as np
        >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
        >>> y = np.array(["spam", "ham", "spam", "ham"])
        >>> model = FastDropoutLogisticRegression(p=0.5).fit(X, y)
        >>> model.predict(X).tolist()
        ['spam', 'ham', 'spam', 'ham']
        >>> model.predict_proba(X).shape
        (4, 2)
    """

    def __init__(
        self,
        p: float = 0.5,
        *,
        objective: str | None = None,
        num_samples: int = 100,
        covariance: str = "full",
        proba_method: str = "unscented",
        l2: float = 0.0,
        optimizer: str = "lbfgs",
        max_iter: int = 100,
        lr: float | None = None,
        batch_size: int | None = None,
        tol: float = 1e-6,
        warm_start: bool = False,
        random_state: Any = None,
        dtype: str = "float32",
    ) -> None:
        self.p = p
        self.objective = objective
        self.num_samples = num_samples
        self.covariance = covariance
        self.proba_method = proba_method
        self.l2 = l2
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.lr = lr
        self.batch_size = batch_size
        self.tol = tol
        self.warm_start = warm_start
        self.random_state = random_state
        self.dtype = dtype

    def _check_objective(self, num_classes: int) -> None:
        objective = self.objective
        if objective is not None:
            check_choice("objective", objective, ("closed_form", "unscented", "sample"))
        if objective == "closed_form" and num_classes > 2:
            raise ValueError(
                "objective='closed_form' exists for binary logistic regression only, but y "
                f"holds {num_classes} classes; use 'unscented' or 'sample'"
            )
        _int("num_samples", self.num_samples)
        check_choice("covariance", self.covariance, ("full", "diagonal"))
        check_choice("proba_method", self.proba_method, ("unscented", "qmc"))

    def _resolved_objective(self, num_classes: int) -> str:
        if self.objective is not None:
            return self.objective
        return "closed_form" if num_classes == 2 else "unscented"

    @property
    def _stochastic(self) -> bool:  # type: ignore[override]
        return self.objective == "sample"

    def _exact_loss(
        self, X: Any, y_idx: np.ndarray, num_classes: int, opts: dict[str, Any]
    ) -> FastDropoutLinearLoss | None:
        objective = self._resolved_objective(num_classes)
        if opts["optimizer"] != "lbfgs" or objective == "sample":
            return None
        return FastDropoutLinearLoss(
            _float64_features(X),
            y_idx,
            num_classes,
            opts["p"],
            opts["l2"],
            objective,
            self.covariance,
        )

    def _nll(
        self,
        design: DesignMatrix,
        y: Tensor,
        weight: Tensor,
        bias: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        objective = self._resolved_objective(num_classes)
        num_samples = _int("num_samples", self.num_samples)
        p = float(self.p)
        if num_classes == 2:
            mean, var = linear_logit_moments(design, weight, bias, p)
            return expected_logistic_nll(
                mean[:, 0], var[:, 0], y.to(mean.dtype), method=objective, num_samples=num_samples,
                generator=generator,
            )  # fmt: skip
        mean, var = linear_logit_moments(design, weight, bias, p, self.covariance)
        return expected_softmax_cross_entropy(
            mean, var, y, objective, num_samples=num_samples, generator=generator
        )

    def _log_proba(self, design: DesignMatrix) -> Tensor:
        weight, bias = self._weights()
        p = float(self.p)
        if len(self.classes_) == 2:
            mean, var = linear_logit_moments(design, weight, bias, p)
            mean, var = mean[:, 0], var[:, 0]
            return torch.stack(
                [expected_sigmoid(-mean, var, log=True), expected_sigmoid(mean, var, log=True)], -1
            )
        mean, var = linear_logit_moments(design, weight, bias, p, self.covariance)
        method = check_choice("proba_method", self.proba_method, ("unscented", "qmc"))
        if method == "unscented":
            return expected_softmax(mean, var, "unscented", log=True)
        rows = max(1, 2**22 // (QMC_POINTS * mean.shape[-1]))  # bounded memory per block
        return torch.cat(
            [
                expected_softmax(m, v, "qmc", num_samples=QMC_POINTS, log=True)
                for m, v in zip(mean.split(rows), var.split(rows))
            ]
        )

    def fit(self, X: Any, y: Any) -> FastDropoutLogisticRegression:
        """Train on ``(X, y)`` with the constructor's options; return ``self``.

        Args:
            X: features ``(n_samples, n_features)``: an array-like or a ``scipy.sparse`` matrix.
            y: class labels ``(n_samples,)`` of any type (at least two distinct values).
        """
        return self._fit(X, y)

    def predict_proba(self, X: Any) -> np.ndarray:
        r"""Class probabilities :math:`\mathbb E[\mathrm{softmax}(Y)]` under the Gaussian logits,
        ``(n_samples, n_classes)``, columns in the order of ``classes_``."""
        with torch.no_grad():
            return self._log_proba(self._design(X)).exp().numpy()

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithms of :meth:`predict_proba`, accurate where the probabilities underflow."""
        with torch.no_grad():
            return self._log_proba(self._design(X)).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class label per sample (binary: the sign of the mean logit)."""
        return self._predict(X)

    def decision_function(self, X: Any) -> np.ndarray:
        r"""Scores consistent with :meth:`predict_proba`: binary, the log-odds
        :math:`\log(P_1/P_0)`, ``(n_samples,)``; several classes, the log-probabilities
        ``(n_samples, n_classes)``. (The mean logits :math:`\mu` are in :meth:`logit_moments`;
        the probabilities are not monotone in them, because the variance differs per sample.)
        """
        return self._decision(X)

    def logit_moments(self, X: Any, covariance: str = "diagonal") -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and variance of the model's logits over the dropout masks.

        Binary: ``(n_samples,)`` each (the logit of ``classes_[1]``). Several classes: means
        ``(n_samples, n_classes)`` and variances of the same shape, or covariances
        ``(n_samples, n_classes, n_classes)`` with ``covariance="full"``.
        """
        return self._logit_moments(X, covariance)

    def to_module(self) -> nn.Module:
        """The fitted model as a :class:`~bayesdrop.nn.FastDropoutLinear` of the class logits.

        Binary models give the two logits :math:`(0, Y)`. The module works with
        :func:`bayesdrop.mc_predict` (which answers it from its moments; pass
        ``moments_method="quadrature"`` for exactly the binary :meth:`predict_proba`), on a GPU,
        and inside larger torch models.
        """
        from .nn.fast_dropout import FastDropoutLinear

        check_is_fitted(self)
        weight, bias = self._class_logit_weights()
        layer = FastDropoutLinear(
            weight.shape[1], weight.shape[0], p=float(self.p), dtype=weight.dtype
        )
        with torch.no_grad():
            layer.weight.copy_(weight)
            assert layer.bias is not None
            layer.bias.copy_(bias)
        return layer


class MCDropoutLogisticRegression(_DropoutLogisticRegression):
    r"""Logistic regression trained with real (Monte Carlo) Bernoulli dropout on its inputs.

    .. math::
        \mathcal L = \frac1S\sum_{s=1}^S -\log p\bigl(y \mid W(x\odot z^{(s)})/(1-p) + c\bigr),
        \qquad z^{(s)}_i \sim \mathrm{Bernoulli}(1-p)

    the Monte Carlo estimate of the dropout objective (eq. 3 of Wang & Manning 2013) that fast
    dropout approximates deterministically, plus :math:`\tfrac{l2}{2}\|W\|^2`. For sparse inputs
    only the non-zero entries are masked (zeros stay zero either way), as in the paper.
    :meth:`predict_proba` is the deterministic pass with the mean weights (inverted dropout's
    weight-scaling rule); for the Monte Carlo predictive average use
    ``bayesdrop.mc_predict(model.to_module(), x, num_samples=S)``.

    Args:
        p: drop probability of the inputs, in ``[0, 1)``.
        num_samples: masks per example per loss evaluation (:math:`S`).
        l2: L2 penalty :math:`\tfrac{l2}{2}\|W\|^2` added to the mean loss (``>= 0``).
        optimizer: ``"lbfgs"`` (full batch; new masks once per iteration, kept during its line
            search) or ``"adam"`` (``max_iter`` epochs of mini-batches of ``batch_size``).
        max_iter: L-BFGS iterations or Adam epochs.
        lr: step size; ``None``: 1 for L-BFGS, 0.05 for Adam (not used by L-BFGS at ``p == 0``).
        batch_size: Adam mini-batch size; ``None``: the full batch.
        tol: used when ``p == 0`` (the objective is then deterministic, plain logistic
            regression, and L-BFGS is fitted as in :class:`FastDropoutLogisticRegression`:
            SciPy's L-BFGS-B on the exact gradient in float64, stopping when the largest
            gradient component is at most ``tol``).
        warm_start: start ``fit`` from the previous fit's weights when the numbers of features
            and of classes match; otherwise from zeros.
        random_state: seeds the masks and the Adam batch order (an int, a
            ``numpy.random.RandomState`` or ``None``).
        dtype: ``"float32"`` or ``"float64"``.

    Attributes:
        classes_, coef_, intercept_, n_features_in_, n_iter_, n_evals_, fit_time_: as in
            :class:`FastDropoutLogisticRegression`.

    Example:
        >>> import numpy as np
        >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
        >>> model = MCDropoutLogisticRegression(p=0.2, num_samples=4, random_state=0)
        >>> model.fit(X, [3, 7, 3, 7]).classes_.tolist()
        [3, 7]
    """

    def __init__(
        self,
        p: float = 0.5,
        *,
        num_samples: int = 1,
        l2: float = 0.0,
        optimizer: str = "lbfgs",
        max_iter: int = 100,
        lr: float | None = None,
        batch_size: int | None = None,
        tol: float = 1e-6,
        warm_start: bool = False,
        random_state: Any = None,
        dtype: str = "float32",
    ) -> None:
        self.p = p
        self.num_samples = num_samples
        self.l2 = l2
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.lr = lr
        self.batch_size = batch_size
        self.tol = tol
        self.warm_start = warm_start
        self.random_state = random_state
        self.dtype = dtype

    def _check_objective(self, num_classes: int) -> None:
        _int("num_samples", self.num_samples)

    @property
    def _stochastic(self) -> bool:  # type: ignore[override]
        return float(self.p) > 0

    def _exact_loss(
        self, X: Any, y_idx: np.ndarray, num_classes: int, opts: dict[str, Any]
    ) -> FastDropoutLinearLoss | None:
        if opts["optimizer"] != "lbfgs" or opts["p"] > 0:
            return None
        objective = "closed_form" if num_classes == 2 else "unscented"
        return FastDropoutLinearLoss(
            _float64_features(X), y_idx, num_classes, 0.0, opts["l2"], objective, "diagonal"
        )

    def _nll(
        self,
        design: DesignMatrix,
        y: Tensor,
        weight: Tensor,
        bias: Tensor,
        num_classes: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Per-example NLL ``(N,)`` averaged over ``num_samples`` fresh masks."""
        p = float(self.p)
        num_samples = _int("num_samples", self.num_samples)
        total: Tensor | None = None
        for _ in range(num_samples):
            logits = design.mm_masked(weight.t(), p, generator) + bias
            if num_classes == 2:
                loss = F.binary_cross_entropy_with_logits(
                    logits[:, 0], y.to(logits.dtype), reduction="none"
                )
            else:
                loss = F.cross_entropy(logits, y, reduction="none")
            total = loss if total is None else total + loss
        assert total is not None
        return total / num_samples

    def _log_proba(self, design: DesignMatrix) -> Tensor:
        weight, bias = self._class_logit_weights()
        return torch.log_softmax(design.mm(weight.t()) + bias, -1)

    def fit(self, X: Any, y: Any) -> MCDropoutLogisticRegression:
        """Train on ``(X, y)`` with the constructor's options; return ``self``.

        Args:
            X: features ``(n_samples, n_features)``: an array-like or a ``scipy.sparse`` matrix.
            y: class labels ``(n_samples,)`` of any type (at least two distinct values).
        """
        return self._fit(X, y)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of the deterministic pass (mean weights),
        ``(n_samples, n_classes)``, columns in the order of ``classes_``."""
        with torch.no_grad():
            return self._log_proba(self._design(X)).exp().numpy()

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithms of :meth:`predict_proba`."""
        with torch.no_grad():
            return self._log_proba(self._design(X)).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class label per sample."""
        return self._predict(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """Binary: the logit of ``classes_[1]``, ``(n_samples,)``; several classes: the class
        logits up to a per-sample constant (log-probabilities), ``(n_samples, n_classes)``."""
        return self._decision(X)

    def logit_moments(self, X: Any, covariance: str = "diagonal") -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and variance of the logits over the masks (as in
        :meth:`FastDropoutLogisticRegression.logit_moments`)."""
        return self._logit_moments(X, covariance)

    def to_module(self) -> nn.Module:
        """The fitted model as ``Sequential(MCDropout(p), Linear(d, K))`` of the class logits.

        :func:`bayesdrop.mc_predict` samples its masks; in eval mode it is the deterministic
        pass of :meth:`predict_proba`.
        """
        from .nn.mc_dropout import MCDropout

        check_is_fitted(self)
        weight, bias = self._class_logit_weights()
        linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        return nn.Sequential(MCDropout(float(self.p)), linear).eval()
