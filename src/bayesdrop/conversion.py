"""Turn an existing model's ``nn.Dropout*`` layers into a bayesdrop dropout family.

:func:`~bayesdrop.convert` returns a **converted copy** of the model and a
:class:`ConversionReport`; the original model is never modified, and the copy is trainable at once
(every new parameter exists when :func:`~bayesdrop.convert` returns). Dropout layers are found by
module type (``isinstance`` of ``nn.Dropout``, ``nn.Dropout1d/2d/3d``), never by class-name text.

Where each dropout goes, and what it feeds, is read from the model:

* with ``example_inputs=`` (recommended for anything but an ``nn.Sequential``), a copy of the model
  is run once on them while every ``nn.Dropout*`` not in ``exclude`` is a probe (an instance of
  its own class that records its input, so code reading ``dropout.p`` sees what it always sees)
  and every torch call is watched (:class:`torch.overrides.TorchFunctionMode`): this gives the
  shape each dropout sees, the layout of its input (features last, or channels at dimension 1
  after a convolution or a channel normalisation) and every consumer of its output, through
  residual additions, attention blocks, ``torch.cat``, views and anything else written in
  ``forward`` (a trace, not a guess from the module order). After the conversion the converted
  copy is run on them in training and eval mode (random state, buffers and modes restored); a
  failure names the module, and every dropout that still fires outside a bayesdrop module
  (``F.dropout``, ``F.scaled_dot_product_attention(dropout_p>0)``, drop path, Bernoulli draws)
  is listed in :attr:`ConversionReport.fixed`;
* without them, only the ``nn.Sequential`` neighbours are known.

Then each dropout becomes one of:

* **wrapped** — the dropout's output is consumed by exactly one ``nn.Linear``, ``nn.Conv1d/2d/3d``
  or ``nn.LSTM/GRU/RNN`` (and by nothing else), and that layer reads nothing else: the layer is
  replaced by ``Family(layer, **options)`` (same weights, its ``state_dict`` keys gain a
  ``.layer`` prefix) and the dropout by ``nn.Identity``. The family's prior (KL) then includes the
  weight term over the weights the dropped units feed, as in the papers.
* **bare** — otherwise (residual ``x + dropout(f(x))``, dropout before a normalisation, a
  pooling, an addition, a reshape, or fed to two consumers): the dropout is replaced in place by
  ``Family(num_features=F, **options)``, with one rate per feature (the last dimension), or for
  ``nn.Dropout1d/2d/3d`` one per channel, whole channels dropped (:class:`ChannelDropout`). The
  weights the dropout feeds are unknown here, so the family's prior keeps only its rate term; the
  report says so for each layer (see :attr:`Replacement.prior`). An elementwise ``nn.Dropout`` on
  a convolutional feature map ``(N, C, *)`` gets one rate per channel with elementwise masks
  (:class:`ChannelRateDropout`).
* **one rate** — where a per-feature rate cannot be placed, because the last dimension is a
  position and not a feature (the input of the dropout comes from a softmax: attention
  probabilities), the input is a 4-d or larger map of unknown layout, the dropout is called with
  different feature counts, or the layer is listed in ``single_rate=``:
  :class:`SingleRateDropout`, elementwise masks with one learned rate.

Left as they were, and listed in :attr:`ConversionReport.fixed` with the reason: dropout layers
of rate 0 (unless ``zero_p=`` gives a starting rate), layers whose rate the model's code reads
but which it never calls, and layers the example inputs never reach. Each
:class:`Replacement` states its ``granularity`` (per unit, per channel, per layer, per head, per
weight) and its number of ``rates``. A wrapped layer still reads as the layer
(``wrapper.weight``, ``wrapper.in_features``, ...: :class:`~bayesdrop.nn.DropoutModule` forwards
attribute reads it cannot answer to the layer it wraps).

``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` take a fused "fast path" in eval mode
that does not call their submodules; :func:`~bayesdrop.convert` switches it off on the converted
copies (``activation_relu_or_gelu = 0`` and ``use_nested_tensor = False``, the flags that torch's
own eligibility check reads) so that MC prediction samples the converted modules and sparse
families' pruned weights are used. ``nn.MultiheadAttention`` applies its attention-probability
dropout functionally (``F.dropout`` on the probabilities, ``dropout=`` in its constructor), which no
module replacement can reach: :func:`~bayesdrop.convert` turns each such layer of the copy into a
:class:`DropoutMultiheadAttention` (the same computation and parameters, with the dropout as a
module, ``attn_drop``), so that rate is learned too, with one rate per layer (``attention=False``
keeps it functional). Likewise the dropout between the layers of a stacked ``nn.LSTM/GRU/RNN`` (its
``dropout=`` argument): the RNN becomes a :class:`StackedRNN` of one-layer copies whose layers 1 to
L-1 take the family as input dropout (``rnn=False`` keeps it functional). Dropout that stays
functional is fixed, is not learned, and is *off* under :func:`bayesdrop.mc_predict` (the layer is
in eval mode there); the report lists each such layer in the ``fixed`` field of the
:class:`ConversionReport`.

A wrapped ``nn.LSTM/GRU/RNN`` draws one mask per sequence, shared over time steps (Gal &
Ghahramani 2016, "A Theoretically Grounded Application of Dropout in Recurrent Neural
Networks"), where ``nn.Dropout`` drew one per element and time step; the report notes it.

The dropout's ``p`` becomes the family's ``init_p`` (learned rates) or ``p`` (fixed rates) when the
family has one; channel dropout (``nn.Dropout1d/2d/3d``) sets ``channelwise=True`` for families
that have that option. ``AlphaDropout`` and ``FeatureAlphaDropout`` (noise tied to SELU) are
refused unless listed in ``exclude``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ._validation import check_probability
from .adapters.attention import AttentionRouting, route_attention_dropout
from .adapters.batches import call_model
from .adapters.drop_path import DropPathSite, find_drop_paths, replace_drop_paths
from .nn._base import DropoutModule
from .nn.drop_path import DropPath
from .nn.wrapped_layers import SUPPORTED_LAYERS

__all__ = [
    "convert",
    "ConversionReport",
    "Replacement",
    "FAMILIES",
    "resolve_family",
    "ChannelDropout",
    "SingleRateDropout",
    "ChannelRateDropout",
    "DropoutMultiheadAttention",
    "StackedRNN",
]

#: Short names of the families, resolved lazily as attributes of :mod:`bayesdrop.nn`.
FAMILIES: dict[str, str] = {
    "mc": "MCDropout",
    "lbd": "LearnableBernoulliDropout",
    "concrete": "ConcreteDropout",
    "gaussian": "GaussianDropout",
    "variational": "VariationalDropout",
    "sparse": "SparseVariationalDropout",
    "ard": "ARDDropout",
}

_BERNOULLI_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_ALPHA_DROPOUT = (nn.AlphaDropout, nn.FeatureAlphaDropout)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FORMS = ("wrap", "bare")
_SOFTMAX = {"softmax", "_softmax", "softmin", "sparse_softmax"}

#: What each family's prior loses when the weights its dropout feeds are unknown (bare forms).
_BARE_CONSEQUENCE = {
    "LearnableBernoulliDropout": (
        "without the weight term l²‖W‖²/(2(1-p)) the weights a bare layer feeds get no prior from "
        "it (keep weight decay on them), and its rates are set by the data fit and the entropy "
        "term -H(keep), which alone pulls p toward 0.5"
    ),
    "ConcreteDropout": (
        "without the term weight_regularizer·‖W‖²/(1-p) the weights a bare layer feeds get no "
        "prior from it (keep weight decay on them), and its rates are set by the data fit and the "
        "entropy term -dropout_regularizer·K·H(p), which alone pulls p toward 0.5"
    ),
}


@dataclass(frozen=True)
class Replacement:
    """One converted dropout layer.

    Attributes:
        name: dotted name of the ``nn.Dropout*`` layer in the original model.
        original: its ``repr``.
        p: its drop probability.
        module: dotted name of the new family module in the converted model.
        wrapped: dotted name of the layer it wraps (the original name), or ``None``.
        form: ``"wrapped"`` (the family wraps the layer the dropout feeds), ``"bare"`` (one rate
            per feature of the last dimension), ``"bare, channels"`` (one rate per channel, whole
            channels dropped) or ``"one rate"`` (elementwise masks, one shared rate).
        units: the number of rates' units: input features or channels, 1 for ``"one rate"``.
        prior: what the family's ``kl()`` covers for this layer.
        granularity: what one rate covers: ``"per unit"`` (an input feature),
            ``"per channel"``, ``"per layer"`` (one rate), ``"per head"`` or ``"per weight"``;
            ``", fixed"`` is appended for families whose rate is not learned.
        rates: the number of rates (``p.numel()`` of the new module).
    """

    name: str
    original: str
    p: float
    module: str
    wrapped: str | None
    form: str = "wrapped"
    units: int | None = None
    prior: str = ""
    granularity: str = ""
    rates: int | None = None


@dataclass
class ConversionReport:
    """What :func:`~bayesdrop.convert` did: the family, each replacement, and notes worth reading.

    ``fixed`` lists, by module name, every dropout that stays as it was, with the reason: dropout
    no module applies (``nn.MultiheadAttention``'s attention dropout, the dropout between stacked
    RNN layers, ``F.dropout`` and ``F.scaled_dot_product_attention(dropout_p=...)`` called in
    the model's code, drop path), dropout modules whose rate is read but which are never called,
    and layers of rate 0. Such dropout is not learned and is off under
    :func:`bayesdrop.mc_predict`.
    """

    family: str
    replacements: list[Replacement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Every dropout that stays as it was, by module name, with the reason (see above).
    fixed: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.replacements)

    def __str__(self) -> str:
        lines = [f"converted {len(self.replacements)} dropout layer(s) to {self.family}"]
        for r in self.replacements:
            how = f"wraps '{r.wrapped}'" if r.wrapped is not None else r.form
            if r.granularity:
                how += f"; {r.granularity}, {r.rates} rate{'s' if r.rates != 1 else ''}"
            elif r.units is not None:
                how += f", {r.units} unit(s)"
            lines.append(f"  {r.name}: {r.original} -> {r.module} ({how})")
            if r.prior:
                lines.append(f"      prior: {r.prior}")
        lines += [f"  stays fixed: {k}: {v}" for k, v in self.fixed.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def resolve_family(family: str | type) -> type:
    """The family class for ``family`` (a subclass of DropoutModule, a short name or a class name)."""
    if isinstance(family, type):
        if not issubclass(family, DropoutModule):
            raise TypeError(
                f"family must be a bayesdrop.nn dropout class (a DropoutModule), but got {family.__name__}"
            )
        return family
    if not isinstance(family, str):
        raise TypeError(f"family must be a class or a name, but got {type(family).__name__}")
    from . import nn as bnn

    attr = FAMILIES.get(family.lower(), family)
    cls = getattr(bnn, attr, None)
    if cls is None:
        if attr in FAMILIES.values():
            raise ValueError(
                f"family {family!r} (bayesdrop.nn.{attr}) is not available in this version"
            )
        raise ValueError(
            f"family must be one of {list(FAMILIES)} or a bayesdrop.nn class name, but got {family!r}"
        )
    return resolve_family(cls)


# --------------------------------------------------------------------------------- adapters
class _BareView(nn.Module):
    """A bare family module seen through a reshaping of its input; model code that reads a
    dropout's ``p`` reads the inner module's."""

    def __init__(self, dropout: DropoutModule) -> None:
        super().__init__()
        self.dropout = dropout

    @property
    def p(self) -> Tensor:
        """The inner module's drop probabilities."""
        return self.dropout.p


class ChannelDropout(_BareView):
    r"""Whole-channel dropout from a bare family module: ``x * noise[:, :, None, ...]``.

    The noise is the family's bare form applied to ones of shape ``(N, C)``, one value per example
    and channel (for every family the bare form multiplies its input by the noise, so this *is*
    the noise, inverted-dropout scaling included), broadcast over the spatial dimensions of
    ``x`` of shape ``(N, C, *)``. In eval mode the noise is 1 and this is the identity.

    Args:
        dropout: a bare bayesdrop dropout module over ``C`` features.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"channel dropout needs an (N, C, *) input, but got {tuple(x.shape)}")
        noise = self.dropout(x.new_ones(x.shape[:2]))
        return x * noise.reshape(tuple(x.shape[:2]) + (1,) * (x.dim() - 2))


class SingleRateDropout(_BareView):
    """Elementwise dropout with one rate from a bare family module over a single feature.

    ``x`` of any shape is seen as ``x[..., None]``, i.e. every element is one instance of the
    family's single unit (own mask value, shared rate), as ``nn.Dropout`` does.

    Args:
        dropout: a bare bayesdrop dropout module with ``num_features=1``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x.unsqueeze(-1)).squeeze(-1)


class ChannelRateDropout(_BareView):
    """Elementwise dropout on an ``(N, C, *)`` feature map with one rate per channel.

    ``x`` is seen with its channels last, ``x.movedim(1, -1)``, by a bare family module over
    ``C`` features: every element gets its own mask value (as ``nn.Dropout`` on a feature map
    does), and all the elements of channel ``c`` share the rate of feature ``c``.

    Args:
        dropout: a bare bayesdrop dropout module with ``num_features=C``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3:
            raise ValueError(f"channel rates need an (N, C, *) input, but got {tuple(x.shape)}")
        return self.dropout(x.movedim(1, -1)).movedim(-1, 1)


class DropoutMultiheadAttention(nn.MultiheadAttention):
    r"""``nn.MultiheadAttention`` whose attention-probability dropout is a module, ``attn_drop``.

    .. math::
        \mathrm{head}_h = \mathrm{drop}\bigl(\mathrm{softmax}(Q_h K_h^\top/\sqrt{d} + M)\bigr)\,V_h,

    with the same projections, masks (``attn_mask``, ``key_padding_mask``; boolean ``True`` = not
    attended, or float added to the scores), ``batch_first``, ``kdim``/``vdim`` and returned weights
    as ``nn.MultiheadAttention``'s reference path, but ``drop`` is the module ``attn_drop`` (for
    instance a :class:`SingleRateDropout` of a learned family) instead of the functional
    ``F.dropout(p=dropout)``, so it can learn its rate and samples under
    :func:`bayesdrop.mc_predict`. :func:`~bayesdrop.convert` turns every ``nn.MultiheadAttention``
    with ``dropout > 0`` into this class (same parameters and ``state_dict`` keys, plus those of
    ``attn_drop``); ``add_bias_kv`` and ``add_zero_attn`` are not supported. The fused fast path of
    ``nn.MultiheadAttention`` is not used.
    """

    attn_drop: nn.Module

    @classmethod
    def from_module(
        cls, mha: nn.MultiheadAttention, attn_drop: nn.Module
    ) -> DropoutMultiheadAttention:
        """Turn ``mha`` itself (not a copy) into this class, with ``attn_drop`` as its dropout."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv=True or add_zero_attn=True is not "
                "supported; its attention dropout stays functional (pass attention=False)"
            )
        mha.__class__ = cls
        mha.dropout = 0.0
        mha.attn_drop = attn_drop
        assert isinstance(mha, cls)
        return mha

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal=True needs attn_mask (as for nn.MultiheadAttention)")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt, n, e = query.shape
        src = key.shape[0]
        h = self.num_heads
        d = e // h
        b = self.in_proj_bias
        bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        q = F.linear(query, wq, bq).reshape(tgt, n, h, d).permute(1, 2, 0, 3)
        k = F.linear(key, wk, bk).reshape(src, n, h, d).permute(1, 2, 0, 3)
        v = F.linear(value, wv, bv).reshape(src, n, h, d).permute(1, 2, 0, 3)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (n, h, tgt, src)
        for mask, shape in (
            (
                attn_mask,
                (-1, h, tgt, src) if attn_mask is not None and attn_mask.dim() == 3 else (tgt, src),
            ),
            (key_padding_mask, (n, 1, 1, src)),
        ):
            if mask is None:
                continue
            mask = mask.reshape(shape)
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(mask, float("-inf"))
            else:
                scores = scores + mask.to(scores.dtype)
        probs = self.attn_drop(torch.softmax(scores, dim=-1))
        out = (probs @ v).permute(2, 0, 1, 3).reshape(tgt, n, e)
        out = self.out_proj(out)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
            probs = probs.squeeze(0)
        if not need_weights:
            return out, None
        return out, probs.mean(-3) if average_attn_weights else probs


class StackedRNN(nn.Module):
    """A multi-layer ``nn.LSTM/GRU/RNN`` as a stack of one-layer copies, with dropout modules between.

    ``rnns[i]`` is layer ``i`` (a one-layer RNN with the original's weights of that layer, or a
    wrapper family around it) and ``drops[i]`` the module applied to its input (``nn.Identity`` for
    the first layer and for wrapped layers, whose wrapper drops the input itself). It takes and
    returns what the original does: ``(x, h0)`` or ``(x, (h0, c0))`` with states stacked over layers
    and directions, tensors or :class:`~torch.nn.utils.rnn.PackedSequence`. With every dropout off
    it computes the original RNN's function. :func:`~bayesdrop.convert` builds it to turn the
    dropout *between* the layers (the RNN's ``dropout=`` argument, applied functionally) into a
    learned family.

    Args:
        rnn: the multi-layer RNN whose weights are copied.
    """

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        if not isinstance(rnn, nn.RNNBase):
            raise TypeError(f"rnn must be an nn.LSTM/GRU/RNN, but got {type(rnn).__name__}")
        self.mode = rnn.mode
        self.input_size, self.hidden_size = rnn.input_size, rnn.hidden_size
        self.num_layers, self.batch_first = rnn.num_layers, rnn.batch_first
        self.bidirectional, self.proj_size = rnn.bidirectional, rnn.proj_size
        self.dropout = rnn.dropout
        self.directions = 2 if rnn.bidirectional else 1
        out = (rnn.proj_size or rnn.hidden_size) * self.directions
        rnns: list[nn.Module] = []
        make: Any = type(rnn)  # nn.LSTM/GRU/RNN, same options
        for i in range(rnn.num_layers):
            kwargs: dict[str, Any] = {
                "bias": rnn.bias,
                "batch_first": rnn.batch_first,
                "bidirectional": rnn.bidirectional,
            }
            if isinstance(rnn, nn.LSTM):
                kwargs["proj_size"] = rnn.proj_size
            if isinstance(rnn, nn.RNN):
                kwargs["nonlinearity"] = rnn.nonlinearity
            ref = rnn.weight_ih_l0
            one = make(
                rnn.input_size if i == 0 else out,
                rnn.hidden_size,
                device=ref.device,
                dtype=ref.dtype,
                **kwargs,
            )
            with torch.no_grad():
                for name, param in one.named_parameters():
                    param.copy_(getattr(rnn, name.replace("_l0", f"_l{i}")))
            rnns.append(one)
        self.rnns = nn.ModuleList(rnns)
        self.drops = nn.ModuleList(nn.Identity() for _ in rnns)

    def forward(self, x: Any, hx: Any = None) -> tuple[Any, Any]:
        lstm = self.mode == "LSTM"
        d = self.directions
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        for i, (drop, rnn) in enumerate(zip(self.drops, self.rnns)):
            if not isinstance(drop, nn.Identity):
                if isinstance(x, nn.utils.rnn.PackedSequence):
                    x = nn.utils.rnn.PackedSequence(
                        drop(x.data), x.batch_sizes, x.sorted_indices, x.unsorted_indices
                    )
                else:
                    x = drop(x)
            if hx is None:
                x, h = rnn(x)
            elif lstm:
                x, h = rnn(x, (hx[0][i * d : (i + 1) * d], hx[1][i * d : (i + 1) * d]))
            else:
                x, h = rnn(x, hx[i * d : (i + 1) * d])
            if lstm:
                hs.append(h[0])
                cs.append(h[1])
            else:
                hs.append(h)
        if lstm:
            return x, (torch.cat(hs), torch.cat(cs))
        return x, torch.cat(hs)

    def extra_repr(self) -> str:
        return f"{self.mode}, num_layers={self.num_layers}, batch_first={self.batch_first}"


# --------------------------------------------------------------------------------- tracing
@dataclass
class _Site:
    """One dropout module object of the model (possibly reachable under several names)."""

    module: nn.Module
    names: list[str]
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    consumers: list[set[str]] = field(default_factory=list)
    layouts: list[str | None] = field(default_factory=list)
    softmax_input: bool = False
    reads: int = 0  # how often the model's code read the module's ``p``

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def channel(self) -> bool:
        return isinstance(self.module, _CHANNEL_DROPOUT)


_PROBE_CLASSES: dict[type, type] = {}


def _probe_class(cls: type) -> type:
    """A subclass of the dropout class ``cls`` whose instances report to a tracer.

    The probe *is* the dropout (same class, same attributes), so code that reads ``.p``,
    ``.inplace`` or anything else of the module, or checks its type, sees what it would see
    without the trace; ``forward`` records the input and marks the output, and every read of
    ``p`` is counted (attention code reads it to pass ``dropout_p=`` to a fused kernel).
    """
    if cls not in _PROBE_CLASSES:

        def forward(self: Any, x: Tensor) -> Tensor:
            return self._bayesdrop_tracer.probe(self._bayesdrop_index, x)

        def get_p(self: Any) -> Any:
            tracer = self.__dict__.get("_bayesdrop_tracer")
            if tracer is not None:
                tracer.sites[self._bayesdrop_index].reads += 1
            return self.__dict__["p"]

        def set_p(self: Any, value: Any) -> None:
            self.__dict__["p"] = value

        _PROBE_CLASSES[cls] = type(
            f"_Probe{cls.__name__}", (cls,), {"forward": forward, "p": property(get_p, set_p)}
        )
    return _PROBE_CLASSES[cls]


#: Layers whose output has its features last, and those whose output has its channels at dim 1.
_FEATURES_LAST = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.RNNBase)
_CHANNELS_FIRST = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def _layout(t: Any) -> str | None:
    return getattr(t, "_bayesdrop_layout", None) if isinstance(t, Tensor) else None


def _propagate_layout(args: Any, out: Any) -> None:
    """Carry a ``features``/``channels`` tag from an input to an output of the same layout."""
    if not isinstance(out, Tensor) or _layout(out) is not None:
        return
    for t in tree_leaves(args):
        tag = _layout(t)
        if tag is None:
            continue
        if out.dim() == t.dim() and (
            (tag == "channels" and out.shape[:2] == t.shape[:2])
            or (tag == "features" and out.shape[-1:] == t.shape[-1:])
        ):
            out._bayesdrop_layout = tag  # type: ignore[attr-defined]
        return


class _Tracer(TorchFunctionMode):
    """Watches every torch call of one forward pass for the outputs of the probes."""

    def __init__(self, sites: list[_Site]) -> None:
        super().__init__()
        self.sites = sites
        self.watched: dict[int, tuple[Tensor, int, int]] = {}  # id -> (tensor, site, call)
        self.frames: list[tuple[str, Any]] = []  # supported layers being called, innermost last
        self.layer_calls: dict[str, list[int | None]] = {}  # layer -> site of each call's input

    def probe(self, index: int, x: Tensor) -> Tensor:
        site = self.sites[index]
        site.shapes.append(tuple(x.shape))
        site.consumers.append(set())
        site.layouts.append(_layout(x))
        if getattr(x, "_bayesdrop_softmax", False):
            site.softmax_input = True
        with torch._C.DisableTorchFunction():
            out = x.view_as(x)  # a tensor object of its own, to be followed
        self.watched[id(out)] = (out, index, len(site.shapes) - 1)
        return out

    def watched_site(self, t: Any) -> int | None:
        w = self.watched.get(id(t)) if isinstance(t, Tensor) else None
        return w[1] if w is not None and w[0] is t else None

    def pre_hook(self, name: str, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        self.frames.append((name, first))
        self.layer_calls.setdefault(name, []).append(self.watched_site(first))

    def post_hook(self) -> None:
        self.frames.pop()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        writes = name == "__setitem__" or (name.endswith("_") and not name.startswith("_"))
        if self.watched and (writes or any(isinstance(o, Tensor) for o in tree_leaves(out))):
            for t in tree_leaves((args, kwargs)):
                if not isinstance(t, Tensor):
                    continue
                w = self.watched.get(id(t))
                if w is None or w[0] is not t:
                    continue
                frame = self.frames[-1] if self.frames else None
                who = f"layer:{frame[0]}" if frame is not None and frame[1] is t else f"op:{name}"
                self.sites[w[1]].consumers[w[2]].add(who)
        if name in _SOFTMAX and isinstance(out, Tensor):
            out._bayesdrop_softmax = True  # type: ignore[attr-defined]
        _propagate_layout((args, kwargs), out)
        return out


def _call(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple or list, else
    ``model(inputs)`` (:func:`bayesdrop.adapters.call_model`; other inputs, such as a
    ``PackedSequence``, are passed as they are)."""
    if isinstance(inputs, (Tensor, Mapping, tuple, list)):
        return call_model(model, inputs)
    return model(inputs)


def _module_in_traceback(err: BaseException, names: dict[int, tuple[nn.Module, str]]) -> str | None:
    """The name of the innermost module of ``names`` whose code raised ``err``, if any."""
    found = None
    tb = err.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        entry = names.get(id(obj))
        if entry is not None and entry[0] is obj:
            found = entry[1]
        tb = tb.tb_next
    return found


def _trace(
    model: nn.Module, example_inputs: Any, sites: list[_Site]
) -> dict[str, list[int | None]]:
    """Run a copy of ``model`` on ``example_inputs``, filling each site's shapes and consumers.

    Returns, for every supported layer (by name), which site's output each of its calls read.
    """
    twin = copy.deepcopy(model)
    tracer = _Tracer(sites)
    by_name = dict(twin.named_modules(remove_duplicate=False))
    probes: dict[int, tuple[nn.Module, str]] = {}
    for index, site in enumerate(sites):
        probe = by_name[site.name]
        probe.__class__ = _probe_class(type(probe))
        probe._bayesdrop_tracer = tracer
        probe._bayesdrop_index = index
        probes[id(probe)] = (probe, site.name)
    handles = []
    for name, m in twin.named_modules():
        if isinstance(m, SUPPORTED_LAYERS):
            handles.append(
                m.register_forward_pre_hook(
                    lambda mod, args, name=name: tracer.pre_hook(name, args)
                )
            )
            handles.append(m.register_forward_hook(lambda mod, args, out: tracer.post_hook()))
        tag = (
            "features"
            if isinstance(m, _FEATURES_LAST)
            else "channels"
            if isinstance(m, _CHANNELS_FIRST)
            else None
        )
        if tag is not None:
            handles.append(m.register_forward_hook(partial(_tag_output, tag)))
    twin.train()  # the transformer fast path (eval only) would skip the probes
    for m in twin.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # running statistics: no batch-size requirement
    try:
        with torch.no_grad(), tracer:
            _call(twin, example_inputs)
    except Exception as err:
        culprit = _module_in_traceback(err, probes)
        if culprit is not None:
            raise ValueError(
                f"'{culprit}': tracing this dropout layer on example_inputs failed: "
                f"{type(err).__name__}: {err}; pass exclude=['{culprit}'] to leave it as it is"
            ) from err
        raise ValueError(
            "example_inputs: the model failed on them (a Mapping is passed as "
            "model(**example_inputs), a tuple or list as model(*example_inputs), anything else "
            f"as model(example_inputs)): {type(err).__name__}: {err}"
        ) from err
    finally:
        for h in handles:
            h.remove()
    return tracer.layer_calls


def _tag_output(tag: str, module: nn.Module, args: Any, out: Any) -> None:
    first = out[0] if isinstance(out, tuple) and out else out
    if isinstance(first, Tensor) and first.dim() >= 2:
        first._bayesdrop_layout = tag  # type: ignore[attr-defined]


def _adjacent(model: nn.Module, sites: list[_Site]) -> tuple[dict[str, str], dict[str, int]]:
    """Without a trace: the layer each dropout feeds and its feature count, from nn.Sequential.

    Returns ``({dropout name: fed layer name}, {dropout name: units})``.
    """
    feeds: dict[str, str] = {}
    units: dict[str, int] = {}
    modules = dict(model.named_modules(remove_duplicate=False))
    counts: dict[int, int] = {}
    for m in modules.values():
        counts[id(m)] = counts.get(id(m), 0) + 1
    for site in sites:
        if len(site.names) != 1:
            continue
        parent_name, _, key = site.name.rpartition(".")
        parent = modules[parent_name]
        if not isinstance(parent, nn.Sequential):
            continue
        keys = list(parent._modules)
        i = keys.index(key)
        nxt = parent._modules[keys[i + 1]] if i + 1 < len(keys) else None
        prev = parent._modules[keys[i - 1]] if i > 0 else None
        full_next = f"{parent_name}.{keys[i + 1]}" if parent_name else (keys[i + 1] if nxt else "")
        if nxt is not None and isinstance(nxt, SUPPORTED_LAYERS) and counts[id(nxt)] == 1:
            feeds[site.name] = full_next
        if site.channel:
            if isinstance(nxt, _CONV):
                units[site.name] = int(nxt.in_channels)
            elif isinstance(prev, _CONV):
                units[site.name] = int(prev.out_channels)
            elif isinstance(prev, nn.modules.batchnorm._BatchNorm):
                units[site.name] = int(prev.num_features)
        elif isinstance(nxt, nn.Linear):
            units[site.name] = int(nxt.in_features)
        elif isinstance(prev, nn.Linear):
            units[site.name] = int(prev.out_features)
    return feeds, units


# --------------------------------------------------------------------------------- what still fires
#: Functional dropout, with whether it drops by default (``training=`` not given).
_FUNCTIONAL_DROPOUT = {
    "dropout": True,
    "dropout1d": True,
    "dropout2d": True,
    "dropout3d": True,
    "feature_dropout": True,
    "alpha_dropout": False,
    "feature_alpha_dropout": False,
}
_BERNOULLI = {"bernoulli", "bernoulli_"}


def _drop_path_rate(m: nn.Module) -> float | None:
    """The fixed rate of a drop-path (stochastic depth) module, recognised by its attributes.

    timm's ``DropPath`` and the Hugging Face ``*DropPath`` modules hold ``drop_prob``;
    torchvision's ``StochasticDepth`` holds ``p`` and ``mode`` (``"row"``/``"batch"``).
    """
    if isinstance(m, (DropoutModule, *_BERNOULLI_DROPOUT, *_ALPHA_DROPOUT)):
        return None
    rate = getattr(m, "drop_prob", None)
    if rate is None and getattr(m, "mode", None) in ("row", "batch"):
        rate = getattr(m, "p", None)
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
        return float(rate)
    return None


def _functional_rate(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    """The rate of a functional dropout call that drops, else ``None``."""
    if name in _FUNCTIONAL_DROPOUT:
        p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
        default = _FUNCTIONAL_DROPOUT[name]
        train = kwargs.get("training", kwargs.get("train", args[2] if len(args) > 2 else default))
    elif name == "scaled_dot_product_attention":
        p, train = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0), True
    elif name == "multi_head_attention_forward":
        p = kwargs.get("dropout_p", args[10] if len(args) > 10 else 0.0)
        train = kwargs.get("training", args[13] if len(args) > 13 else True)
    else:
        return None
    try:
        rate = float(p)
    except (TypeError, ValueError):
        return None
    return rate if bool(train) and rate > 0 else None


class _Detector(TorchFunctionMode):
    """Records, per module, the dropout that fires outside bayesdrop modules in one forward pass.

    Functional dropout (``F.dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``, ...) with a
    positive rate in training, ``F.scaled_dot_product_attention(dropout_p > 0)``, drop-path
    modules (:func:`_drop_path_rate`) that are called, and Bernoulli draws
    (``x.bernoulli_(keep)``, as drop-path code makes its masks) anywhere else.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stack: list[tuple[str, nn.Module]] = []
        self.inside = 0  # bayesdrop modules being called
        self.found: dict[str, dict[str, str]] = {}  # module -> {kind: what}
        self.counts: dict[tuple[str, str], int] = {}
        self.handles: list[Any] = []
        for name, m in model.named_modules():
            ours = isinstance(m, DropoutModule)
            self.handles.append(m.register_forward_pre_hook(partial(self._enter, name, ours)))
            self.handles.append(
                m.register_forward_hook(partial(self._leave, ours), always_call=True)
            )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _enter(self, name: str, ours: bool, module: nn.Module, args: Any) -> None:
        self.stack.append((name, module))
        self.inside += ours
        rate = _drop_path_rate(module) if module.training and not self.inside else None
        if rate is not None:
            self._add(name, "drop path", f"{type(module).__name__} (drop path, p={rate:g})")

    def _leave(self, ours: bool, module: nn.Module, args: Any, out: Any) -> None:
        self.stack.pop()
        self.inside -= ours

    def _add(self, where: str, kind: str, what: str) -> None:
        self.counts[(where, kind)] = self.counts.get((where, kind), 0) + 1
        self.found.setdefault(where, {})[kind] = what

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not self.inside:
            name = getattr(func, "__name__", "")
            where = self.stack[-1][0] if self.stack else ""
            rate = _functional_rate(name, args, kwargs)
            if rate is not None:
                what = (
                    f"F.scaled_dot_product_attention(dropout_p={rate:g})"
                    if name == "scaled_dot_product_attention"
                    else f"{name}(p={rate:g})"
                )
                self._add(where, f"{name}:{rate:g}", what)
            elif name in _BERNOULLI:
                self._add(where, "bernoulli", f"a Bernoulli draw ({name})")
        return func(*args, **kwargs)

    def report(self, modules: dict[str, nn.Module]) -> dict[str, str]:
        """``{module name: what fires there, and why it stays fixed}``."""
        out: dict[str, str] = {}
        for where, kinds in self.found.items():
            if "drop path" in kinds:
                kinds.pop("bernoulli", None)
            parts = []
            for kind, what in kinds.items():
                n = self.counts[(where, kind)]
                parts.append(what + (f" x{n}" if n > 1 else ""))
            m = modules.get(where)
            if isinstance(m, (*_BERNOULLI_DROPOUT, *_ALPHA_DROPOUT)):
                why = f"this {type(m).__name__} module was not converted"
            elif "drop path" in kinds:
                why = "drop path (stochastic depth) is not a dropout module; its rate is fixed"
            else:
                why = "applied in the model's own code, not by a dropout module"
            out[where or "<model>"] = (
                f"{', '.join(parts)} fires in training: {why}; the rate stays fixed, is not "
                "learned, and is off under mc_predict"
            )
        return out


def _check_run(
    new: nn.Module, example_inputs: Any, converted: list[str], report: ConversionReport
) -> None:
    """Run the converted copy on ``example_inputs`` in training and eval mode; report what fires.

    Nothing the user sees changes: the global random state (CPU and every device the model is
    on), the generators held by modules, every buffer (BatchNorm running statistics) and each
    module's training flag are restored afterwards.
    """
    names = {id(m): (m, n) for n, m in new.named_modules()}
    modes = [(m, m.training) for m in new.modules()]
    buffers = [(b, b.detach().clone()) for b in new.buffers()]
    generators = [
        (g, g.get_state())
        for m in new.modules()
        for g in vars(m).values()
        if isinstance(g, torch.Generator)
    ]
    devices = sorted({t.device.index or 0 for t in new.parameters() if t.device.type == "cuda"})
    detector = _Detector(new)
    stage = "training"
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            new.train()
            for m in new.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()  # running statistics: no batch-size requirement
            with detector:
                _call(new, example_inputs)
            stage = "eval"
            new.eval()
            _call(new, example_inputs)
    except Exception as err:
        culprit = _module_in_traceback(err, names)
        where = hint = ""
        if culprit:
            where = f" in '{culprit}' ({type(new.get_submodule(culprit)).__name__})"
            touched = [
                c
                for c in converted
                if c == culprit or c.startswith(culprit + ".") or culprit.startswith(c + ".")
            ]
            if touched:
                hint = f", which is or holds the converted module(s) {touched}"
        raise ValueError(
            f"the converted model failed on example_inputs in {stage} mode{where}{hint}: "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        detector.remove()
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for g, state in generators:
            g.set_state(state)
    for where, why in detector.report(dict(new.named_modules())).items():
        report.fixed.setdefault(where, why)


# --------------------------------------------------------------------------------- convert
def _params(cls: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls).parameters)


def _ref_tensor(*modules: nn.Module) -> Tensor | None:
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                return t
    return None


def _check_names(arg: str, names: Iterable[str], known: set[str]) -> set[str]:
    if isinstance(names, str):
        names = (names,)
    try:
        out = set(names)
    except TypeError:
        raise TypeError(f"{arg} must be an iterable of module names, but got {names!r}") from None
    unknown = sorted(n for n in out if n not in known)
    if unknown:
        raise ValueError(
            f"{arg} names {unknown}, which are not dropout layers of the model; its dropout "
            f"layers are {sorted(known)}"
        )
    return out


def convert(
    model: nn.Module,
    family: str | type,
    *,
    form: Literal["wrap", "bare"] = "wrap",
    example_inputs: Any = None,
    exclude: Iterable[str] = (),
    single_rate: Iterable[str] = (),
    attention: Literal["learned", "fixed"] | bool = "learned",
    rnn: bool = True,
    zero_p: Literal["keep"] | float = "keep",
    drop_path: Literal["learned", "fixed"] = "learned",
    **options: Any,
) -> tuple[nn.Module, ConversionReport]:
    """Return a copy of ``model`` whose ``nn.Dropout*`` layers are replaced by ``family``.

    Args:
        model: any module; it is deep-copied, never modified.
        family: a :class:`~bayesdrop.nn.DropoutModule` subclass, or one of ``"mc"``, ``"lbd"``,
            ``"concrete"``, ``"gaussian"``, ``"variational"``, ``"sparse"``, ``"ard"`` (or the
            class name), resolved in :mod:`bayesdrop.nn`.
        form: ``"wrap"`` (wrap the layer a dropout feeds where it is known, the bare form
            elsewhere) or ``"bare"`` (never wrap). Families without ``layer`` are always bare;
            families without a bare form (sparse, ARD) refuse dropouts that feed no wrappable layer.
        example_inputs: a batch the model can be called on: a tensor (``model(x)``), a mapping
            (``model(**batch)``, as Hugging Face models take their batches) or a tuple or list
            (``model(*inputs)``). A copy of the model is traced on it to find what each dropout
            feeds and how many features it sees, and the converted copy is run on it, in
            training and in eval mode, before :func:`convert` returns (the random state, the
            buffers and the modes the user sees are restored); a layer that fails there is
            named in the error. The training-mode run lists in the report's ``fixed``
            every dropout that still fires and is not a bayesdrop module. Without it only
            ``nn.Sequential`` neighbours are known.
        exclude: dotted names of dropout layers to leave as they are (they are not traced).
        single_rate: dotted names of ``nn.Dropout`` layers that get one rate shared by every
            element (for inputs whose last dimension is not a feature, e.g. a sequence position).
        attention: ``"learned"`` (default; ``True`` is the same) also converts the
            attention-probability dropout that no module applies: every
            ``nn.MultiheadAttention`` with ``dropout > 0`` becomes a
            :class:`~bayesdrop.conversion.DropoutMultiheadAttention` whose ``attn_drop`` is the
            family; Hugging Face transformers models (found by duck typing; they need
            ``example_inputs``) and timm-style attention with ``fused_attn`` are switched, on the
            copy, to an attention path that calls a dropout module on the attention probabilities
            (:func:`bayesdrop.adapters.attention.route_attention_dropout`: the model's own
            dropout module, or a new ``nn.Dropout`` named ``attn_drop`` where the model passes a
            float rate; eval outputs of transformers models stay bit for bit the same), which is
            then converted like any dropout, one rate per layer. ``"fixed"`` (or ``False``) keeps
            all of it functional, fixed and listed in the report's ``fixed``. ``exclude`` may name
            such a layer or its dropout module.
        rnn: also convert the dropout between the layers of every stacked ``nn.LSTM/GRU/RNN``
            with ``dropout > 0``: it becomes a :class:`~bayesdrop.conversion.StackedRNN`
            (one-layer copies with the same weights; ``state_dict`` keys ``rnns.<i>...``) whose
            layers ``1..L-1`` take the family as input dropout (wrapped: one mask per sequence,
            shared over time). ``False`` keeps it functional and fixed. ``exclude`` may name
            such an RNN.
        zero_p: what to do with dropout layers of rate 0 (``nn.Dropout(0.0)``, common in model
            libraries as a placeholder): ``"keep"`` (default) leaves them as they are and lists
            them in the report's ``fixed``; a float in (0, 1) converts them with that
            starting rate (eval outputs are unchanged; training then learns the rate).
        drop_path: ``"learned"`` (default) replaces every drop-path (stochastic depth) module,
            found by duck typing (timm's ``DropPath``: ``drop_prob`` and ``scale_by_keep``;
            torchvision's ``StochasticDepth``: ``p`` and ``mode``), by a
            :class:`~bayesdrop.nn.DropPath` of the family (bare form, one unit: one learned rate
            per residual block, one mask per example), starting at its rate; modules with
            rate 0, ``mode="batch"`` or ``scale_by_keep=False`` stay and are listed in
            :attr:`.ConversionReport.fixed`, as are all of them with ``"fixed"`` or a family
            without a bare form. ``exclude`` may name such a module.
        **options: passed to every family constructor (they override the carried-over ``p``).

    Returns:
        ``(converted_model, report)``.

    Raises:
        ValueError: a dropout layer that cannot be converted, naming it and what to do instead;
            names in ``exclude``/``single_rate`` that are not dropout layers of the model.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
        >>> new, report = convert(model, "lbd")
        >>> type(new[3]).__name__, type(new[2]).__name__, len(report)
        ('LearnableBernoulliDropout', 'Identity', 1)
        >>> round(float(new[3].p[0]), 6)
        0.2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
    cls = resolve_family(family)
    if form not in _FORMS:
        raise ValueError(f"form must be one of {list(_FORMS)}, but got {form!r}")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():  # type: ignore[misc]
            raise ValueError(
                f"'{name}' is a lazy module ({type(m).__name__}) whose sizes are not known yet; "
                "run one forward pass on the model before converting it"
            )
    params = _params(cls)
    can_wrap = "layer" in params
    has_bare = not can_wrap or params["layer"].default is not inspect.Parameter.empty
    if form == "bare" and not has_bare:
        raise ValueError(f"{cls.__name__} has no bare form (it needs a layer); use form='wrap'")
    wraps = can_wrap and form == "wrap"
    attention_mode = _choice("attention", attention, bools=True)
    drop_path_mode = _choice("drop_path", drop_path, bools=False)

    new = copy.deepcopy(model)
    # attention dropout that is read, not called, becomes a called module before the trace
    routing = (
        route_attention_dropout(new, example_inputs)
        if attention_mode == "learned"
        else AttentionRouting()
    )
    # every dropout module object, with all the names it is reachable under
    sites: list[_Site] = []
    index: dict[int, _Site] = {}
    alpha: list[str] = []
    for full, child in new.named_modules(remove_duplicate=False):
        if isinstance(child, _ALPHA_DROPOUT):
            alpha.append(full)
        elif isinstance(child, _BERNOULLI_DROPOUT):
            if id(child) in index:
                index[id(child)].names.append(full)
            else:
                index[id(child)] = _Site(child, [full])
                sites.append(index[id(child)])
    attentions = [
        (name, m)
        for name, m in new.named_modules()
        if isinstance(m, nn.MultiheadAttention) and m.dropout > 0
    ]
    stacked = [
        (name, m)
        for name, m in new.named_modules()
        if isinstance(m, nn.RNNBase) and m.num_layers > 1 and m.dropout > 0
    ]
    drop_paths = find_drop_paths(new)
    known = {n for s in sites for n in s.names} | set(alpha)
    known |= {n for n, _ in attentions} | {n for n, _ in stacked}
    known |= {n for s in drop_paths for n in s.names}
    excluded = _check_names("exclude", exclude, known)
    single = _check_names("single_rate", single_rate, known)
    for full in alpha:
        if full not in excluded:
            raise ValueError(
                f"'{full}' is an alpha dropout, whose noise is tied to SELU networks; it "
                "cannot become a Bernoulli/Gaussian dropout family (pass exclude=[...] to keep it)"
            )
    for site in sites:
        if any(n in excluded for n in site.names) and not all(n in excluded for n in site.names):
            raise ValueError(
                f"exclude names some but not all of {site.names}, which are one module"
            )
    start_zero: float | None = None
    if not (isinstance(zero_p, str) and zero_p == "keep"):
        if isinstance(zero_p, str) or isinstance(zero_p, bool):
            raise TypeError(f"zero_p must be 'keep' or a float in (0, 1), but got {zero_p!r}")
        start_zero = check_probability("zero_p", zero_p)
    active = [s for s in sites if s.name not in excluded]  # excluded layers are not even probed
    traced = example_inputs is not None
    layer_calls: dict[str, list[int | None]] = {}
    feeds: dict[str, str] = {}
    units: dict[str, int] = {}
    if traced:
        layer_calls = _trace(new, example_inputs, active)
    else:
        feeds, units = _adjacent(new, active)

    if not isinstance(rnn, bool):
        raise TypeError(f"rnn must be a bool, but got {rnn!r}")
    report = ConversionReport(cls.__name__)
    split = [(n, m) for n, m in stacked if rnn and n not in excluded]
    for name, m in split:
        parent, _, key = name.rpartition(".")
        new.get_submodule(parent)._modules[key] = StackedRNN(m)  # type: ignore[arg-type]
    modules = dict(new.named_modules(remove_duplicate=False))
    converted: list[str] = []
    for i, site in enumerate(active):
        p = float(site.module.p)  # type: ignore[arg-type]
        if p == 0.0 and start_zero is None:
            report.fixed[site.name] = (
                f"{type(site.module).__name__}(p=0.0): p = 0, no dropout to learn; left as it "
                "was (zero_p=<rate> would start a learned rate here)"
            )
            continue
        if traced and not site.shapes:
            report.fixed[site.name] = _not_called(site, p)
            continue
        original_p, p = p, (start_zero if p == 0.0 and start_zero is not None else p)
        kwargs = _rate_kwargs(params, p, options)
        if "init_p" not in params and "p" not in params:
            report.notes.append(
                f"'{site.name}': {cls.__name__} has no initial rate; p={p} not carried over"
            )
        if original_p != p:
            report.notes.append(f"'{site.name}' had p = 0; its learned rate starts at zero_p={p}")
        per_channel = False
        try:
            if traced:
                target, n, why, per_channel = _decide_traced(site, i, layer_calls, single)
            else:
                target, n, why = feeds.get(site.name), units.get(site.name), ""
                if site.name in single:
                    target, n = None, 1
            if target is not None and isinstance(modules[target], StackedRNN):
                target = f"{target}.rnns.0"  # the input dropout of its first layer
            if target is not None and not _wrappable(site, modules[target]):
                target, why = None, f"it feeds {type(modules[target]).__name__}"
            if wraps and target is not None:
                rep = _wrap(cls, modules, site, target, kwargs, p)
                fed = modules[target]  # the layer now wrapped
                if isinstance(fed, _CONV) and not site.channel:
                    report.notes.append(
                        f"'{site.name}' dropped single elements; wrapping the convolution "
                        f"'{target}' drops whole input channels"
                    )
                if isinstance(fed, nn.RNNBase):
                    report.notes.append(
                        f"'{site.name}' dropped every element and time step on its own; wrapping "
                        f"'{target}' draws one mask per sequence, shared over time (variational "
                        "RNN dropout, Gal & Ghahramani 2016)"
                    )
            else:
                if not has_bare:
                    raise ValueError(
                        f"{cls.__name__} has no bare form and the dropout feeds no layer it can "
                        f"wrap ({why or 'the layer it feeds is unknown without a trace'}); "
                        "pass example_inputs=... so that convert can trace it, use another family, "
                        f"or exclude=['{site.name}']"
                    )
                if n is None and isinstance(options.get("num_features"), int):
                    n = options["num_features"]
                if not traced and n is None and _needs_units(cls, params, site):
                    raise ValueError(
                        "its number of features is not known (it is not next to an nn.Linear or "
                        "a convolution in an nn.Sequential); pass example_inputs=(a batch,) so "
                        "that convert can trace the model, or num_features=..."
                    )
                rep = _bare(
                    cls, params, new, modules, site, kwargs, p, n, site.name in single, per_channel
                )
        except (TypeError, ValueError) as err:
            raise type(err)(f"converting '{site.name}' to {cls.__name__}: {err}") from err
        report.replacements.append(rep)
        converted.append(rep.module)
    for name, _ in split:
        try:
            report.replacements += _between_layers(cls, params, wraps, has_bare, new, name, options)
            report.notes.append(
                f"'{name}' is now a StackedRNN of one-layer copies (state_dict keys "
                f"'{name}.rnns.<i>...'); the dropout between its layers drew a mask per element "
                "and time step"
                + (
                    "; the wrapped layers draw one per sequence, shared over time (variational "
                    "RNN dropout, Gal & Ghahramani 2016)"
                    if wraps
                    else ", as the bare modules do"
                )
            )
        except (TypeError, ValueError) as err:
            raise type(err)(f"converting '{name}' to {cls.__name__}: {err}") from err
        converted.append(name)
    for name, mha in attentions:
        if attention_mode == "fixed" or name in excluded:
            continue
        if not has_bare:
            report.notes.append(
                f"'{name}': {cls.__name__} has no bare form, so the attention dropout of this "
                "nn.MultiheadAttention stays functional and fixed"
            )
            continue
        try:
            report.replacements.append(_attention(cls, params, new, name, mha, options))
        except (TypeError, ValueError) as err:
            raise type(err)(f"converting '{name}' to {cls.__name__}: {err}") from err
        converted.append(f"{name}.attn_drop")
    _report_routing(routing, report)
    if drop_path_mode == "learned" and has_bare:
        try:
            replaced, still = replace_drop_paths(
                new, partial(_learned_drop_path, cls, params, options), excluded
            )
        except (TypeError, ValueError) as err:
            raise type(err)(f"converting a drop-path module to {cls.__name__}: {err}") from err
        for dp in replaced:
            report.replacements.append(
                Replacement(
                    dp.name, dp.original, dp.p, dp.name, None, "drop path", 1, _prior(cls, None)
                )
            )
            converted.append(dp.name)
    else:
        why = (
            "drop_path='fixed'" if drop_path_mode == "fixed" else f"{cls.__name__} has no bare form"
        )
        still = {dp.name: why for dp in drop_paths if not excluded & set(dp.names)}
    by_name = {dp.name: dp for dp in drop_paths}
    for name, why in still.items():
        report.fixed[name] = (
            f"{type(new.get_submodule(name)).__name__} (drop path, p={by_name[name].p:g}) left "
            f"as it was: {why}; its rate stays fixed, is not learned, and is off under mc_predict"
        )
    _fixed_and_fast_paths(model, new, converted, {n for n, _ in split}, report)
    report.replacements = [_with_granularity(r, new) for r in report.replacements]
    if traced:
        _check_run(new, example_inputs, converted, report)
    else:
        for name, m in new.named_modules():
            rate = _drop_path_rate(m)
            if rate is not None:
                report.fixed.setdefault(
                    name,
                    f"{type(m).__name__} (drop path, p={rate:g}): drop path (stochastic depth) is "
                    "not a dropout module; its rate stays fixed, is not learned, and is off under "
                    "mc_predict",
                )
        own_code = [
            m
            for m in new.modules()
            if not isinstance(m, DropoutModule) and not type(m).__module__.startswith("torch.")
        ]
        if own_code:
            report.notes.append(
                "without example_inputs, dropout applied in the model's own code (F.dropout, "
                "dropout_p= of an attention kernel) cannot be seen; pass example_inputs to have it "
                "listed under fixed"
            )
    if any(r.wrapped is None for r in report.replacements) and cls.__name__ in _BARE_CONSEQUENCE:
        report.notes.append(_BARE_CONSEQUENCE[cls.__name__])
    if not sites:
        report.notes.append("no nn.Dropout layer found; the copy is unchanged")
    return new, report


def _not_called(site: _Site, p: float) -> str:
    """Why a dropout module that the traced forward never called stays as it was."""
    what = f"{type(site.module).__name__}(p={p:g})"
    if site.reads:
        return (
            f"{what} read, not called: the model's code reads its p (for instance to pass "
            "dropout_p= to a fused attention kernel) and applies the dropout itself, so no "
            "module can replace it; it stays as it was, with its rate fixed, not learned, and "
            "off under mc_predict"
        )
    return (
        f"{what} not called when the model ran on example_inputs: left as it was (if other "
        "inputs reach it, it drops with its fixed rate; give example inputs that reach it to "
        "convert it)"
    )


def _decide_traced(
    site: _Site, i: int, layer_calls: dict[str, list[int | None]], single: set[str]
) -> tuple[str | None, int | None, str, bool]:
    """From the trace: ``(the layer the dropout alone feeds or None, units or None, why not,
    whether the units are the channels of dimension 1)``.

    Elementwise dropout on a ``(N, C, *)`` map whose layout the trace saw come from a
    convolution or a channel normalisation gets one rate per channel; on a 4-d or larger input
    of unknown layout, one rate for the layer. Never one per position of the last dimension of
    a feature map.
    """
    per_channel = False
    if site.channel:
        chans = {s[1] for s in site.shapes if len(s) >= 3}
        if len(chans) != 1 or any(len(s) < 3 for s in site.shapes):
            raise ValueError(
                f"channel dropout needs batched (N, C, *) inputs with one C, but it saw shapes "
                f"{sorted(set(site.shapes))}; exclude it or replace it with nn.Dropout"
            )
        n: int | None = chans.pop()
    else:
        dims = {len(s) for s in site.shapes}
        layouts = set(site.layouts)
        if site.softmax_input or site.name in single:
            n = None
        elif layouts == {"channels"} and min(dims) >= 3:
            chans = {s[1] for s in site.shapes}
            n = chans.pop() if len(chans) == 1 else None
            per_channel = n is not None
        elif min(dims) >= 4 and layouts != {"features"}:
            n = None
        else:
            lasts = {s[-1] if s else 0 for s in site.shapes}
            n = lasts.pop() if len(lasts) == 1 else None
        if n == 0:
            n = None
    target: str | None = None
    why = ""
    layers = [c for call in site.consumers for c in call]
    if len(site.names) > 1:
        why = f"it is one module under the names {site.names}"
    elif any(len(call) != 1 for call in site.consumers):
        used = sorted({c.split(":", 1)[1] for c in layers})
        why = f"its output goes to {used or 'nothing'}"
    elif len(set(layers)) != 1 or not layers[0].startswith("layer:"):
        why = f"its output goes to {sorted({c.split(':', 1)[1] for c in layers})}"
    else:
        name = layers[0].split(":", 1)[1]
        if all(s == i for s in layer_calls.get(name, [])):
            target = name
        else:
            why = f"'{name}' also reads other inputs"
    return target, n, why, per_channel


def _family_module(m: nn.Module) -> DropoutModule | None:
    """The bayesdrop module at ``m``: ``m`` itself or the one an adapter holds."""
    if isinstance(m, DropoutModule):
        return m
    for child in m.children():
        if isinstance(child, DropoutModule):
            return child
    return None


def _with_granularity(r: Replacement, root: nn.Module) -> Replacement:
    """``r`` with what one rate covers and how many rates there are, read from the new module."""
    try:
        module = _family_module(root.get_submodule(r.module))
    except AttributeError:
        module = None
    if module is None:
        return r
    rates = int(module.p.numel())
    weight = getattr(module, "log_sigma2", None)
    if rates == 1:
        what = "per layer"
    elif isinstance(weight, Tensor) and rates == weight.numel() and r.wrapped is not None:
        what = "per weight"
    elif "channel" in r.form or isinstance(getattr(module, "layer", None), _CONV):
        what = "per channel"
    else:
        what = "per unit"
    if not module.rate_parameters():
        what += ", fixed"
    return dataclasses.replace(r, granularity=what, rates=rates)


def _wrappable(site: _Site, layer: nn.Module) -> bool:
    if site.channel:
        return isinstance(layer, _CONV)
    return isinstance(layer, SUPPORTED_LAYERS)


def _needs_units(cls: type, params: dict[str, inspect.Parameter], site: _Site) -> bool:
    """Whether the bare form of ``cls`` needs ``num_features`` (Gaussian and MC dropout do not)."""
    if "num_features" not in params or cls.__name__ == "GaussianDropout":
        return False
    return not (site.channel and "channelwise" in params)


def _prior(cls: type, wrapped: str | None) -> str:
    if getattr(cls, "kl", None) is DropoutModule.kl:
        return "none (fixed rate, no prior term)"
    if cls.__name__ == "VariationalDropout" and wrapped is None:
        return (
            "full: the log-uniform KL, one term per unit as in the wrapped form (the default "
            "kl_terms='noise'; kl_terms='weight' needs the wrapped form)"
        )
    if wrapped is not None:
        return f"full: rate term and weight term over the input weights of '{wrapped}'"
    return "rate term only: the weights it feeds are unknown, so no weight term"


def _wrap(
    cls: type,
    modules: dict[str, nn.Module],
    site: _Site,
    target: str,
    kwargs: dict[str, Any],
    p: float,
) -> Replacement:
    layer = modules[target]
    if "init_max_log_alpha" in _params(cls):
        # a trained layer: no weight starts as noise only because it is small (alpha <= 1, and
        # log alpha at least 1 below the pruning threshold), and eval keeps every weight until
        # the module is trained
        threshold = float(kwargs.get("threshold", _params(cls)["threshold"].default))
        kwargs = {"init_max_log_alpha": min(0.0, threshold - 1.0), **kwargs}
    module = cls(layer, **kwargs)
    if hasattr(module, "keep_dense_until_trained"):
        module.keep_dense_until_trained()
    ref = _ref_tensor(layer)
    if ref is not None:
        module.to(device=ref.device, dtype=ref.dtype)
    parent, _, key = target.rpartition(".")
    modules[parent]._modules[key] = module
    dparent, _, dkey = site.name.rpartition(".")
    modules[dparent]._modules[dkey] = nn.Identity()
    units = int(module.units) if isinstance(getattr(module, "units", None), int) else None
    return Replacement(
        site.name,
        repr(site.module),
        p,
        target,
        target,
        "wrapped",
        units,
        _prior(cls, target),
    )


def _bare(
    cls: type,
    params: dict[str, inspect.Parameter],
    root: nn.Module,
    modules: dict[str, nn.Module],
    site: _Site,
    kwargs: dict[str, Any],
    p: float,
    n: int | None,
    single: bool,
    per_channel: bool = False,
) -> Replacement:
    module: nn.Module
    units: int | None
    if per_channel and n is not None and "num_features" in params:
        kwargs.setdefault("num_features", n)
        module, form, units = ChannelRateDropout(cls(**kwargs)), "bare, channel rates", n
    elif per_channel:
        form, units = "one rate", 1
        if "num_features" in params:
            kwargs.setdefault("num_features", 1)
            module = SingleRateDropout(cls(**kwargs))
        else:
            module = cls(**kwargs)
    elif site.channel and "channelwise" in params:
        kwargs["channelwise"] = True
        module, form, units = cls(**kwargs), "bare, channels", n
    elif site.channel:
        if n is not None and "num_features" in params:
            kwargs.setdefault("num_features", n)
        module, form, units = ChannelDropout(cls(**kwargs)), "bare, channels", n
    elif n is None or single:
        form, units = "one rate", 1
        if "num_features" in params:
            kwargs.setdefault("num_features", 1)
            module = SingleRateDropout(cls(**kwargs))
        else:
            module = cls(**kwargs)
    else:
        if "num_features" in params:
            kwargs.setdefault("num_features", n)
        module, form, units = cls(**kwargs), "bare", n
    ref = _ref_tensor(root)
    if ref is not None:
        module.to(device=ref.device, dtype=ref.dtype)
    for full in site.names:
        parent, _, key = full.rpartition(".")
        modules[parent]._modules[key] = module
    return Replacement(
        site.name, repr(site.module), p, site.name, None, form, units, _prior(cls, None)
    )


def _between_layers(
    cls: type,
    params: dict[str, inspect.Parameter],
    wraps: bool,
    has_bare: bool,
    root: nn.Module,
    name: str,
    options: dict[str, Any],
) -> list[Replacement]:
    """The family as input dropout of layers 1..L-1 of the StackedRNN at ``name``."""
    stack = root.get_submodule(name)
    assert isinstance(stack, StackedRNN)
    p = float(stack.dropout)
    out: list[Replacement] = []
    for i in range(1, stack.num_layers):
        kwargs = _rate_kwargs(params, p, options)
        layer = stack.rnns[i]
        original = f"{stack.mode}(dropout={p}) between layers {i - 1} and {i}"
        sub = f"{name}.rnns.{i}"
        module: nn.Module
        if wraps:
            module = cls(layer, **kwargs)
            stack.rnns[i] = module
            rep = Replacement(name, original, p, sub, sub, "wrapped", None, _prior(cls, sub))
        elif has_bare:
            features = int(layer.input_size)  # type: ignore[arg-type]
            if "num_features" in params:
                kwargs["num_features"] = features
            module = cls(**kwargs)
            stack.drops[i] = module
            sub = f"{name}.drops.{i}"
            rep = Replacement(name, original, p, sub, None, "bare", features, _prior(cls, None))
        else:
            raise ValueError(f"{cls.__name__} has no bare form; exclude=['{name}'] keeps it")
        ref = _ref_tensor(layer)
        if ref is not None:
            module.to(device=ref.device, dtype=ref.dtype)
        units = getattr(module, "units", None)
        if isinstance(units, int):
            rep = dataclasses.replace(rep, units=units)
        out.append(rep)
    return out


def _rate_kwargs(
    params: dict[str, inspect.Parameter], p: float, options: dict[str, Any]
) -> dict[str, Any]:
    """Constructor keywords carrying the dropout's rate ``p`` (``init_p`` or ``p``) and ``options``."""
    kwargs: dict[str, Any] = {}
    if "init_p" in params:
        kwargs["init_p"] = p
    elif "p" in params:
        kwargs["p"] = p
    kwargs.update(options)
    return kwargs


def _choice(arg: str, value: Any, bools: bool) -> str:
    """``"learned"`` or ``"fixed"`` from ``value`` (``True``/``False`` too when ``bools``)."""
    if bools and isinstance(value, bool):
        return "learned" if value else "fixed"
    if isinstance(value, str) and value in ("learned", "fixed"):
        return value
    accepted = "'learned', 'fixed', True or False" if bools else "'learned' or 'fixed'"
    raise ValueError(f"{arg} must be {accepted}, but got {value!r}")


def _learned_drop_path(
    cls: type, params: dict[str, inspect.Parameter], options: dict[str, Any], site: DropPathSite
) -> nn.Module:
    """A :class:`~bayesdrop.nn.DropPath` of the family, one unit, starting at the site's rate."""
    kwargs = _rate_kwargs(params, site.p, options)
    if "num_features" in params:
        kwargs["num_features"] = 1
    try:
        module = DropPath(cls(**kwargs))
    except (TypeError, ValueError) as err:
        raise type(err)(f"'{site.name}': {err}") from err
    return module


def _report_routing(routing: AttentionRouting, report: ConversionReport) -> None:
    """What :func:`route_attention_dropout` changed, in the report's notes and ``fixed``."""
    for name, why in routing.fixed.items():
        report.fixed.setdefault(
            name or "<model>",
            f"attention-probability dropout left as it was: {why}; its rate stays fixed, is not "
            "learned, and is off under mc_predict",
        )
    if routing.implementation is not None:
        report.notes.append(
            f"transformers models switched to the attention implementation "
            f"'{routing.implementation}': the same computation, with the attention probabilities "
            "dropped by a called module in training and under mc_predict (eval outputs are bit "
            "for bit the original's)"
        )
    for dotted, rate in routing.attached.items():
        report.notes.append(
            f"'{dotted}': nn.Dropout({rate:g}) added for the attention probabilities (the model "
            "passed the rate as a number to its attention function)"
        )
    fused = routing.unfused
    if fused:
        report.notes.append(
            f"fused_attn switched off in {fused} so that attn_drop is called (eval outputs agree "
            "to rounding)"
        )


def _attention(
    cls: type,
    params: dict[str, inspect.Parameter],
    root: nn.Module,
    name: str,
    mha: nn.MultiheadAttention,
    options: dict[str, Any],
) -> Replacement:
    """Make ``mha`` (in the copy) a DropoutMultiheadAttention whose dropout is the family."""
    p = float(mha.dropout)
    original = f"{type(mha).__name__}(dropout={p}) attention probabilities"
    kwargs = _rate_kwargs(params, p, options)
    module: nn.Module
    if "num_features" in params:
        kwargs["num_features"] = 1
        module = SingleRateDropout(cls(**kwargs))
    else:
        module = cls(**kwargs)
    ref = _ref_tensor(mha)
    if ref is not None:
        module.to(device=ref.device, dtype=ref.dtype)
    DropoutMultiheadAttention.from_module(mha, module)
    return Replacement(
        name, original, p, f"{name}.attn_drop", None, "one rate", 1, _prior(cls, None)
    )


def _fixed_and_fast_paths(
    model: nn.Module,
    new: nn.Module,
    converted: list[str],
    split: set[str],
    report: ConversionReport,
) -> None:
    """Report the dropout no module applies; switch off fused paths that would skip modules."""

    def inside(prefix: str) -> bool:
        return any(c == prefix or c.startswith(prefix + ".") or not prefix for c in converted)

    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) and f"{name}.attn_drop" in converted:
            continue
        if isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            report.fixed[name] = (
                f"nn.MultiheadAttention drops attention probabilities functionally "
                f"(dropout={m.dropout}): the rate stays fixed, is not learned, and is off under "
                "mc_predict (the layer is in eval mode there)"
            )
        elif isinstance(m, nn.RNNBase) and m.dropout > 0 and m.num_layers > 1 and name not in split:
            report.fixed[name] = (
                f"{type(m).__name__}(dropout={m.dropout}) drops between its stacked layers "
                "functionally: the rate stays fixed, is not learned, and is off under mc_predict"
            )
    for name, m in new.named_modules():
        if isinstance(m, nn.TransformerEncoderLayer) and inside(name) and converted:
            m.activation_relu_or_gelu = 0
            report.notes.append(
                f"'{name}': torch's fused eval-mode fast path switched off (it would skip the "
                "converted modules under MC prediction); eval outputs agree to rounding"
            )
        if isinstance(m, nn.TransformerEncoder) and inside(name) and converted:
            m.use_nested_tensor = False
