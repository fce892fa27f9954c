r"""Fast dropout networks (Wang & Manning 2013): deterministic Gaussian moments instead of masks.

* :class:`FastDropoutLinear` — a linear layer with input dropout that propagates
  ``(mean, var)`` exactly (:func:`~bayesdrop.functional.fast_dropout_linear`).
* :class:`FastDropoutMLP` — ReLU or sigmoid hidden units, moments carried through every layer;
  training and test are the same deterministic computation (no weight halving).

Both have ``output_moments(x) -> (mean, var)``: the Gaussian moments of their output logits,
shape ``(N, K)``. :func:`bayesdrop.mc_predict` answers these modules from the moments, without
sampling; ``forward`` returns the mean logits.

The logistic-regression estimators (fast dropout and its Monte Carlo baseline) are
scikit-learn estimators in :mod:`bayesdrop.linear_model`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_int
from ..functional.fast_dropout import (
    Moments,
    check_drop_probability,
    expected_logistic_nll,
    expected_softmax,
    expected_softmax_cross_entropy,
    expected_squared_error,
    fast_dropout_linear,
    relu_moments,
    sigmoid_moments,
)
from ._base import DropoutModule

__all__ = ["FastDropoutLinear", "FastDropoutMLP"]

# re-exported for code that imported it from here (its home is bayesdrop.functional.fast_dropout)
from ..functional.fast_dropout import as_feature_tensor as as_feature_tensor  # noqa: E402


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

    def _input_dtype(self) -> torch.dtype | None:
        return self.weight.dtype

    def output_moments(self, x: Tensor) -> Moments:
        """Output ``(mean, var)`` for exactly known inputs ``x``.

        Raises:
            ValueError: the moments overflow the dtype (an input whose square exceeds its largest
                number).
        """
        self._check_input(x)
        return _check_no_overflow(self.moments(x, None), x, type(self).__name__)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return F.linear(x, self.weight, self.bias)


def _check_no_overflow(moments: Moments, x: Tensor, owner: str) -> Moments:
    """Raise instead of returning moments that overflowed although ``x`` is finite.

    The variances grow with the squares of the inputs, so an input whose square exceeds the
    largest number of its dtype (about 1.8e19 in float32) gives an infinite variance and, one
    layer on, NaN means; such an input is refused with the dtype's limit.
    """
    mean, var = moments
    if bool(torch.isfinite(mean).all()) and bool(torch.isfinite(var).all()):
        return moments
    big = float(x.detach().abs().max()) if x.numel() else 0.0
    limit = torch.finfo(mean.dtype).max
    raise ValueError(
        f"{owner}: the output moments overflow {mean.dtype} (largest |input| {big:.3g}; the "
        f"variances grow with the squared inputs and {mean.dtype} holds at most {limit:.3g}); "
        "scale the inputs, or use float64 (module.double() and double inputs)"
    )


_ACTIVATIONS = {"relu": relu_moments, "sigmoid": sigmoid_moments}
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
        num_samples: draws for ``method="sample"``.
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
        num_samples: int = 100,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.activation = check_choice("activation", activation, tuple(_ACTIVATIONS))
        self.loss = check_choice("loss", loss, _MLP_LOSSES)
        self.method = check_choice("method", method, ("unscented", "sample"))
        self.num_samples = check_int("num_samples", num_samples)
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
        self._check_input(x)
        act = _ACTIVATIONS[self.activation]
        layers: list[FastDropoutLinear] = list(self.layers)  # type: ignore[arg-type]
        mean, var = layers[0].output_moments(x)  # checks x and that the moments are finite
        for layer in layers[1:]:
            hidden = act(mean, var, validate=False)
            mean, var = fast_dropout_linear(
                *hidden, layer.weight, layer.bias, layer._p, validate=False
            )
        return _check_no_overflow(Moments(mean, var), x, type(self).__name__)

    def _input_dtype(self) -> torch.dtype | None:
        return self.layers[0].weight.dtype  # type: ignore[return-value]

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
                mean,
                var,
                target,
                self.method,
                num_samples=self.num_samples,
                generator=self.generator,
            )
        if loss == "logistic":
            return expected_logistic_nll(mean, var, target.reshape(mean.shape)).sum(-1)
        return expected_squared_error(mean, var, target.reshape(mean.shape)).sum(-1)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Expected softmax probabilities ``(N, out_features)`` (unscented transform)."""
        mean, var = self.output_moments(x)
        return expected_softmax(mean, var, "unscented")
