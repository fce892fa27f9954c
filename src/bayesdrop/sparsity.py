"""Pruning and compression of models trained with sparse weight-noise dropout.

:class:`~bayesdrop.nn.SparseVariationalDropout` and :class:`~bayesdrop.nn.ARDDropout` zero the
weights with a large :math:`\\log\\alpha` in eval mode. :func:`prune` makes that permanent and
:func:`compression_report` counts what is left, with the compression ratio of the ARD paper:
the total number of weights divided by the number of non-zero weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .nn.additive_gaussian import AdditiveGaussianDropout

__all__ = ["prune", "compression_report", "CompressionReport", "LayerCompression"]

_DENSE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_model(name: str, model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, but got {type(model).__name__}")
    return model


def _check_finite_weights(model: nn.Module, include_dense: bool) -> None:
    """Refuse NaN/inf weights: such a weight is neither zero nor kept, so no count is right."""
    for name, m in model.named_modules():
        tensors: list[tuple[str, torch.Tensor]] = []
        if isinstance(m, AdditiveGaussianDropout):
            tensors = [("weight", m.theta), ("log_sigma2", m.log_sigma2)]
        elif include_dense and isinstance(m, _DENSE):
            tensors = [("weight", m.weight)]
        for what, t in tensors:
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(
                    f"{name or '<model>'} ({type(m).__name__}) has {bad} NaN or infinite {what} "
                    "entries; a diverged model cannot be pruned or counted as compressed"
                )


def prune(model: nn.Module) -> dict[str, int]:
    """Remove, for good, the weights that sparse dropout modules drop in eval mode.

    For every :class:`~bayesdrop.nn.SparseVariationalDropout` / :class:`~bayesdrop.nn.ARDDropout`
    in ``model``, the weights with :math:`\\log\\alpha` above the module's ``threshold`` get
    :math:`\\theta = 0` and the smallest ``log_sigma2``, and are cleared in the module's
    ``weight_mask``, so they stay zero if training goes on (their KL is no longer counted).
    Calling it again prunes only what has crossed the threshold since.

    Args:
        model: any module.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if a sparse module has a NaN or infinite weight or ``log_sigma2`` (checked
            for every module before anything is pruned).

    Returns:
        For each sparse module, by its name in ``model.named_modules()``, the number of its
        weights that are pruned after the call (cumulative).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesdrop.nn import SparseVariationalDropout
        >>> model = nn.Sequential(SparseVariationalDropout(nn.Linear(3, 2)))
        >>> with torch.no_grad():
        ...     model[0].layer.weight[:, 0] = 0.0
        >>> prune(model)
        {'0': 2}
    """
    _check_model("model", model)
    _check_finite_weights(model, include_dense=False)
    return {
        name: m.prune()
        for name, m in model.named_modules()
        if isinstance(m, AdditiveGaussianDropout)
    }


@dataclass(frozen=True)
class LayerCompression:
    """Weight counts of one layer.

    Attributes:
        name: the module's name in ``model.named_modules()``.
        kind: the class name (e.g. ``"SparseVariationalDropout"`` or ``"Linear"``).
        weights: number of weights (biases are not counted).
        nonzero: number of non-zero weights as eval mode uses them.
    """

    name: str
    kind: str
    weights: int
    nonzero: int

    @property
    def ratio(self) -> float:
        """Compression ratio ``weights / nonzero`` (``inf`` when every weight is zero)."""
        return self.weights / self.nonzero if self.nonzero else float("inf")

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights."""
        return 1.0 - self.nonzero / self.weights if self.weights else 0.0


@dataclass(frozen=True)
class CompressionReport:
    """Per-layer and total weight counts; ``str()`` gives a readable table.

    Attributes:
        layers: one :class:`LayerCompression` per counted layer, in module order.
    """

    layers: tuple[LayerCompression, ...]

    @property
    def weights(self) -> int:
        """Total number of weights."""
        return sum(layer.weights for layer in self.layers)

    @property
    def nonzero(self) -> int:
        """Total number of non-zero weights."""
        return sum(layer.nonzero for layer in self.layers)

    @property
    def ratio(self) -> float:
        """Compression ratio of the whole model, total weights / non-zero weights."""
        return self.weights / self.nonzero if self.nonzero else float("inf")

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights in the whole model."""
        return 1.0 - self.nonzero / self.weights if self.weights else 0.0

    def __str__(self) -> str:
        rows = [
            (layer.name or "<model>", layer.kind, layer.weights, layer.nonzero, layer.ratio)
            for layer in self.layers
        ]
        rows.append(("total", "", self.weights, self.nonzero, self.ratio))
        w_name = max(5, *(len(r[0]) for r in rows))
        w_kind = max(4, *(len(r[1]) for r in rows))
        head = f"{'layer':<{w_name}}  {'kind':<{w_kind}}  {'weights':>10}  {'non-zero':>10}  {'ratio':>9}"
        lines = [head, "-" * len(head)]
        for name, kind, n, nz, ratio in rows:
            lines.append(f"{name:<{w_name}}  {kind:<{w_kind}}  {n:>10}  {nz:>10}  {ratio:>8.1f}x")
        return "\n".join(lines)


def compression_report(model: nn.Module, *, include_dense: bool = True) -> CompressionReport:
    """Count weights and non-zero weights per layer and in total.

    Sparse dropout modules are counted with the weights eval mode uses (:math:`\\theta` with the
    dropped weights zeroed). With ``include_dense`` (default), the other ``nn.Linear`` and
    ``nn.Conv1d/2d/3d`` layers of ``model`` are counted too, with their actual non-zero weights,
    so the total is the ARD paper's "total number of weights in the network divided by the number
    of non-zero weights". Biases are not counted.

    Args:
        model: any module.
        include_dense: also count layers not wrapped by a sparse dropout module.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``include_dense`` not a bool.
        ValueError: if a counted layer has a NaN or infinite weight (or ``log_sigma2``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesdrop.nn import ARDDropout
        >>> model = nn.Sequential(ARDDropout(nn.Linear(4, 5)), nn.ReLU(), nn.Linear(5, 2))
        >>> with torch.no_grad():
        ...     model[0].layer.weight[:, :3] = 0.0
        >>> rep = compression_report(model)
        >>> (rep.weights, rep.nonzero, rep.ratio)
        (30, 15, 2.0)
    """
    _check_model("model", model)
    if not isinstance(include_dense, bool):
        raise TypeError(f"include_dense must be a bool, but got {type(include_dense).__name__}")
    _check_finite_weights(model, include_dense)
    sparse = {n: m for n, m in model.named_modules() if isinstance(m, AdditiveGaussianDropout)}
    wrapped = {id(m.layer) for m in sparse.values()}
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, AdditiveGaussianDropout):
            w = m.sparse_weight()
        elif include_dense and isinstance(m, _DENSE) and id(m) not in wrapped:
            w = m.weight.detach()
        else:
            continue
        layers.append(LayerCompression(name, type(m).__name__, w.numel(), int((w != 0).sum())))
    return CompressionReport(tuple(layers))
