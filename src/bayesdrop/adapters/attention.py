r"""Attention-probability dropout as a called module, where the model's attention code allows it.

Many models never *call* their attention dropout: they read its rate and hand it to a fused
kernel, ``F.scaled_dot_product_attention(..., dropout_p=p)``, or to an attention function that
applies ``F.dropout`` itself. No module replacement can reach such a dropout, so it cannot learn
its rate and is off under MC prediction. :func:`route_attention_dropout` changes the model (in
place; :func:`bayesdrop.convert` calls it on its copy) so that the attention probabilities
:math:`\mathrm{softmax}(QK^\top s + M)` pass through a dropout **module**; :func:`bayesdrop.convert`
then sees a called dropout on attention probabilities and converts it like any other (one rate
per layer). Two conventions are met, both found by duck typing:

* **Hugging Face transformers** models that compute attention through the attention-function
  interface (``config._attn_implementation``, ``model.set_attn_implementation``: BERT,
  DistilBERT, RoBERTa, GPT-2, ViT, T5, BART and most others). Their attention modules pass the
  rate as ``dropout=`` to the attention function, read from a dropout module (``self.dropout.p``)
  or a float (``self.attention_dropout``). The model is switched to the attention implementation
  ``"bayesdrop_<original>"`` (``"bayesdrop_sdpa"`` or ``"bayesdrop_eager"``, registered with
  transformers' ``AttentionInterface`` together with the original's mask function), which runs
  the original implementation unchanged whenever the dropout does not sample (eval mode: outputs
  are bit-for-bit the original's), and otherwise the same implementation with the dropout of the
  probabilities made a call of the module: the one whose rate the model read, or, where the model
  passed a float, a new ``nn.Dropout(p)`` attached to the attention module as ``attn_drop``.
  Which module and which float each attention module uses is found by running the model once on
  ``example_inputs`` in training mode (on a copy, with every dropout replaced by a stand-in whose
  rate is a unique number), not from class or attribute names.
* **timm**-style attention modules with a ``fused_attn`` flag and an ``attn_drop`` module (timm's
  ``Attention`` in ViT, DeiT, ...): ``fused_attn`` is set to ``False``, so that the module's own
  non-fused path calls ``attn_drop``. Eval outputs then differ from the fused kernel's by
  floating-point rounding only.

Attention dropout with rate 0 is left as it is (there is no dropout to learn; set the model's
attention dropout rate above 0 before converting to learn one), and so is every module whose
attention function does not apply its dropout in one ``F.dropout`` or
``F.scaled_dot_product_attention`` call; :attr:`AttentionRouting.fixed` says why for each.
transformers is imported only when the model contains a transformers model.
"""

from __future__ import annotations

import contextvars
import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..nn._base import DropoutModule
from .batches import call_model

__all__ = [
    "AttentionRouting",
    "route_attention_dropout",
    "is_transformers_model",
    "ATTENTION_IMPLEMENTATIONS",
]

#: Attention implementations of transformers that can be routed (their names without the prefix).
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
_PREFIX = "bayesdrop_"
#: Attribute set on a routed transformers attention module: the dotted name (relative to it) of
#: the dropout module applied to its attention probabilities.
_MARK = "_bayesdrop_attention_dropout"
#: Name of the dropout module attached where the model passes a float rate.
_ATTACHED = "attn_drop"
_registered: set[str] = set()


@dataclass
class AttentionRouting:
    """What :func:`route_attention_dropout` did.

    Attributes:
        routed: attention module name -> dotted name of the dropout module now called on its
            attention probabilities.
        attached: the subset of those dropout modules that were added (the model passed a float
            rate), dotted name -> their rate.
        fixed: attention module name -> why its attention dropout stays as it was.
        unfused: the timm-style attention modules whose ``fused_attn`` was switched off.
        implementation: the attention implementation the transformers models now use
            (``"bayesdrop_sdpa"``, ...), or ``None`` if none was switched.
    """

    routed: dict[str, str] = field(default_factory=dict)
    attached: dict[str, float] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    unfused: list[str] = field(default_factory=list)
    implementation: str | None = None


def is_transformers_model(module: nn.Module) -> bool:
    """Whether ``module`` looks like a Hugging Face ``PreTrainedModel`` (duck typing)."""
    config = getattr(module, "config", None)
    return (
        config is not None
        and hasattr(config, "_attn_implementation")
        and callable(getattr(module, "set_attn_implementation", None))
    )


def route_attention_dropout(model: nn.Module, example_inputs: Any = None) -> AttentionRouting:
    """Make the attention-probability dropout of ``model`` a called module, in place.

    See the module docstring for what is changed. The model computes the same function: in eval
    mode bit for bit (transformers) or up to rounding (``fused_attn`` switched off); in training
    mode the attention probabilities are dropped by the module, with the module's rate.

    Args:
        model: any module; transformers models (at any depth) and timm-style attention modules
            inside are routed, everything else is left unchanged.
        example_inputs: a batch the model can be called on (a tensor, a tuple passed as
            ``model(*inputs)``, or a mapping passed as ``model(**inputs)``); needed only when the
            model contains a transformers model, to find which rate each attention module reads.

    Returns:
        An :class:`AttentionRouting`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the model fails on ``example_inputs``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
    routing = AttentionRouting()
    _route_fused_flags(model, routing)
    roots = _transformers_roots(model)
    if roots and example_inputs is None:
        for name, _ in roots:
            routing.fixed[name] = (
                "a transformers model: pass example_inputs to route its attention dropout (which "
                "rate each attention module reads is found by running the model once)"
            )
    elif roots:
        _route_transformers(model, roots, example_inputs, routing)
    return routing


# ------------------------------------------------------------------------------ timm-style flags
def _route_fused_flags(model: nn.Module, routing: AttentionRouting) -> None:
    for name, m in model.named_modules():
        drop = m._modules.get("attn_drop")
        if not isinstance(getattr(m, "fused_attn", None), bool) or drop is None:
            continue
        if not m.fused_attn:
            continue  # it calls attn_drop already
        rate = getattr(drop, "p", None)
        if not isinstance(drop, nn.modules.dropout._DropoutNd) or not isinstance(rate, float):
            routing.fixed[name] = (
                f"fused attention with attn_drop of type {type(drop).__name__}, not an nn.Dropout"
            )
            continue
        if rate == 0.0:
            routing.fixed[name] = (
                "attention dropout p = 0 (nothing to learn; the fused kernel is kept)"
            )
            continue
        m.fused_attn = False
        routing.unfused.append(name)
        routing.routed[name] = f"{name}.attn_drop" if name else "attn_drop"


# ------------------------------------------------------------------------------ transformers
def _transformers_roots(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost transformers models inside ``model`` (``model`` itself if it is one)."""
    roots: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if any(name == r or name.startswith(r + ".") or r == "" for r, _ in roots):
            continue
        if is_transformers_model(m):
            roots.append((name, m))
    return roots


def _implementations(root: nn.Module) -> set[str]:
    """Every attention implementation named by the configs of ``root``'s (sub)models."""
    found = set()
    for m in root.modules():
        config = getattr(m, "config", None)
        impl = getattr(config, "_attn_implementation", None) if config is not None else None
        if isinstance(impl, str) and hasattr(m, "set_attn_implementation"):
            found.add(impl)
    return found


class _Sentinel(nn.Module):
    """Stands in for a dropout during discovery: identity, with a rate that names it."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.inplace = False

    def forward(self, x: Tensor) -> Tensor:
        return x


@dataclass
class _Discovery:
    """What each attention module passed to the attention function during discovery."""

    rates: dict[int, set[float]] = field(default_factory=dict)
    calls: dict[int, set[int]] = field(default_factory=dict)  # dropout calls intercepted

    def record(self, module: nn.Module, rate: Any, intercepted: int) -> None:
        value = float(rate) if isinstance(rate, (int, float)) else math.nan
        self.rates.setdefault(id(module), set()).add(value)
        self.calls.setdefault(id(module), set()).add(intercepted)


_DISCOVERY: contextvars.ContextVar[_Discovery | None] = contextvars.ContextVar(
    "bayesdrop_attention_discovery", default=None
)


def _route_transformers(
    model: nn.Module,
    roots: list[tuple[str, nn.Module]],
    example_inputs: Any,
    routing: AttentionRouting,
) -> None:
    impls: set[str] = set()
    for _, root in roots:
        impls |= _implementations(root)
    if impls and all(i.startswith(_PREFIX) for i in impls):
        return  # routed already (a converted model converted again): its dropout is called
    if len(impls) != 1 or next(iter(impls)) not in ATTENTION_IMPLEMENTATIONS:
        why = (
            f"attention implementation(s) {sorted(impls)}: only one of "
            f"{list(ATTENTION_IMPLEMENTATIONS)} (the same for every submodel) can be routed"
        )
        for name, _ in roots:
            routing.fixed[name or "(model)"] = why
        return
    impl = impls.pop()
    target = _register(impl)

    # discovery, on a copy: every dropout module becomes a stand-in with a unique rate
    twin = copy.deepcopy(model)
    sentinels: dict[float, str] = {}
    by_name = dict(twin.named_modules(remove_duplicate=False))
    for full, m in list(by_name.items()):
        if isinstance(m, nn.modules.dropout._DropoutNd):
            value = 0.123456789 + len(sentinels) * 1e-7
            sentinels[value] = full
            parent, _, key = full.rpartition(".")
            by_name[parent]._modules[key] = _Sentinel(value)
    for name, _ in roots:
        twin.get_submodule(name).set_attn_implementation(target)  # type: ignore[operator]
    twin.train()
    discovery = _Discovery()
    token = _DISCOVERY.set(discovery)
    rng = torch.get_rng_state()
    try:
        with torch.no_grad():
            call_model(twin, example_inputs)
    except Exception as err:
        raise ValueError(
            "example_inputs: the model failed on them while its attention dropout was being "
            f"located: {type(err).__name__}: {err}"
        ) from err
    finally:
        _DISCOVERY.reset(token)
        torch.set_rng_state(rng)

    names = {id(m): n for n, m in twin.named_modules()}
    originals = dict(model.named_modules(remove_duplicate=False))
    for key in discovery.rates:
        name = names[key]
        rates, calls = discovery.rates[key], discovery.calls[key]
        module = model.get_submodule(name)
        if calls != {1}:
            routing.fixed[name] = (
                "its attention function does not drop the probabilities in exactly one "
                "F.dropout / F.scaled_dot_product_attention call"
            )
            continue
        if len(rates) != 1:
            routing.fixed[name] = f"it passed different rates on different calls: {sorted(rates)}"
            continue
        rate = rates.pop()
        if rate in sentinels:
            source = sentinels[rate]
            prefix = f"{name}." if name else ""
            p = float(originals[source].p)  # type: ignore[arg-type]
            if not source.startswith(prefix):
                routing.fixed[name] = (
                    f"it reads the rate of '{source}', which is not one of its own submodules"
                )
            elif p == 0.0:
                routing.fixed[name] = (
                    f"attention dropout p = 0 ('{source}'; nothing to learn: set a rate > 0 to "
                    "learn one)"
                )
            else:
                setattr(module, _MARK, source[len(prefix) :])
                routing.routed[name] = source
        elif math.isnan(rate) or rate <= 0.0 or rate >= 1.0:
            routing.fixed[name] = (
                "its attention function gets dropout=0.0 in training (no attention dropout to learn)"
                if rate == 0.0
                else f"it passes dropout={rate}, not a rate in (0, 1)"
            )
        else:
            attached = _free_name(module, _ATTACHED)
            module.add_module(attached, nn.Dropout(rate))
            setattr(module, _MARK, attached)
            full = f"{name}.{attached}" if name else attached
            routing.routed[name] = full
            routing.attached[full] = rate
    if routing.routed:
        for _, root in roots:
            root.set_attn_implementation(_PREFIX + impl)  # type: ignore[operator]
        routing.implementation = _PREFIX + impl


def _free_name(module: nn.Module, base: str) -> str:
    name = base
    while hasattr(module, name):
        name = "_" + name
    return name


def _register(impl: str) -> str:
    """Register ``bayesdrop_<impl>`` with transformers (once); return its name."""
    name = _PREFIX + impl
    if name in _registered:
        return name
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    def attention(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return _attention(impl, module, *args, **kwargs)

    attention.__name__ = f"bayesdrop_{impl}_attention_forward"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    _registered.add(name)
    return name


def _original_function(impl: str, module: nn.Module) -> Callable[..., Any] | None:
    """The attention function ``module`` would call under ``impl`` (its own file's choice)."""
    source = sys.modules.get(type(module).__module__)
    eager = getattr(source, "eager_attention_forward", None)
    if impl == "eager":
        return eager if callable(eager) else None
    interface: Any = getattr(source, "ALL_ATTENTION_FUNCTIONS", None)
    if interface is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        interface = ALL_ATTENTION_FUNCTIONS
    function: Callable[..., Any] = interface.get_interface(impl, eager)
    return function


def _attention(
    impl: str,
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    *args: Any,
    dropout: Any = 0.0,
    **kwargs: Any,
) -> Any:
    """The registered ``bayesdrop_<impl>`` attention function (see the module docstring)."""
    function = _original_function(impl, module)
    if function is None:
        raise RuntimeError(
            f"{type(module).__name__}: no eager_attention_forward in its module; route it with "
            "attn_implementation='sdpa' instead"
        )
    discovery = _DISCOVERY.get()
    if discovery is not None:
        with _ProbabilityDropout(nn.Identity(), impl) as mode:
            out = function(module, query, key, value, attention_mask, *args, dropout=0.0, **kwargs)
        discovery.record(module, dropout, mode.calls)
        return out
    name = getattr(module, _MARK, None)
    if name is None:  # not routed: exactly what the original implementation does
        return function(module, query, key, value, attention_mask, *args, dropout=dropout, **kwargs)
    drop = module.get_submodule(name)
    if not _samples(drop):
        return function(module, query, key, value, attention_mask, *args, dropout=0.0, **kwargs)
    with _ProbabilityDropout(drop, impl) as mode:
        out = function(module, query, key, value, attention_mask, *args, dropout=0.0, **kwargs)
    if mode.calls != 1:
        raise RuntimeError(
            f"{type(module).__name__}: its attention function dropped the probabilities "
            f"{mode.calls} times (expected once)"
        )
    return out


def _samples(drop: nn.Module) -> bool:
    """Whether the dropout module would sample now (training mode or MC sampling)."""
    found = False
    for m in drop.modules():
        if isinstance(m, DropoutModule):
            found = True
            if m.sampling:
                return True
        elif isinstance(m, nn.modules.dropout._DropoutNd):
            found = True
            if m.training and m.p > 0:
                return True
    return drop.training if not found else False


class _ProbabilityDropout(TorchFunctionMode):
    """While active, the attention function's dropout of the probabilities calls ``drop``.

    ``impl="eager"``: ``F.dropout(probs, ...)`` becomes ``drop(probs)``; ``impl="sdpa"``:
    ``F.scaled_dot_product_attention`` is computed as its reference formula with ``drop`` on
    the probabilities (:func:`attention_with_dropout_module`). ``calls`` counts them.
    """

    def __init__(self, drop: nn.Module, impl: str) -> None:
        super().__init__()
        self.drop = drop
        self.target: Any = F.dropout if impl == "eager" else F.scaled_dot_product_attention
        self.calls = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is not self.target:
            return func(*args, **kwargs)
        self.calls += 1
        if func is F.dropout:
            x = args[0] if args else kwargs["input"]
            return self.drop(x)
        return attention_with_dropout_module(*args, drop=self.drop, **kwargs)


def attention_with_dropout_module(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    drop: nn.Module,
) -> Tensor:
    r"""``F.scaled_dot_product_attention`` with its dropout replaced by the module ``drop``.

    .. math::
        \mathrm{drop}\bigl(\mathrm{softmax}(Q K^\top s + M)\bigr)\,V,\qquad
        s = \texttt{scale}\ \text{or}\ 1/\sqrt{d},

    with the masks of ``F.scaled_dot_product_attention``: a boolean ``attn_mask`` is ``True``
    where attention is allowed, a float one is added to the scores, ``is_causal`` allows key
    ``j <= i`` for query ``i``; ``enable_gqa`` repeats the key/value heads. A query row with no
    allowed key gets zero weights (as torch's kernels give), never NaN. ``dropout_p`` is ignored:
    ``drop`` does the dropout.
    """
    if enable_gqa:
        repeat = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    s = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * s
    masked = is_causal or attn_mask is not None
    if is_causal:
        n, m = query.size(-2), key.size(-2)
        allowed = torch.ones(n, m, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probs = torch.softmax(scores, dim=-1)
    if masked:
        probs = probs.nan_to_num(0.0)  # a row with every key masked attends to nothing
    return torch.matmul(drop(probs), value)
