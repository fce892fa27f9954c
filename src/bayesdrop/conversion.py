"""Turn an existing model's ``nn.Dropout*`` layers into a bayesdrop dropout family.

:func:`convert` returns a **converted copy** of the model and a :class:`ConversionReport`; the
original model is never modified. Dropout layers are found by module type (``isinstance`` of
``nn.Dropout``, ``nn.Dropout1d/2d/3d``), never by class-name text.

* **Wrapper families** (their constructor takes ``layer``: LBD, Concrete, Gaussian, variational,
  sparse, ARD) regularise the weights fed by the dropped units, so they wrap the layer the dropout
  feeds. That layer is known only when the dropout is followed *directly* by an ``nn.Linear``,
  ``nn.Conv1d/2d/3d``, ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN`` inside an ``nn.Sequential``: the
  layer is replaced by ``Family(layer, **options)`` (same weights) and the dropout by
  ``nn.Identity`` (so the other indices, and their ``state_dict`` keys, stay put; the wrapped
  layer's keys gain a ``.layer`` prefix). Anything else raises a ``ValueError`` naming the layer.
* **Bare form** (``form="bare"``, or a family without ``layer`` such as ``MCDropout``): the dropout
  is replaced in place by ``Family(num_features=..., **options)``; ``num_features`` is taken from
  ``options`` or from a neighbouring ``nn.Linear`` in an ``nn.Sequential``.

The dropout's ``p`` becomes the family's ``init_p`` (learned rates) or ``p`` (fixed rates) when the
family has one; channel dropout (``nn.Dropout1d/2d/3d``) sets ``channelwise=True`` for families
that have that option. ``AlphaDropout`` and ``FeatureAlphaDropout`` (noise tied to SELU) are
refused unless listed in ``exclude``.
"""

from __future__ import annotations

import copy
import sys
import types
import warnings
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .nn._base import DropoutModule
from .nn.wrapped_layers import SUPPORTED_LAYERS

__all__ = ["convert", "ConversionReport", "Replacement", "FAMILIES", "resolve_family"]

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
_FORMS = ("wrap", "bare")


@dataclass(frozen=True)
class Replacement:
    """One converted dropout layer.

    Attributes:
        name: dotted name of the ``nn.Dropout*`` layer in the original model.
        original: its ``repr``.
        p: its drop probability.
        module: dotted name of the new family module in the converted model.
        wrapped: dotted name of the layer it wraps (the original name), or ``None`` (bare form).
    """

    name: str
    original: str
    p: float
    module: str
    wrapped: str | None


@dataclass
class ConversionReport:
    """What :func:`convert` did: the family, each replacement, and notes worth reading."""

    family: str
    replacements: list[Replacement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.replacements)

    def __str__(self) -> str:
        lines = [f"converted {len(self.replacements)} dropout layer(s) to {self.family}"]
        for r in self.replacements:
            how = f"wraps '{r.wrapped}'" if r.wrapped is not None else "bare"
            lines.append(f"  {r.name}: {r.original} -> {r.module} ({how})")
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


def _params(cls: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls).parameters)


def _ref_tensor(*modules: nn.Module) -> torch.Tensor | None:
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                return t
    return None


def _infer_features(parent: nn.Module, key: str) -> int | None:
    if not isinstance(parent, nn.Sequential):
        return None
    keys = list(parent._modules)
    i = keys.index(key)
    nxt = parent._modules[keys[i + 1]] if i + 1 < len(keys) else None
    prev = parent._modules[keys[i - 1]] if i > 0 else None
    if isinstance(nxt, nn.Linear):
        return nxt.in_features
    if isinstance(prev, nn.Linear):
        return prev.out_features
    return None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def convert(
    model: nn.Module,
    family: str | type,
    *,
    form: str = "wrap",
    exclude: Iterable[str] = (),
    **options: Any,
) -> tuple[nn.Module, ConversionReport]:
    """Return a copy of ``model`` whose ``nn.Dropout*`` layers are replaced by ``family``.

    Args:
        model: any module; it is deep-copied, never modified.
        family: a :class:`~bayesdrop.nn.DropoutModule` subclass, or one of ``"mc"``, ``"lbd"``,
            ``"concrete"``, ``"gaussian"``, ``"variational"``, ``"sparse"``, ``"ard"`` (or the
            class name), resolved in :mod:`bayesdrop.nn`.
        form: for families that take a ``layer``: ``"wrap"`` (wrap the layer the dropout feeds)
            or ``"bare"`` (replace the dropout alone, with ``num_features``). Families without
            ``layer`` are always bare.
        exclude: dotted names of dropout layers to leave as they are.
        **options: passed to every family constructor (they override the carried-over ``p``).

    Returns:
        ``(converted_model, report)``.

    Raises:
        ValueError: a dropout layer that cannot be converted (it does not feed a wrappable layer
            in an ``nn.Sequential``, ``num_features`` cannot be inferred, alpha dropout), naming it.

    Example:
        >>> from torch import nn
        >>> from bayesdrop.nn import LearnableBernoulliDropout
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
    if isinstance(exclude, str):
        exclude = (exclude,)
    excluded = set(exclude)
    params = _params(cls)
    wraps = "layer" in params and form == "wrap"
    if "layer" in params and form == "bare" and params["layer"].default is inspect.Parameter.empty:
        raise ValueError(f"{cls.__name__} has no bare form (it needs a layer); use form='wrap'")
    report = ConversionReport(cls.__name__)
    new = copy.deepcopy(model)
    # collect (parent, key, full name) of every dropout layer, before changing anything
    todo: list[tuple[nn.Module, str, str]] = []
    seen: set[tuple[int, str]] = set()
    for pname, parent in new.named_modules(remove_duplicate=False):
        for key, child in parent._modules.items():
            if child is None or (id(parent), key) in seen:
                continue
            seen.add((id(parent), key))
            full = _join(pname, key)
            if isinstance(child, _ALPHA_DROPOUT) and full not in excluded:
                raise ValueError(
                    f"'{full}' is {type(child).__name__}, whose noise is tied to SELU networks; it "
                    "cannot become a Bernoulli/Gaussian dropout family (pass exclude=[...] to keep it)"
                )
            if isinstance(child, _BERNOULLI_DROPOUT) and full not in excluded:
                todo.append((parent, key, full))

    for parent, key, full in todo:
        drop = parent._modules[key]
        assert drop is not None
        p = float(drop.p)  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        if "init_p" in params:
            kwargs["init_p"] = p
        elif "p" in params:
            kwargs["p"] = p
        else:
            report.notes.append(
                f"'{full}': {cls.__name__} has no initial rate; p={p} not carried over"
            )
        channel = isinstance(drop, _CHANNEL_DROPOUT)
        if channel and "channelwise" in params:
            kwargs["channelwise"] = True
        kwargs.update(options)
        try:
            if wraps:
                _wrap(cls, parent, key, full, kwargs, report, channel, drop, p)
            else:
                _bare(cls, params, parent, key, full, kwargs, report, channel, drop, p, new)
        except (TypeError, ValueError) as err:
            raise type(err)(f"converting '{full}' to {cls.__name__}: {err}") from err

    for name, m in new.named_modules():
        if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)) and m.dropout > 0:
            report.notes.append(
                f"'{name}' keeps its internal dropout={m.dropout} between stacked layers (not a module)"
            )
    if not todo:
        report.notes.append("no nn.Dropout layer found; the copy is unchanged")
    return new, report


def _wrap(
    cls: type,
    parent: nn.Module,
    key: str,
    full: str,
    kwargs: dict[str, Any],
    report: ConversionReport,
    channel: bool,
    drop: nn.Module,
    p: float,
) -> None:
    supported = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
    if not isinstance(parent, nn.Sequential):
        raise ValueError(
            f"{cls.__name__} wraps the layer a dropout feeds, which is known only inside an "
            f"nn.Sequential where the dropout is followed directly by one of nn.{{{supported}}}; "
            f"'{full}' is an attribute of {type(parent).__name__}. Put dropout and layer in an "
            "nn.Sequential, wrap the layer by hand, or use form='bare'"
        )
    keys = list(parent._modules)
    i = keys.index(key)
    nxt = parent._modules[keys[i + 1]] if i + 1 < len(keys) else None
    if nxt is None or not isinstance(nxt, SUPPORTED_LAYERS):
        what = "nothing" if nxt is None else type(nxt).__name__
        raise ValueError(
            f"{cls.__name__} must wrap the layer the dropout feeds, one of nn.{{{supported}}}, but "
            f"it is followed by {what}; use form='bare' or exclude=['{full}']"
        )
    if isinstance(nxt, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not channel:
        report.notes.append(
            f"'{full}' dropped single elements; wrapping {type(nxt).__name__} drops whole channels"
        )
    prefix = full[: -len(key)].rstrip(".")
    module = cls(nxt, **kwargs)
    ref = _ref_tensor(nxt)
    if ref is not None:
        module.to(device=ref.device, dtype=ref.dtype)
    parent._modules[keys[i + 1]] = module
    parent._modules[key] = nn.Identity()
    name = _join(prefix, keys[i + 1])
    report.replacements.append(Replacement(full, repr(drop), p, name, name))


def _bare(
    cls: type,
    params: dict[str, inspect.Parameter],
    parent: nn.Module,
    key: str,
    full: str,
    kwargs: dict[str, Any],
    report: ConversionReport,
    channel: bool,
    drop: nn.Module,
    p: float,
    root: nn.Module,
) -> None:
    if channel and "channelwise" not in params:
        raise ValueError(
            f"{type(drop).__name__} drops whole channels, which the bare form of {cls.__name__} "
            "cannot do (it drops last-dimension features); use form='wrap'"
        )
    if "num_features" in params and "num_features" not in kwargs:
        n = _infer_features(parent, key)
        if n is None:
            raise ValueError(
                "num_features cannot be inferred (no nn.Linear next to the dropout in an "
                "nn.Sequential); pass num_features=..."
            )
        kwargs["num_features"] = n
    module = cls(**kwargs)
    ref = _ref_tensor(root)
    if ref is not None:
        module.to(device=ref.device, dtype=ref.dtype)
    parent._modules[key] = module
    report.replacements.append(Replacement(full, repr(drop), p, full, None))


class _RenamedModule(types.ModuleType):
    """``bayesdrop.convert`` as a module name: forwards to :mod:`bayesdrop.conversion` with a warning.

    ``bayesdrop.convert`` is the function; the module that holds it is ``bayesdrop.conversion``.
    ``from bayesdrop.convert import ConversionReport`` keeps working for one release.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(
            "the module bayesdrop.convert is renamed bayesdrop.conversion (bayesdrop.convert is "
            f"the function); import {name} from bayesdrop.conversion",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(sys.modules[__name__], name)


sys.modules.setdefault("bayesdrop.convert", _RenamedModule("bayesdrop.convert", __doc__))
