"""Ghost batch normalisation: BatchNorm whose statistics are taken over ghost batches.

LBD's ARM/DisARM estimate needs to know which examples' losses depend on which examples' masks.
Behind a BatchNorm in training mode every example depends on every other, and the only
unbiased form is the whole-batch one, :math:`\\hat g = (\\bar f(z^{(1)}) - \\bar f(z^{(2)}))
\\sum_i c_i`, whose variance grows with the batch size :math:`B`. Behind a
:class:`GhostBatchNorm` of ghost size :math:`g` an example depends only on the masks of its ghost
batch, and :func:`bayesdrop.objective` forms the difference per ghost batch: the estimate stays
exact for the model as trained, with a variance about :math:`g` times (rather than :math:`B`
times) that of the per-example form.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._validation import check_int
from ..functional.ghost_batch_norm import ghost_batch_norm

__all__ = ["GhostBatchNorm", "to_ghost_batch_norm"]


class GhostBatchNorm(_BatchNorm):
    r"""BatchNorm with statistics over contiguous ghost batches of ``ghost_size`` examples.

    Training mode normalises each example with the mean and variance of its ghost batch
    (:func:`~bayesdrop.functional.ghost_batch_norm.ghost_batch_norm`; Hoffer, Hubara & Soudry
    2017, "Train longer, generalize better"); the running statistics average the batch mean and
    the ghost batches' unbiased variances. Eval mode with running statistics is exactly
    ``nn.BatchNorm*d`` in eval mode. One class for every input rank ``(N, C, *)``; the state dict
    is that of ``nn.BatchNorm1d/2d/3d``, so a trained BatchNorm's state loads into it (and back).

    Under :func:`bayesdrop.objective` the LBD modules whose draws reach only ghost batch
    normalisations get the ARM/DisARM difference summed per ghost batch: unbiased, with far less
    variance than the whole-batch form a BatchNorm needs. The ghost batches must be contiguous
    blocks of the objective's batch: the module's input has the batch in dimension 0, in the
    order of the objective's inputs (otherwise the objective uses the whole-batch form for it).

    Args:
        num_features: channels ``C``.
        ghost_size: examples per ghost batch (the last ghost batch is smaller when it does not
            divide the batch).
        eps, momentum, affine, track_running_stats, device, dtype, bias: as ``nn.BatchNorm2d``.

    Shape:
        ``(N, C, *)`` to the same shape.

    Example:
        >>> import torch
        >>> bn = GhostBatchNorm(3, ghost_size=2)
        >>> y = bn(torch.randn(4, 3, 5, 5))
        >>> [round(float(v), 6) + 0.0 for v in y[:2].detach().mean((0, 2, 3))]  # centred
        [0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        num_features: int,
        ghost_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        extra = {} if bias else {"bias": False}  # the keyword is recent in torch
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, **extra
        )
        self.ghost_size = check_int("ghost_size", ghost_size, minimum=1)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of shape (N, C, *), but got {tuple(input.shape)}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_size={self.ghost_size}"

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"expected {self.num_features} channels in dimension 1, but got input of shape "
                f"{tuple(input.shape)}"
            )
        use_batch = self.training or self.running_mean is None or self.running_var is None
        if not use_batch:
            return F.batch_norm(
                input,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                False,
                0.0,
                self.eps,
            )
        out, mean, var = ghost_batch_norm(input, self.ghost_size, self.weight, self.bias, self.eps)
        if self.training and self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(var.to(self.running_var.dtype), factor)
        return out


def to_ghost_batch_norm(model: nn.Module, ghost_size: int) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` of ``model`` (in place) by a :class:`GhostBatchNorm`
    with the same options, parameters and running statistics; returns ``model``.

    ``SyncBatchNorm`` (statistics over processes) and uninitialised lazy BatchNorms are refused:
    convert before ``SyncBatchNorm.convert_sync_batchnorm`` and after a first forward.

    Example:
        >>> from torch import nn
        >>> m = to_ghost_batch_norm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), 8)
        >>> type(m[1]).__name__, m[1].ghost_size
        ('GhostBatchNorm', 8)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
    ghost_size = check_int("ghost_size", ghost_size, minimum=1)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GhostBatchNorm) or not isinstance(child, _BatchNorm):
                continue
            if isinstance(child, nn.SyncBatchNorm):
                raise ValueError(
                    f"{name!r} is a SyncBatchNorm; convert to ghost batch normalisation first"
                )
            if (
                isinstance(child, nn.modules.lazy.LazyModuleMixin)
                and child.has_uninitialized_params()
            ):
                raise ValueError(
                    f"{name!r} is an uninitialised lazy BatchNorm; run a forward first"
                )
            ref = child.weight if child.weight is not None else child.running_mean
            ghost = GhostBatchNorm(
                child.num_features,
                ghost_size,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
                device=ref.device if ref is not None else None,
                dtype=ref.dtype if ref is not None else None,
                bias=child.bias is not None or not child.affine,
            )
            ghost.load_state_dict(child.state_dict())
            ghost.train(child.training)
            setattr(parent, name, ghost)
    return model
