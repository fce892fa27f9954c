r"""Pure tensor math of Concrete dropout (Gal, Hron & Kendall 2017, "Concrete dropout").

Concrete dropout replaces the Bernoulli keep mask by its continuous relaxation (the binary
Concrete or relaxed Bernoulli distribution, Maddison et al. 2017 / Jang et al. 2017) so that the
drop probability gets a pathwise (reparameterisation) gradient, and regularises the rates with
Gal's quantised-Gaussian KL.

Scaling convention (one place only, as everywhere in bayesdrop): the functions here return
**data-set level** quantities, and :func:`bayesdrop.objective` divides them by the data-set
size :math:`N`. Gal's code and paper write the per-example loss

.. math::
    \frac1M\sum_{i\in S} \ell_i
    + \sum_{\text{layers}} \Bigl(\mathrm{wd}\,\frac{\|W\|^2}{1-p} - \mathrm{dd}\,K\,H(p)\Bigr),
    \qquad \mathrm{wd} = \frac{l^2}{\tau N},\quad \mathrm{dd} = \frac{2}{\tau N},

with :math:`\ell_i` the squared error (the Gaussian negative log likelihood times
:math:`2/\tau`). bayesdrop's ``weight_regularizer`` and ``dropout_regularizer`` are Gal's
``wd`` and ``dd`` multiplied by :math:`N` (:func:`concrete_regularizers`), so
``objective(model, x, y, nll, n_data=N)`` reproduces that per-example loss exactly while
``kl()`` never sees :math:`N`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_positive
from .bernoulli import LOGIT_BOUND, inverted_scale

__all__ = [
    "KEEP_FLOOR",
    "ConcreteRegularizers",
    "concrete_keep_mask",
    "concrete_dropout",
    "concrete_dropout_from_uniforms",
    "layer_regularizer",
    "concrete_regularizer",
    "concrete_regularizers",
]


#: Relaxed keep-mask values below this are set to exactly 0. Such values mean "dropped" for every
#: purpose (their gradient is below ``KEEP_FLOOR / t``); flushing them keeps denormal numbers out
#: of the following matrix products.
KEEP_FLOOR = 1e-12


def _check_temperature(temperature: float) -> float:
    return check_positive("temperature", temperature)


class _ConcreteDropoutFn(torch.autograd.Function):
    r"""``x * keep * (1 + exp(logit_p))`` with a hand-written backward (fewer passes than autograd).

    With :math:`y = x \tilde z s`, :math:`s = 1 + e^{a}`, :math:`a = \mathrm{logit}\,p`:
    :math:`\partial y/\partial a = y\,(p - (1 - \tilde z)/t)`, since
    :math:`\partial\tilde z/\partial a = -\tilde z(1-\tilde z)/t` and :math:`s'/s = p`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, logit_p: Tensor, u: Tensor, temperature: float, overwrite_u: bool
    ) -> Tensor:
        keep = u.logit_() if overwrite_u else torch.logit(u)
        keep.add_(logit_p).mul_(-1.0 / temperature).sigmoid_()
        torch.threshold_(keep, KEEP_FLOOR, 0.0)
        scale = inverted_scale(logit_p)
        mask = keep.mul_(scale)  # keep * 1/(1-p), the mask's own (possibly reduced) shape
        ctx.save_for_backward(x, logit_p, mask, scale)
        ctx.temperature = temperature
        return x * mask

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, logit_p, mask, scale = ctx.saved_tensors
        t = ctx.temperature
        grad_x = grad * mask
        grad_logit = None
        if ctx.needs_input_grad[1]:
            r = _reduce_to(grad_x * x, mask.shape)  # sum of grad * y over broadcast dims
            p = torch.sigmoid(logit_p)
            if logit_p.numel() == 1:
                r_sum = r.sum()
                rm_sum = torch.dot(r.reshape(-1), mask.reshape(-1))
            else:
                r_sum = _reduce_to(r, logit_p.shape)
                rm_sum = _reduce_to(r * mask, logit_p.shape)
            grad_logit = ((p - 1.0 / t) * r_sum + rm_sum / (scale * t)).reshape(logit_p.shape)
        grad_input = _reduce_to(grad_x, x.shape) if ctx.needs_input_grad[0] else None
        return grad_input, grad_logit, None, None, None


def _unit_view(w: Tensor, groups: int) -> Tensor:
    """``w`` as ``(groups, out/groups, in/groups, rest)``: input unit ``k`` is ``[k // ipg, :, k % ipg]``."""
    return w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)


class _LayerRegularizerFn(torch.autograd.Function):
    """:func:`.concrete_regularizer` of one layer, its weight norms included, as one graph node.

    The same value as ``concrete_regularizer(logit_p, input_weight_sq_norms(layer), ...)``; the
    hand-written backward touches each weight once (``2 g λ_w s W``) and replaces the dozens of
    tiny autograd nodes of the scalar part, which dominate its cost in a training step.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logit_p: Tensor,
        weight_regularizer: float,
        dropout_regularizer: float,
        units: int,
        groups: int,
        *weights: Tensor,
    ) -> Tensor:
        a = logit_p.reshape(-1).clamp(-LOGIT_BOUND, LOGIT_BOUND)
        scale = torch.exp(a).add_(1.0)
        sig = torch.sigmoid(a)
        per_unit = a.numel() > 1
        norms: Tensor | None = None
        for w in weights:
            if per_unit:
                v = _unit_view(w, groups)
                n = (v * v).sum((1, 3)).reshape(-1)
            else:
                flat = w.reshape(-1)
                n = torch.dot(flat, flat).reshape(1)
            norms = n if norms is None else norms + n
        entropy = (F.softplus(a) - a * sig).sum()
        reg = entropy * (-dropout_regularizer * (1 if per_unit else units))
        if norms is not None:
            reg = reg + weight_regularizer * torch.dot(norms.to(a.dtype), scale)
        ctx.save_for_backward(logit_p, a, scale, sig, norms, *weights)
        ctx.consts = (weight_regularizer, dropout_regularizer, units, groups, per_unit)
        return reg.to(weights[0].dtype if weights else a.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        logit_p, a, scale, sig, norms, *weights = ctx.saved_tensors
        wr, dr, units, groups, per_unit = ctx.consts
        grad_logit = None
        if ctx.needs_input_grad[0]:
            d_entropy = -a * sig * (1.0 - sig)  # dH/da with H = softplus(a) - a sigmoid(a)
            g = -dr * (1 if per_unit else units) * d_entropy
            if norms is not None:
                g = g + wr * norms.to(a.dtype) * (scale - 1.0)
            inside = logit_p.reshape(-1).abs() <= LOGIT_BOUND
            grad_logit = (grad * g * inside).reshape(logit_p.shape)
        coef = (2.0 * wr) * grad * scale  # d reg / d W = 2 λ_w s W, per unit or shared
        grads_w: list[Tensor | None] = []
        for i, w in enumerate(weights):
            if not ctx.needs_input_grad[5 + i]:
                grads_w.append(None)
            elif per_unit:
                v = _unit_view(w, groups)
                c = coef.to(w.dtype).reshape(groups, 1, v.shape[2], 1)
                grads_w.append((v * c).reshape(w.shape))
            else:
                grads_w.append(w * coef.to(w.dtype))
        return (grad_logit, None, None, None, None, *grads_w)


def layer_regularizer(
    logit_p: Tensor,
    weights: list[Tensor],
    groups: int,
    weight_regularizer: float,
    dropout_regularizer: float,
    num_units: int,
) -> Tensor:
    """Fused :func:`.concrete_regularizer` of a layer from its input weights.

    The value of :func:`.concrete_regularizer` for the weights ``weights`` that the dropped units
    feed (``groups`` units share a rate when they are grouped, e.g. channels), with a one-pass
    backward; :class:`~bayesdrop.nn.ConcreteDropout` calls it.
    """
    return _LayerRegularizerFn.apply(
        logit_p, weight_regularizer, dropout_regularizer, num_units, groups, *weights
    )


def _reduce_to(t: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Sum ``t`` over the dimensions along which ``shape`` was broadcast to ``t.shape``."""
    if tuple(t.shape) == tuple(shape):
        return t
    if len(shape) == 0:
        return t.sum()
    lead = t.dim() - len(shape)
    dims = list(range(lead)) + [
        lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1
    ]
    out = t.sum(dim=dims, keepdim=True) if dims else t
    return out.reshape(shape)


def concrete_keep_mask(logit_p: Tensor, u: Tensor, temperature: float) -> Tensor:
    r"""Relaxed Bernoulli keep mask with drop logits ``logit_p`` and explicit uniforms ``u``.

    Gal et al. (2017), eq. (3) relaxes the *drop* indicator; the keep mask is one minus it:

    .. math::
        \tilde z = 1 - \sigma\!\Bigl(\tfrac1t\bigl(\mathrm{logit}\,p + \log u - \log(1-u)\bigr)\Bigr)
                 = \sigma\!\Bigl(-\tfrac1t\bigl(\mathrm{logit}\,p + \mathrm{logit}\,u\bigr)\Bigr),

    with :math:`u \sim \mathcal U(0, 1)`. For every temperature :math:`t`,
    :math:`P(\tilde z > 1/2) = 1 - p`; its CDF is
    :math:`P(\tilde z \le z) = \sigma(\mathrm{logit}\,p + t\,\mathrm{logit}\,z)`, which tends to
    the Bernoulli(1 - p) CDF as :math:`t \to 0`. ``logit_p`` is clamped to
    ``[-LOGIT_BOUND, LOGIT_BOUND]``; ``u`` equal to 0 or 1 gives a mask of exactly 1 or 0 (never
    NaN); mask values below :data:`.KEEP_FLOOR` are set to exactly 0.

    Args:
        logit_p: drop logits, broadcastable against ``u``; gradients flow pathwise to them.
        u: uniforms in ``[0, 1]`` (the noise; pass the same ``u`` to get the same mask).
        temperature: :math:`t > 0`; small values approach the Bernoulli mask.

    Returns:
        The keep mask in ``[0, 1]``, shaped like the broadcast of ``logit_p`` and ``u``.

    Example:
        >>> import torch
        >>> u = torch.tensor([0.05, 0.5, 0.95])
        >>> concrete_keep_mask(torch.tensor(0.0), u, temperature=0.1).round(decimals=4)  # p = 0.5
        tensor([1.0000, 0.5000, 0.0000])
    """
    t = _check_temperature(temperature)
    logit_p = logit_p.clamp(-LOGIT_BOUND, LOGIT_BOUND)
    return F.threshold(torch.sigmoid((logit_p + torch.logit(u)) * (-1.0 / t)), KEEP_FLOOR, 0.0)


def concrete_dropout(x: Tensor, logit_p: Tensor, temperature: float, u: Tensor) -> Tensor:
    r"""Concrete dropout of ``x`` with inverted-dropout scaling: :math:`x \odot \tilde z/(1-p)`.

    .. math::
        y = x \odot \tilde z \,(1 + e^{\mathrm{logit}\,p}),\qquad
        \tilde z = \sigma\!\bigl(-(\mathrm{logit}\,p + \mathrm{logit}\,u)/t\bigr)

    as in Gal's reference implementation (the scale is :math:`1/(1-p)`, the keep probability of
    the Bernoulli mask the relaxation approaches).

    Args:
        x: input.
        logit_p: drop logits, broadcastable against ``x`` (e.g. ``(1,)``, ``(features,)`` or
            ``(channels, 1, 1)``); clamped to ``[-LOGIT_BOUND, LOGIT_BOUND]``.
        temperature: relaxation temperature :math:`t > 0`.
        u: uniforms of the mask's shape (one per example and unit), broadcastable against ``x``.

    Example:
        >>> import torch
        >>> x = torch.ones(1, 3)
        >>> u = torch.tensor([[0.05, 0.5, 0.95]])
        >>> concrete_dropout(x, torch.tensor(0.0), 0.1, u).round(decimals=4)  # 1/(1-p) = 2
        tensor([[2., 1., 0.]])
    """
    return concrete_dropout_from_uniforms(x, logit_p, temperature, u, overwrite_u=False)


def concrete_dropout_from_uniforms(
    x: Tensor, logit_p: Tensor, temperature: float, u: Tensor, overwrite_u: bool
) -> Tensor:
    """:func:`.concrete_dropout` with given uniforms ``u``; with ``overwrite_u`` their storage is
    reused for the relaxed mask (the module passes uniforms it has just drawn)."""
    t = _check_temperature(temperature)
    logit_p = logit_p.to(x.dtype).clamp(-LOGIT_BOUND, LOGIT_BOUND)
    if u.dtype != x.dtype:
        u, overwrite_u = u.to(x.dtype), True
    mask_shape = torch.broadcast_shapes(logit_p.shape, u.shape)
    if u.shape != mask_shape:
        u, overwrite_u = u.expand(mask_shape), False
    return _ConcreteDropoutFn.apply(x, logit_p, u, t, overwrite_u)


def concrete_regularizer(
    logit_p: Tensor,
    weight_sq_norms: Tensor | None,
    weight_regularizer: float,
    dropout_regularizer: float,
    num_units: int | None = None,
) -> Tensor:
    r"""Gal's Concrete dropout regulariser of one layer, a data-set level sum (0-dim).

    For input unit (feature, channel) :math:`k` with drop probability :math:`p_k` and squared
    norm :math:`\|W_{\cdot k}\|^2` of the weights it feeds,

    .. math::
        R = \sum_{k=1}^{K} \Bigl( \lambda_w \frac{\|W_{\cdot k}\|^2}{1-p_k}
                                 - \lambda_d\, H(p_k) \Bigr),\qquad
        H(p) = -p\log p - (1-p)\log(1-p),

    with :math:`\lambda_w` = ``weight_regularizer`` and :math:`\lambda_d` =
    ``dropout_regularizer``. With one shared rate (a single logit) this is Gal's
    :math:`\lambda_w \|W\|^2/(1-p) - \lambda_d K H(p)`. It is the KL of Gal's quantised-Gaussian
    prior (up to constants) written in the weights :math:`W = (1-p) M` that a layer fed by
    inverted dropout stores: :math:`\lambda_w = l^2/2`, :math:`\lambda_d = 1` for a proper
    negative log likelihood (see :func:`concrete_regularizers` for Gal's scaling).

    Args:
        logit_p: drop logits, shape ``(1,)`` (one rate per layer) or ``(K,)`` (one per unit);
            clamped to ``[-LOGIT_BOUND, LOGIT_BOUND]``.
        weight_sq_norms: ``(K,)`` squared norms of the weights fed by each input unit (see
            :func:`bayesdrop.nn.wrapped_layers.input_weight_sq_norms`); with a single rate also a 0-dim
            total :math:`\|W\|^2` (then ``num_units`` gives :math:`K`); or ``None`` for a bare
            dropout layer (only the entropy term remains).
        weight_regularizer: :math:`\lambda_w \ge 0`.
        dropout_regularizer: :math:`\lambda_d \ge 0`.
        num_units: :math:`K` when ``weight_sq_norms`` is ``None`` or 0-dim and ``logit_p`` has
            one element (defaults to ``logit_p.numel()``).

    Returns:
        A 0-dim tensor (never scaled by the data-set size).

    Example:
        >>> import torch, math
        >>> r = concrete_regularizer(torch.zeros(1), torch.tensor([1.0, 3.0]), 0.5, 1.0)
        >>> round(float(r), 6) == round(0.5 * 4.0 * 2 - 2 * math.log(2), 6)
        True
    """
    weight_regularizer = check_positive("weight_regularizer", weight_regularizer, allow_zero=True)
    dropout_regularizer = check_positive(
        "dropout_regularizer", dropout_regularizer, allow_zero=True
    )
    logit_p = logit_p.reshape(-1).clamp(-LOGIT_BOUND, LOGIT_BOUND)
    if weight_sq_norms is not None and weight_sq_norms.dim() > 0:
        units = weight_sq_norms.numel()
    else:
        units = logit_p.numel() if num_units is None else int(num_units)
    if logit_p.numel() not in (1, units):
        raise ValueError(
            f"logit_p must have 1 or {units} (one per input unit) elements, "
            f"but got {logit_p.numel()}"
        )
    # H(p) = softplus(a) - a sigmoid(a), the same value as bernoulli_entropy in fewer ops
    entropy = (F.softplus(logit_p) - logit_p * torch.sigmoid(logit_p)).sum()
    if logit_p.numel() == 1:
        entropy = entropy * units
    reg = -dropout_regularizer * entropy
    if weight_sq_norms is not None:
        if weight_sq_norms.dim() == 0 and logit_p.numel() != 1:
            raise ValueError("a 0-dim weight_sq_norms (a total) needs a single rate in logit_p")
        scale = inverted_scale(logit_p).to(weight_sq_norms.dtype)
        reg = reg + weight_regularizer * (weight_sq_norms.reshape(-1) * scale).sum()
    return reg


class ConcreteRegularizers(NamedTuple):
    """``weight_regularizer`` and ``dropout_regularizer`` in bayesdrop's data-set convention."""

    weight_regularizer: float
    dropout_regularizer: float


def concrete_regularizers(length_scale: float, precision: float = 1.0) -> ConcreteRegularizers:
    r"""Both Concrete dropout regularisers from a prior length-scale and a model precision.

    Gal et al. (2017) set, for a data set of :math:`N` points, prior length-scale :math:`l` and
    model precision :math:`\tau`, the per-example coefficients
    :math:`\mathrm{wd} = l^2/(\tau N)` and :math:`\mathrm{dd} = 2/(\tau N)` of a loss whose data
    term is the squared error (the Gaussian NLL :math:`\tfrac\tau2(y-f)^2` times :math:`2/\tau`).
    :func:`bayesdrop.objective` divides ``kl()`` by ``n_data`` itself, so the module takes those
    coefficients times :math:`N`:

    .. math::
        \lambda_w = N\,\mathrm{wd} = \frac{l^2}{\tau},\qquad
        \lambda_d = N\,\mathrm{dd} = \frac{2}{\tau},

    and ``objective(model, x, y, nll, n_data=N)`` with ``nll`` the per-example squared error is
    exactly Gal's per-example loss. :math:`N` never enters here. With a *proper* negative log
    likelihood as ``nll`` (cross-entropy, or the Gaussian NLL including its
    :math:`\tfrac\tau2`), the exact variational KL is obtained with ``precision=2``
    (:math:`\lambda_w = l^2/2`, :math:`\lambda_d = 1`, the module's defaults for :math:`l = 1`).

    Args:
        length_scale: prior length-scale :math:`l > 0` (prior precision :math:`l^2`).
        precision: model precision :math:`\tau > 0` (1 for Gal's classification setting).

    Returns:
        ``ConcreteRegularizers(weight_regularizer, dropout_regularizer)``, to pass as keyword
        arguments: ``ConcreteDropout(layer, **concrete_regularizers(l, tau)._asdict())``.

    Example:
        >>> concrete_regularizers(length_scale=1e-2, precision=4.0)
        ConcreteRegularizers(weight_regularizer=2.5e-05, dropout_regularizer=0.5)
    """
    length_scale = check_positive("length_scale", length_scale)
    precision = check_positive("precision", precision)
    return ConcreteRegularizers(length_scale**2 / precision, 2.0 / precision)
