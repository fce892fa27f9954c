"""Pruning and compression of models trained with sparse weight-noise dropout.

:class:`~bayesdrop.nn.SparseVariationalDropout` and :class:`~bayesdrop.nn.ARDDropout` zero the
weights with a large :math:`\\log\\alpha` in eval mode. :func:`prune` makes that permanent and
:func:`compression_report` counts what is left, with the compression ratio of the ARD paper:
the total number of weights divided by the number of non-zero weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .nn.additive_gaussian import AdditiveGaussianDropout

__all__ = ["prune", "compression_report", "CompressionReport", "LayerCompression"]

_DENSE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prune(model: nn.Module) -> dict[str, int]:
    """Remove, for good, the weights that sparse dropout modules drop in eval mode.

    For every :class:`~bayesdrop.nn.SparseVariationalDropout` / :class:`~bayesdrop.nn.ARDDropout`
    in ``model``, the weights with :math:`\\log\\alpha` above the module's ``threshold`` get
    :math:`\\theta = 0` and the smallest ``log_sigma2``, and are cleared in the module's
    ``weight_mask``, so they stay zero if training goes on (their KL is no longer counted).
    Calling it again prunes only what has crossed the threshold since.

    Args:
        model: any module.

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
