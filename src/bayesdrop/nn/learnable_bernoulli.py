"""Learnable Bernoulli dropout (LBD; Boluki et al. 2020): exact Bernoulli masks, learned rates.

The rates are trained with unbiased ARM/DisARM gradients. That needs the *same* uniforms to be
evaluated twice (the antithetic pair), which is what :func:`bayesdrop.objective` arranges: it
opens an :class:`AntitheticPair` on every LBD module, runs the batch as the pair, and adds the
estimator's surrogate term built from the per-example loss difference. Outside ``objective`` an
LBD module in training mode samples ordinary independent masks (rates then get only the pathwise
part of their gradient, through the inverted-dropout scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_positive, check_probability
from ..estimators import antithetic_masks, arm_coefficient, disarm_coefficient
from ..functional.bernoulli import LOGIT_BOUND, bernoulli_dropout, gal_bernoulli_kl
from ._base import DropoutModule
from ._layers import batch_dim, check_layer, input_weight_sq_norms, mask_shape

__all__ = ["LearnableBernoulliDropout", "AntitheticPair"]

_COEFFICIENTS = {"arm": arm_coefficient, "disarm": disarm_coefficient}


@dataclass
class _Draw:
    u: Tensor
    z1: Tensor
    z2: Tensor
    batch_dim: int


@dataclass
class AntitheticPair:
    """Per-module record of the uniforms of one antithetic evaluation (owned by ``objective``).

    ``mode`` is ``"concat"`` (the input batch holds the pair: first half uses ``z1``, second half
    ``z2``), ``"first"`` (this pass uses ``z1`` and records the draws) or ``"second"`` (this pass
    replays the recorded draws with ``z2``). Draws are kept in call order, so a module called
    several times per forward (weight sharing, loops) is handled.
    """

    mode: str = "concat"
    draws: list[_Draw] = field(default_factory=list)
    cursor: int = 0


class LearnableBernoulliDropout(DropoutModule):
    r"""Bernoulli dropout whose drop probabilities are learned with ARM or DisARM gradients.

    In the wrapper form it drops the inputs of ``layer`` (features of ``nn.Linear``, whole channels
    of ``nn.Conv1d/2d/3d``, input features of ``nn.LSTM/GRU/RNN`` with one mask per sequence) and
    returns ``layer(x ⊙ z / (1 - p))``; in the bare form (``num_features=``) it returns the dropped
    input. Masks are exact Bernoulli draws, :math:`z_k \sim \mathrm{Ber}(1 - p_k)`, one per example
    and unit; eval mode is the identity on the mask.

    Drop probabilities are :math:`p = \sigma(\mathrm{logit\_p})`, one per input unit
    (``granularity="unit"``) or one per layer (``"layer"``); ``logit_p`` is clamped to
    ``[-30, 30]``. The prior is Gal's quantised Gaussian with length-scale ``l``
    (:func:`~bayesdrop.functional.gal_bernoulli_kl`):

    .. math::
        \mathrm{KL} = \sum_k \frac{l^2}{2(1-p_k)}\|W_{\cdot k}\|^2 - H(1 - p_k).

    The data-set size enters once, in :func:`bayesdrop.objective` (``n_data``), never here.

    Args:
        layer: the layer whose inputs are dropped, or ``None`` for the bare form.
        num_features: number of input units for the bare form (features, last dimension).
        init_p: initial drop probability, in (0, 1).
        granularity: ``"unit"`` (a rate per input unit) or ``"layer"`` (one shared rate).
        estimator: ``"arm"`` or ``"disarm"`` (used by :func:`bayesdrop.objective`).
        length_scale: prior length-scale :math:`l` (prior precision :math:`l^2`); default 1.0
            gives an effective weight decay :math:`1/(2N(1-p))` per example.
        generator: optional generator for the uniforms.

    Shape:
        As the wrapped layer; bare form ``(*, num_features)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = LearnableBernoulliDropout(nn.Linear(4, 2), init_p=0.25)
        >>> m.p.shape
        torch.Size([4])
        >>> m.eval()(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        layer: nn.Module | None = None,
        *,
        num_features: int | None = None,
        init_p: float = 0.5,
        granularity: str = "unit",
        estimator: str = "disarm",
        length_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.kind, self.units = check_layer(layer, num_features)
        self.layer = layer
        init_p = check_probability("init_p", init_p)
        self.granularity = check_choice("granularity", granularity, ("unit", "layer"))
        self.estimator = check_choice("estimator", estimator, tuple(_COEFFICIENTS))
        self.length_scale = check_positive("length_scale", length_scale, allow_zero=True)
        n = self.units if self.granularity == "unit" else 1
        logit = torch.logit(torch.tensor(init_p, dtype=torch.float32))
        self.logit_p = nn.Parameter(torch.full((n,), float(logit)))
        self._pair: AntitheticPair | None = None

    # ----------------------------------------------------------------------------- properties
    @property
    def p(self) -> Tensor:
        return torch.sigmoid(self._logit_p()).detach()

    def _logit_p(self) -> Tensor:
        return self.logit_p.clamp(-LOGIT_BOUND, LOGIT_BOUND)

    def _unit_view(self, t: Tensor, ndim: int) -> Tensor:
        """Reshape a per-unit vector to broadcast against a mask of ``ndim`` dims."""
        if self.kind == "conv":
            return t.reshape((-1,) + (1,) * (ndim - 2))
        return t

    def extra_repr(self) -> str:
        form = "" if self.layer is not None else f"num_features={self.units}, "
        return (
            f"{form}granularity={self.granularity!r}, estimator={self.estimator!r}, "
            f"length_scale={self.length_scale}"
        )

    # ----------------------------------------------------------------------------- prior
    def kl(self) -> Tensor:
        norms = input_weight_sq_norms(self.layer) if self.layer is not None else None
        logit_p: Tensor = self.logit_p
        if norms is None and self.granularity == "layer":
            logit_p = logit_p.expand(self.units)
        return gal_bernoulli_kl(logit_p, norms, self.length_scale)

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        if self.sampling:
            x = self._drop(x)
        return x if self.layer is None else self.layer(x)

    def _drop(self, x: Tensor) -> Tensor:
        shape = mask_shape(x, self.layer, self.units)
        logit_p = self._unit_view(self._logit_p(), len(shape))
        keep_logit = (-logit_p).detach().to(x.dtype)
        pair = self._pair
        if pair is None:
            u = torch.rand(shape, dtype=x.dtype, device=x.device, generator=self.generator)
            keep = u < torch.sigmoid(keep_logit)
        elif pair.mode == "concat":
            bd = batch_dim(self.layer)
            if shape[bd] % 2:
                raise ValueError(
                    "the antithetic pair needs an even batch along batch_dim; got "
                    f"{shape[bd]} (was the batch concatenated along another dimension?)"
                )
            half = list(shape)
            half[bd] //= 2
            u = torch.rand(half, dtype=x.dtype, device=x.device, generator=self.generator)
            z1, z2 = antithetic_masks(keep_logit, u)
            pair.draws.append(_Draw(u, z1, z2, bd))
            keep = torch.cat([z1, z2], dim=bd)
        elif pair.mode == "first":
            u = torch.rand(shape, dtype=x.dtype, device=x.device, generator=self.generator)
            z1, z2 = antithetic_masks(keep_logit, u)
            pair.draws.append(_Draw(u, z1, z2, batch_dim(self.layer)))
            keep = z1
        else:
            if pair.cursor >= len(pair.draws):
                raise RuntimeError(
                    "second pass of the antithetic pair called this module more often"
                )
            draw = pair.draws[pair.cursor]
            pair.cursor += 1
            if tuple(draw.u.shape) != tuple(shape):
                raise RuntimeError("the two passes of the antithetic pair saw different shapes")
            keep = draw.z2
        return bernoulli_dropout(x, logit_p, keep)

    def rate_surrogate(self, delta: Tensor) -> Tensor:
        r"""Surrogate whose gradient is the ARM/DisARM estimate for this module's rates.

        ``delta`` holds :math:`f_i(z^{(1)}) - f_i(z^{(2)})` per example (shape ``(batch,)``,
        already divided by the batch size as the objective's mean requires). Returns a 0-dim
        tensor :math:`\sum \phi \cdot \mathrm{sg}(\hat g)` over the recorded draws, with
        :math:`\phi = -\mathrm{logit\_p}` the keep logits.
        """
        assert self._pair is not None
        coefficient = _COEFFICIENTS[self.estimator]
        total = delta.new_zeros(())
        for d in self._pair.draws:
            keep_logit = self._unit_view(-self._logit_p(), d.u.dim())
            coef = coefficient(d.u, d.z1, d.z2, keep_logit.detach().to(d.u.dtype))
            view = [1] * d.u.dim()
            view[d.batch_dim] = -1
            g = delta.detach().to(coef.dtype).reshape(view) * coef
            total = total + (keep_logit * g).sum()
        return total
