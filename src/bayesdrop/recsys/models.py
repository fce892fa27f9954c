"""Mult-DAE and Mult-VAE (Liang et al. 2018) with a sparse-input first layer.

Both read a user's click vector :math:`x_u`, L2-normalise it, apply input dropout, and encode it
with a tanh MLP (600-200 by default); the decoder mirrors it and ends in a softmax over all items,
trained with the multinomial log-likelihood

.. math::
    \\log p(x_u \\mid z_u) = \\sum_i x_{ui} \\log \\pi_i(z_u), \\qquad \\pi = \\mathrm{softmax}(f(z_u)).

Inputs are ``torch.sparse_csr`` batches (one row per user); the first layer is an
``embedding_bag`` over the clicked items, so it never builds the dense ``(users, items)`` input.
Dense inputs are accepted too (same parameters, same maths), which is what the sparse-versus-dense
benchmark compares. Input dropout acts on the stored values only: zeros stay zero under any mask,
so this is exactly dense inverted dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._validation import check_int, check_positive, check_probability

__all__ = [
    "CSRBatch",
    "SparseInputLinear",
    "stacked_csr",
    "MultDAE",
    "MultVAE",
    "csr_batch",
    "row_ids",
    "normalized_values",
    "multinomial_nll",
    "gaussian_kl",
]


@dataclass(frozen=True)
class CSRBatch:
    """A batch of users' click rows in CSR form (what the models take instead of a dense matrix).

    Attributes:
        crow: row pointers, int64 ``(users + 1,)``.
        col: item index of every stored value, int64 ``(nnz,)``.
        values: the stored values (clicks), float ``(nnz,)``.
        n_items: number of columns.
    """

    crow: Tensor
    col: Tensor
    values: Tensor
    n_items: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.crow.numel()) - 1, self.n_items)

    def dim(self) -> int:
        return 2

    def with_values(self, values: Tensor) -> CSRBatch:
        """The same pattern with other stored values."""
        return CSRBatch(self.crow, self.col, values, self.n_items)

    def to_dense(self) -> Tensor:
        out = self.values.new_zeros(self.shape)
        out[row_ids(self), self.col] = self.values
        return out

    def to(self, device: torch.device | str) -> CSRBatch:
        return CSRBatch(
            self.crow.to(device), self.col.to(device), self.values.to(device), self.n_items
        )


def csr_batch(
    matrix: sp.csr_matrix, rows: np.ndarray | None = None, device: torch.device | str = "cpu"
) -> CSRBatch:
    """Rows of a scipy CSR matrix as a :class:`CSRBatch` (float32; never densified)."""
    m = matrix if rows is None else matrix[rows]
    m = sp.csr_matrix(m, dtype=np.float32)
    return CSRBatch(
        torch.from_numpy(m.indptr.astype(np.int64)).to(device),
        torch.from_numpy(m.indices.astype(np.int64)).to(device),
        torch.from_numpy(m.data.astype(np.float32)).to(device),
        int(m.shape[1]),
    )


def row_ids(x: CSRBatch) -> Tensor:
    """Row index of every stored value of a CSR tensor, shape ``(nnz,)``."""
    crow = x.crow
    counts = crow[1:] - crow[:-1]
    return torch.repeat_interleave(torch.arange(x.shape[0], device=crow.device), counts)


def normalized_values(x: CSRBatch, rows: Tensor | None = None) -> Tensor:
    r"""Stored values of CSR ``x`` divided by their row's L2 norm (rows of zeros stay zero)."""
    rows = row_ids(x) if rows is None else rows
    v = x.values
    sq = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device).index_add_(0, rows, v * v)
    return v / sq.sqrt().clamp_min(1e-12)[rows]


def multinomial_nll(logits: Tensor, x: Tensor | CSRBatch) -> Tensor:
    r"""Per-user multinomial negative log-likelihood :math:`-\sum_i x_i \log\mathrm{softmax}(f)_i`.

    For a CSR ``x`` only the stored clicks are visited: with :math:`n = \sum_i x_i`,

    .. math::
        -\sum_i x_i \log\mathrm{softmax}(f)_i = n\,\mathrm{logsumexp}(f) - \sum_{i:\,x_i\neq0} x_i f_i,
        \qquad
        \frac{\partial}{\partial f_i} = n\,\mathrm{softmax}(f)_i - x_i,

    and the gradient is written in one pass over the logits plus one over the clicks (no dense
    copy of ``x``, no scatter into a zero matrix).

    Args:
        logits: ``(..., users, items)`` decoder outputs.
        x: the click matrix, ``(users, items)``, CSR or dense.

    Returns:
        ``(..., users)``.
    """
    if isinstance(x, CSRBatch):
        if logits.shape[-2:] != x.shape:
            raise ValueError(
                f"logits must end in the click matrix's shape {x.shape}, got {tuple(logits.shape)}"
            )
        values = x.values.to(logits.dtype)
        rows = row_ids(x)
        if values.requires_grad:  # gradients for the clicks too: plain autograd
            logp = F.log_softmax(logits, dim=-1)
            picked = logp[..., rows, x.col] * values
            return -logp.new_zeros(logp.shape[:-1]).index_add_(-1, rows, picked)
        flat = rows * x.n_items + x.col
        return _SparseMultinomialNLL.apply(logits, flat, rows, values)
    return -(F.log_softmax(logits, dim=-1) * x.to(logits.dtype)).sum(-1)


class _SparseMultinomialNLL(torch.autograd.Function):
    """:func:`multinomial_nll` against CSR clicks given as flat indices ``row * items + col``."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, flat: Tensor, rows: Tensor, values: Tensor) -> Tensor:
        lead, (users, items) = logits.shape[:-2], logits.shape[-2:]
        logp = F.log_softmax(logits.reshape(-1, users, items), dim=-1)
        picked = logp.view(logp.shape[0], users * items).index_select(1, flat) * values
        dot = logp.new_zeros(logp.shape[:-1]).index_add_(1, rows, picked)
        total = values.new_zeros(users).index_add_(0, rows, values)  # clicks per user
        ctx.save_for_backward(logp, flat, rows, values, total)
        ctx.lead = lead
        return -dot.view(*lead, users)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        logp, flat, rows, values, total = ctx.saved_tensors
        depth, users, items = logp.shape
        g = grad.reshape(depth, users)
        out = logp.exp().mul_((g * total).unsqueeze(-1))  # n * softmax, scaled by the upstream
        out.view(depth, users * items).index_add_(1, flat, g[:, rows] * values, alpha=-1)
        return out.view(*ctx.lead, users, items), None, None, None


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu, \sigma^2) \| \mathcal N(0, 1))` summed over the last dim.

    .. math:: \tfrac12\sum_d (\sigma_d^2 + \mu_d^2 - 1 - \log\sigma_d^2)
    """
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


class SparseInputLinear(nn.Module):
    """``y = x W + b`` for a CSR or dense ``x``; ``weight`` is stored item-major ``(in, out)``.

    With CSR input it is one ``embedding_bag`` (sum of the rows of ``weight`` of the clicked items,
    weighted by the values); ``values=`` replaces the stored values (noisy or normalised copies).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.out_features = check_int("out_features", out_features)
        bound = math.sqrt(6.0 / (in_features + out_features))  # Glorot, as the reference code
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).normal_(0.0, 0.001))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: Tensor | CSRBatch, values: Tensor | None = None) -> Tensor:
        if isinstance(x, CSRBatch):
            v = x.values if values is None else values
            crow = x.crow
            out = F.embedding_bag(
                x.col,
                self.weight,
                crow,
                mode="sum",
                per_sample_weights=v.to(self.weight.dtype),
                include_last_offset=True,
            )
            return out + self.bias
        if values is not None:
            raise ValueError("values= is only meaningful for a sparse CSR input")
        return torch.addmm(self.bias, x.to(self.weight.dtype), self.weight)


def stacked_csr(x: CSRBatch, copies: int) -> CSRBatch:
    """``copies`` copies of ``x`` stacked row-wise (values to be replaced by the caller)."""
    nnz = x.col.numel()
    parts = [x.crow[:-1] + k * nnz for k in range(copies)] + [x.crow.new_tensor([copies * nnz])]
    return CSRBatch(torch.cat(parts), x.col.repeat(copies), x.values.repeat(copies), x.n_items)


def _linear(d_in: int, d_out: int) -> nn.Linear:
    """Glorot-uniform weights and N(0, 0.001²) biases, as the reference code."""
    lin = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(lin.weight)
    nn.init.normal_(lin.bias, 0.0, 0.001)
    return lin


def _mlp(dims: list[int]) -> nn.ModuleList:
    return nn.ModuleList(_linear(d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:]))


class _MultBase(nn.Module):
    """Shared encoder front (normalise, drop, sparse first layer) and decoder."""

    def __init__(
        self, n_items: int, hidden: int, latent: int, enc_out: int, dropout: float, l2: float
    ):
        super().__init__()
        self.n_items = check_int("n_items", n_items)
        self.hidden = check_int("hidden", hidden)
        self.latent = check_int("latent", latent)
        self.dropout = check_probability("dropout", dropout, low_open=False)
        self.l2 = check_positive("l2", l2, allow_zero=True)
        self.input_layer = SparseInputLinear(n_items, hidden)
        self.encoder_out = _linear(hidden, enc_out)
        self.decoder = _mlp([latent, hidden, n_items])

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, l2={self.l2}"

    def _check_input(self, x: Tensor | CSRBatch) -> Tensor | CSRBatch:
        if not isinstance(x, (Tensor, CSRBatch)):
            raise TypeError(f"x must be a CSRBatch or a dense Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.n_items:
            raise ValueError(f"x must have shape (users, {self.n_items}), got {tuple(x.shape)}")
        return x

    def _first_layer(self, x: Tensor | CSRBatch) -> Tensor:
        """tanh(first layer) of the normalised, dropped input."""
        x = self._check_input(x)
        if isinstance(x, CSRBatch):
            v = normalized_values(x)
            v = F.dropout(v, self.dropout, self.training)
            return torch.tanh(self.input_layer(x, v))
        x = F.normalize(x.to(torch.float32), dim=1)
        x = F.dropout(x, self.dropout, self.training)
        return torch.tanh(self.input_layer(x))

    def decode(self, z: Tensor) -> Tensor:
        """Item logits ``(users, items)`` from codes ``(users, latent)``."""
        h = torch.tanh(self.decoder[0](z))
        return self.decoder[1](h)

    def l2_penalty(self) -> Tensor:
        r""":math:`\lambda\sum\|W\|^2` over weight matrices (Liang's ``2 * l2_regularizer``)."""
        weights: list[Tensor] = [self.input_layer.weight, self.encoder_out.weight]
        weights += [lin.weight for lin in self.decoder if isinstance(lin, nn.Linear)]
        return self.l2 * torch.stack([w.pow(2).sum() for w in weights]).sum()


class MultDAE(_MultBase):
    r"""Mult-DAE: denoising autoencoder with multinomial likelihood (Liang et al. 2018).

    Architecture ``[items -> 600 -> 200 -> 600 -> items]``, tanh between layers, input dropout
    0.5 on the L2-normalised clicks, loss :math:`-\log p(x|f(x))` per user plus
    :math:`\lambda\sum\|W\|^2` (``l2=0.01`` as the reference code).

    Example:
        >>> m = MultDAE(30, hidden=8, latent=4).eval()
        >>> import scipy.sparse as sp
        >>> m(csr_batch(sp.eye(30, format="csr")[:2])).shape
        torch.Size([2, 30])
    """

    def __init__(
        self,
        n_items: int,
        hidden: int = 600,
        latent: int = 200,
        *,
        dropout: float = 0.5,
        l2: float = 0.01,
    ) -> None:
        super().__init__(n_items, hidden, latent, latent, dropout, l2)

    def forward(self, x: Tensor | CSRBatch) -> Tensor:
        h = torch.tanh(self.encoder_out(self._first_layer(x)))
        return self.decode(h)

    def training_loss(self, x: Tensor | CSRBatch, beta: float = 0.0) -> Tensor:
        """Mean over users of the multinomial NLL, plus the L2 penalty (``beta`` unused)."""
        del beta
        loss = multinomial_nll(self(x), x).mean()
        return loss + self.l2_penalty() if self.l2 else loss


class MultVAE(_MultBase):
    r"""Mult-VAE\ :sup:`PR` (Liang et al. 2018): multinomial VAE with an annealed KL weight.

    Encoder ``[items -> 600 -> 2*200]`` (mean and log-variance), decoder
    ``[200 -> 600 -> items]``, tanh, input dropout 0.5. Per user,

    .. math::
        \mathcal L_\beta(x) = -\mathbb E_{q(z|x)}[\log p(x|z)]
                              + \beta\,\mathrm{KL}(q(z|x)\,\|\,\mathcal N(0, I)),

    with one reparameterised sample in training and :math:`z = \mu(x)` in eval.

    Example:
        >>> m = MultVAE(30, hidden=8, latent=4).eval()
        >>> import scipy.sparse as sp
        >>> m(csr_batch(sp.eye(30, format="csr")[:2])).shape
        torch.Size([2, 30])
    """

    def __init__(
        self,
        n_items: int,
        hidden: int = 600,
        latent: int = 200,
        *,
        dropout: float = 0.5,
        l2: float = 0.0,
    ) -> None:
        super().__init__(n_items, hidden, latent, 2 * latent, dropout, l2)

    def encode(self, x: Tensor | CSRBatch) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``(users, latent)`` of :math:`q(z|x)`."""
        out = self.encoder_out(self._first_layer(x))
        return out[:, : self.latent], out[:, self.latent :]

    def forward(self, x: Tensor | CSRBatch) -> Tensor:
        mu, _ = self.encode(x)
        return self.decode(mu)

    def training_loss(
        self, x: Tensor | CSRBatch, beta: float, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Mean over users of :math:`\\mathcal L_\\beta`, plus the L2 penalty."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
        z = mu + torch.exp(0.5 * logvar) * eps
        loss = (multinomial_nll(self.decode(z), x) + beta * gaussian_kl(mu, logvar)).mean()
        return loss + self.l2_penalty() if self.l2 else loss
