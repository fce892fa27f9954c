"""Drop-path (stochastic depth) modules of other libraries, found by duck typing, and replaced.

Two conventions are recognised by their attributes, never by class names, and without importing
either library:

* timm's ``DropPath``: attributes ``drop_prob`` (a number) and ``scale_by_keep`` (a bool); one
  mask per example, scaled by ``1/keep`` when ``scale_by_keep``. The drop-path modules of
  Hugging Face models (ConvNeXt, Swin, BEiT, ...) and of older timm hold ``drop_prob`` only and
  always scale;
* torchvision's ``StochasticDepth``: attributes ``p`` (a number) and ``mode`` (``"row"``: one
  mask per example, or ``"batch"``: one mask for the whole batch), always scaled by ``1/keep``.

Both hold no parameters and no submodules. :func:`replace_drop_paths` swaps every one it can for
a module built by the caller (:func:`bayesdrop.convert` builds a :class:`~bayesdrop.nn.DropPath`
of the chosen family, initialised at the module's rate) and says why the others stay fixed: a
rate of 0 or 1, one mask for the whole batch (its examples are coupled, which the per-example
LBD estimator does not allow; ``objective(..., coupled=True)`` would be needed), or no
``1/keep`` scaling (the learned version uses inverted scaling, so eval outputs would change).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["DropPathSite", "find_drop_paths", "replace_drop_paths"]


@dataclass(frozen=True)
class DropPathSite:
    """One drop-path module of a model.

    Attributes:
        names: every dotted name the module is reachable under (the first is its name).
        p: its drop probability.
        per_example: one mask per example (timm; torchvision ``mode="row"``) or one per batch.
        scaled: whether kept examples are scaled by ``1/(1-p)``.
        original: its ``repr``.
    """

    names: tuple[str, ...]
    p: float
    per_example: bool
    scaled: bool
    original: str

    @property
    def name(self) -> str:
        return self.names[0]

    def why_fixed(self) -> str | None:
        """Why this drop-path cannot become a learned one, or ``None`` if it can."""
        if self.p == 0.0:
            return "drop-path with p = 0 (it never drops; nothing to learn)"
        if self.p >= 1.0:
            return f"drop-path with p = {self.p} (it always drops)"
        if not self.per_example:
            return (
                "one mask for the whole batch (mode='batch'): it couples the examples, which "
                "the learned drop-path (one mask per example) would change"
            )
        if not self.scaled:
            return (
                "scale_by_keep=False: kept examples are not scaled by 1/(1-p), and the learned "
                "drop-path uses inverted scaling (training outputs would change scale)"
            )
        return None


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _site(m: nn.Module) -> tuple[float, bool, bool] | None:
    """``(p, per_example, scaled)`` if ``m`` is a drop-path module, else ``None``."""
    if m._parameters or m._modules:
        return None
    drop_prob, scale_by_keep = getattr(m, "drop_prob", None), getattr(m, "scale_by_keep", True)
    if _number(drop_prob) and isinstance(scale_by_keep, bool):  # timm, transformers
        return float(drop_prob), True, scale_by_keep  # type: ignore[arg-type]
    p, mode = getattr(m, "p", None), getattr(m, "mode", None)
    if _number(p) and mode in ("row", "batch"):  # torchvision
        return float(p), mode == "row", True  # type: ignore[arg-type]
    return None


def find_drop_paths(model: nn.Module) -> list[DropPathSite]:
    """Every drop-path module of ``model``, in module order (see the module docstring).

    Example:
        >>> from torch import nn
        >>> class StochasticDepth(nn.Module):  # torchvision's attributes
        ...     def __init__(self, p, mode):
        ...         super().__init__()
        ...         self.p, self.mode = p, mode
        >>> model = nn.Sequential(nn.Linear(2, 2), StochasticDepth(0.1, "row"))
        >>> [(s.name, s.p, s.per_example) for s in find_drop_paths(model)]
        [('1', 0.1, True)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
    found: dict[int, tuple[list[str], nn.Module, tuple[float, bool, bool]]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in found:
            found[id(m)][0].append(name)
            continue
        info = _site(m)
        if info is not None:
            found[id(m)] = ([name], m, info)
    return [
        DropPathSite(tuple(names), p, per_example, scaled, repr(m))
        for names, m, (p, per_example, scaled) in found.values()
    ]


def replace_drop_paths(
    model: nn.Module, build: Callable[[DropPathSite], nn.Module], exclude: Iterable[str] = ()
) -> tuple[list[DropPathSite], dict[str, str]]:
    """Replace, in place, every drop-path module of ``model`` that can be learned by ``build(site)``.

    Args:
        model: the model (changed in place).
        build: makes the replacement for a site (its rate is ``site.p``).
        exclude: dotted names of drop-path modules to leave as they are.

    Returns:
        ``(replaced, fixed)``: the sites replaced, and for every other drop-path module (by
        name) why it stays as it was.
    """
    excluded = set(exclude)
    replaced: list[DropPathSite] = []
    fixed: dict[str, str] = {}
    for site in find_drop_paths(model):
        if excluded & set(site.names):
            continue
        why = site.why_fixed()
        if why is not None:
            fixed[site.name] = why
            continue
        new = build(site)
        for full in site.names:
            parent, _, key = full.rpartition(".")
            model.get_submodule(parent)._modules[key] = new
        replaced.append(site)
    return replaced, fixed
