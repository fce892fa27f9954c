"""Pruning and compression of models trained with sparse weight-noise dropout.

:class:`~bayesdrop.nn.SparseVariationalDropout` and :class:`~bayesdrop.nn.ARDDropout` zero the
weights with a large :math:`\\log\\alpha` in eval mode. :func:`prune` makes that permanent and
:func:`compression_report` counts what is left, with the compression ratio of the ARD paper:
the total number of weights divided by the number of non-zero weights.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .nn.additive_gaussian import AdditiveGaussianDropout

__all__ = [
    "prune",
    "compression_report",
    "compress",
    "CompressionReport",
    "LayerCompression",
    "SparseLinear",
    "SelectInputs",
    "CompressForm",
]

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


# ---------------------------------------------------------------------------------- compress
#: Forms of :func:`compress`.
CompressForm = Literal["dense", "sparse"]

#: Modules applied elementwise with no state: a constant pre-activation stays a constant through
#: them, so a removed unit's constant output can be folded into the next layer's bias exactly.
_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Tanhshrink,
    nn.LogSigmoid,
)


@contextlib.contextmanager
def _quiet_csr() -> Iterator[None]:
    """Silence torch's one-time "sparse CSR support is in beta" notice (not the user's concern)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


class SparseLinear(nn.Module):
    r"""A linear layer whose weight is stored in compressed sparse row (CSR) form.

    .. math::
        y = x W^\top + b,

    with only the non-zero entries of :math:`W` stored: ``values`` (a parameter, one per kept
    weight), and the CSR index buffers ``crow_indices`` (``out_features + 1`` entries) and
    ``col_indices`` (one per kept weight), int32 when the layer is small enough (always, in
    practice). The product is :func:`torch.sparse.mm`. :func:`compress` builds these from a
    trained sparse layer.

    Args:
        weight: the dense weight, shape ``(out_features, in_features)``; its zeros are not stored.
        bias: optional bias, shape ``(out_features,)``.

    Shape:
        ``(*, in_features)`` to ``(*, out_features)``.

    Example:
        >>> import torch
        >>> layer = SparseLinear(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([0.5, 0.0]))
        >>> layer(torch.tensor([[3.0, 4.0]])).tolist()
        [[8.5, 3.0]]
        >>> layer.values.numel()
        2
    """

    crow_indices: Tensor
    col_indices: Tensor

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch.Tensor, but got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(
                f"weight must be 2-d (out_features, in_features), but got shape {tuple(weight.shape)}"
            )
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        with _quiet_csr():
            csr = weight.detach().to_sparse_csr()
        small = weight.numel() < 2**31
        itype = torch.int32 if small else torch.int64
        self.values = nn.Parameter(csr.values().clone())
        self.register_buffer("crow_indices", csr.crow_indices().to(itype))
        self.register_buffer("col_indices", csr.col_indices().to(itype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self._csr_key: tuple[int, ...] | None = None
        self._csr: Tensor | None = None

    def _weight(self) -> Tensor:
        """The CSR weight, rebuilt only when a stored tensor changed (e.g. by load_state_dict)."""
        parts = (self.crow_indices, self.col_indices, self.values)
        key = tuple(v for t in parts for v in (t.data_ptr(), t._version))
        tracked = torch.is_grad_enabled() and self.values.requires_grad
        if key != self._csr_key or tracked:
            with _quiet_csr():
                self._csr = torch.sparse_csr_tensor(
                    *parts, (self.out_features, self.in_features), check_invariants=False
                )
            self._csr_key = None if tracked else key
        assert self._csr is not None
        return self._csr

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self._weight(), x2.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"nnz={self.values.numel()}, bias={self.bias is not None}"
        )


class SelectInputs(nn.Module):
    """Keep the input features listed in ``index`` (last dimension): ``x[..., index]``.

    :func:`compress` puts it before a first layer whose other input columns are all pruned.

    Args:
        index: 1-d integer tensor of the kept feature positions.
        in_features: the number of features the input has (checked).
    """

    index: Tensor

    def __init__(self, index: Tensor, in_features: int) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.register_buffer("index", index.detach().to(torch.int64).clone())

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have {self.in_features} features in its last dimension, "
                f"but got shape {tuple(x.shape)}"
            )
        return x.index_select(-1, self.index)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, kept={self.index.numel()}"


def _plain_layer(module: nn.Module) -> nn.Module:
    """The plain layer a bayesdrop weight-noise module computes in eval mode."""
    if isinstance(module, AdditiveGaussianDropout):
        layer = module.layer
        with torch.no_grad():
            layer.weight.copy_(module.sparse_weight())  # type: ignore[operator]
        return layer
    wrapped = getattr(module, "layer", None)
    return wrapped if isinstance(wrapped, nn.Module) else nn.Identity()


def _unwrap(model: nn.Module) -> tuple[nn.Module, set[int]]:
    """Replace (in place) every weight-noise module by its eval-mode plain layer.

    Returns the model (replaced itself if it is such a module) and the ids of the layers that
    came from a sparse module.
    """
    from .nn.variational import VariationalDropout

    sparse_ids: set[int] = set()
    kinds = (AdditiveGaussianDropout, VariationalDropout)

    def convert(m: nn.Module) -> nn.Module:
        plain = _plain_layer(m)
        if isinstance(m, AdditiveGaussianDropout):
            sparse_ids.add(id(plain))
        return plain

    if isinstance(model, kinds):
        return convert(model), sparse_ids
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kinds):
                setattr(parent, name, convert(child))
    return model, sparse_ids


def _new_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    out_f, in_f = weight.shape
    with warnings.catch_warnings():  # a layer with no unit left is exact too
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        layer = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.clone())
    if bias is not None:
        layer.bias = nn.Parameter(bias.clone())
    return layer


def _shrink_sequential(seq: nn.Sequential) -> bool:
    """Remove dead units between the Linear layers of ``seq`` (exactly); True if it changed."""
    items = list(seq.children())
    linear_pos = [i for i, m in enumerate(items) if isinstance(m, nn.Linear)]
    changed = False
    for a, b in zip(linear_pos, linear_pos[1:]):
        between = items[a + 1 : b]
        if not all(isinstance(m, _ELEMENTWISE) for m in between):
            continue
        first, second = items[a], items[b]
        assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
        w1, w2 = first.weight.detach(), second.weight.detach()
        dead_row = ~(w1 != 0).any(dim=1)  # unit's pre-activation is its bias alone
        dead_col = ~(w2 != 0).any(dim=0)  # unit feeds nothing
        remove = dead_row | dead_col
        if not bool(remove.any()):
            continue
        keep = ~remove
        b1 = None if first.bias is None else first.bias.detach()
        b2 = None if second.bias is None else second.bias.detach()
        fold = dead_row & ~dead_col
        if bool(fold.any()):
            const = torch.zeros(int(fold.sum()), dtype=w1.dtype, device=w1.device)
            if b1 is not None:
                const = b1[fold].clone()
            with torch.no_grad():
                for m in between:
                    const = m(const)
                shift = w2[:, fold] @ const
            b2 = shift if b2 is None else b2 + shift
        items[a] = _new_linear(w1[keep], None if b1 is None else b1[keep])
        items[b] = _new_linear(w2[:, keep], b2)
        changed = True
    if changed:
        for i, m in enumerate(items):
            seq[i] = m
    return changed


def _select_first_inputs(seq: nn.Sequential) -> None:
    """Put :class:`SelectInputs` before a leading Linear whose some input columns are all zero."""
    if len(seq) == 0 or not isinstance(seq[0], nn.Linear):
        return
    first = seq[0]
    w = first.weight.detach()
    used = (w != 0).any(dim=0)
    if bool(used.all()):
        return
    index = used.nonzero().flatten()
    b = None if first.bias is None else first.bias.detach()
    seq[0] = nn.Sequential(SelectInputs(index, w.shape[1]), _new_linear(w[:, used], b))


def compress(model: nn.Module, *, form: CompressForm = "dense") -> nn.Module:
    r"""A plain PyTorch copy of a trained model that stores only the weights eval mode uses.

    Every :class:`~bayesdrop.nn.SparseVariationalDropout` / :class:`~bayesdrop.nn.ARDDropout`
    becomes its wrapped layer with the weights eval mode drops set to zero (its
    ``log_sigma2`` and mask are gone), every :class:`~bayesdrop.nn.VariationalDropout` its
    wrapped layer as it is (its eval mode), and then:

    * ``form="dense"``: inside every ``nn.Sequential``, between two ``nn.Linear`` layers joined
      only by elementwise activations (ReLU, tanh, sigmoid, GELU, ...), a hidden unit is removed
      when all its incoming weights are zero (its output is then the constant
      :math:`c_j = \mathrm{act}(b_j)`, added to the next layer's bias as
      :math:`b' = b + W_{:,j}\,c_j`) or all its outgoing weights are zero; removing a unit can
      make another removable, so this repeats until nothing changes. A leading ``nn.Linear``
      whose some input columns are all zero reads only the used features through
      :class:`SelectInputs`. The layers are smaller ordinary ``nn.Linear`` layers; kept units
      keep their zeros.
    * ``form="sparse"``: every ``nn.Linear`` that came from a sparse module becomes a
      :class:`SparseLinear` storing only its non-zero weights (CSR).

    Convolutions are kept as dense layers with their zeros in both forms. Other modules (other
    dropout modules included) are copied unchanged. The result computes the same function as
    ``model`` in eval mode (up to floating-point summation order) and is returned in eval mode;
    ``model`` itself is not changed.

    Args:
        model: a trained model (any ``nn.Module``).
        form: ``"dense"`` (default) or ``"sparse"``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if ``form`` is not one of the two, or a counted weight is NaN or infinite.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesdrop.nn import SparseVariationalDropout
        >>> model = nn.Sequential(SparseVariationalDropout(nn.Linear(4, 6)), nn.ReLU(),
        ...                       SparseVariationalDropout(nn.Linear(6, 3)))
        >>> with torch.no_grad():
        ...     model[0].layer.weight[:4] = 0.0  # hidden units 0-3 receive nothing
        >>> small = compress(model)
        >>> small[0].weight.shape, small[2].weight.shape
        (torch.Size([2, 4]), torch.Size([3, 2]))
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(small(x), model.eval()(x), atol=1e-6)
        True
    """
    _check_model("model", model)
    if form not in ("dense", "sparse"):
        raise ValueError(f"form must be one of 'dense', 'sparse', but got {form!r}")
    _check_finite_weights(model, include_dense=False)
    plain, sparse_ids = _unwrap(_copy_model(model))
    if form == "sparse":

        def to_sparse(m: nn.Module) -> nn.Module:
            if isinstance(m, nn.Linear) and id(m) in sparse_ids:
                return SparseLinear(m.weight.detach(), None if m.bias is None else m.bias.detach())
            return m

        if isinstance(plain, nn.Linear):
            plain = to_sparse(plain)
        for parent in list(plain.modules()):
            for name, child in list(parent.named_children()):
                setattr(parent, name, to_sparse(child))
    else:
        seqs = [m for m in plain.modules() if isinstance(m, nn.Sequential)]
        for seq in seqs:
            while _shrink_sequential(seq):
                pass
            _select_first_inputs(seq)
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain.eval()


def _copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with its generators shared rather than copied."""
    memo: dict[int, object] = {}
    for m in model.modules():
        gen = getattr(m, "generator", None)
        if isinstance(gen, torch.Generator):
            memo[id(gen)] = gen
    return copy.deepcopy(model, memo)
