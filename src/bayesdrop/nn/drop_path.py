r"""Drop-path (stochastic depth) whose drop rate is learned, one rate per residual block.

Stochastic depth (Huang, Sun, Liu, Sedra & Weinberger 2016, "Deep Networks with Stochastic
Depth"; as drop-path in Larsson, Maire & Shakhnarovich 2017, "FractalNet") drops the whole
residual branch of one example: :math:`y = x + f(x)\,z/(1-p)` with one
:math:`z \sim \mathrm{Ber}(1-p)` per example, broadcast over every other dimension. That is
exactly the bare form of a dropout family with **one unit** applied to a ``(N, 1)`` tensor of
ones (the bare form returns its input times the noise, inverted-dropout scale included) and
broadcast over the branch's other dimensions, so :class:`DropPath` adds no new estimator: it
holds a bare family module and the family's own machinery does the rest.

* :class:`~bayesdrop.nn.LearnableBernoulliDropout` gives exact Bernoulli masks, one per example,
  and :func:`bayesdrop.objective` finds the inner module like any other LBD module, runs the batch
  as an antithetic pair and adds the ARM/DisARM surrogate; example :math:`i`'s loss depends only
  on its own masks, so the per-example form of the estimator stays unbiased.
* :class:`~bayesdrop.nn.ConcreteDropout` gives relaxed masks, rates learned pathwise.
* :class:`~bayesdrop.nn.MCDropout` gives the fixed-rate drop-path that keeps sampling under
  :func:`bayesdrop.mc_predict`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._base import DropoutModule

__all__ = ["DropPath"]


class DropPath(nn.Module):
    r"""Drop the whole input of each example, with the noise of a one-unit bare family module.

    .. math::
        y_i = x_i \cdot \frac{z_i}{1 - p},\qquad z_i \sim \mathrm{Ber}(1 - p)\ \text{(LBD)},

    one noise value per example (the first dimension), broadcast over the others; for a
    relaxed or Gaussian family :math:`z_i/(1-p)` is that family's noise. In eval mode (and with MC
    sampling off) it is the identity. Put it on the residual branch: ``x + drop_path(f(x))``.

    The prior is the inner module's: its bare form has no weights to regularise, so only the
    rate term remains, :math:`\mathrm{kl} = -H(1-p)` for LBD and
    :math:`-\lambda_d H(p)` for Concrete (``K = 1`` unit); there is no weight term. With
    :func:`bayesdrop.objective` it is divided by the data-set size, as for every module.

    Args:
        dropout: a bare bayesdrop dropout module with one unit, e.g.
            ``LearnableBernoulliDropout(num_features=1, init_p=0.1)``,
            ``ConcreteDropout(num_features=1, init_p=0.1)`` or ``MCDropout(0.1)``.

    Shape:
        ``(N, *)`` in and out.

    Example:
        >>> import torch
        >>> from bayesdrop.nn import LearnableBernoulliDropout
        >>> drop_path = DropPath(LearnableBernoulliDropout(num_features=1, init_p=0.2))
        >>> drop_path.p
        tensor([0.2000])
        >>> x = torch.ones(4, 3, 5)
        >>> torch.equal(drop_path.eval()(x), x)
        True
        >>> y = drop_path.train()(x)  # each example: all kept (times 1/0.8) or all dropped
        >>> all(row.unique().tolist() in ([0.0], [1.25]) for row in y)
        True
    """

    def __init__(self, dropout: DropoutModule) -> None:
        super().__init__()
        if not isinstance(dropout, DropoutModule):
            raise TypeError(
                "dropout must be a bayesdrop dropout module (e.g. "
                "LearnableBernoulliDropout(num_features=1)), but got "
                f"{type(dropout).__name__}"
            )
        layer = getattr(dropout, "layer", None)
        if layer is not None:
            raise ValueError(
                "dropout must be in the bare form (no wrapped layer): drop-path drops a whole "
                f"residual branch, but got {type(dropout).__name__} wrapping {type(layer).__name__}"
            )
        units = getattr(dropout, "units", 1)
        if units != 1:
            raise ValueError(
                f"dropout must have one unit (num_features=1: one rate per block), but it has "
                f"{units}"
            )
        self.dropout = dropout

    @property
    def p(self) -> Tensor:
        """The block's drop probability (the inner module's, detached), shape ``(1,)``."""
        return self.dropout.p

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 0:
            raise ValueError("drop-path needs a batched (N, *) input, but got a 0-dim tensor")
        if not self.dropout.sampling:
            return x
        n = x.shape[0]
        noise = self.dropout(x.new_ones((n, 1)))
        return x * noise.reshape((n,) + (1,) * (x.dim() - 1))
