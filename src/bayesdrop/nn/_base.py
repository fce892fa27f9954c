"""The base class every bayesdrop dropout module derives from.

It fixes the contract of DESIGN.md: ``p`` is a read-only tensor of drop probabilities, ``kl()``
is a 0-dim sum over the module's own parameters (never scaled by the data-set size), and noise is
sampled when the module is in training mode *or* when MC sampling has been switched on
(``mc_sampling``), so that ``model.eval()`` is deterministic while MC prediction is not.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DropoutModule"]


class DropoutModule(nn.Module):
    """Base class of all bayesdrop dropout modules.

    Subclasses implement :attr:`p` and, when they carry a prior, :meth:`kl`.

    Attributes:
        mc_sampling: when ``True`` the module samples noise even in eval mode (MC prediction).
            It is a plain attribute, never part of ``state_dict``; use
            :func:`bayesdrop.uncertainty.mc_sampling` to switch it for a whole model.
        generator: optional :class:`torch.Generator` used for every random draw of this module
            (not saved in ``state_dict``).
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, but got {type(generator).__name__}"
            )
        self.mc_sampling = False
        self.generator = generator

    @property
    def sampling(self) -> bool:
        """Whether the next forward pass samples noise (training mode or MC sampling on)."""
        return self.training or self.mc_sampling

    @property
    def p(self) -> Tensor:
        """Drop probabilities, one per rate the module has (detached, read-only)."""
        raise NotImplementedError

    #: Names of this module's own parameters that set its dropout rates (learned noise levels).
    #: Families override it when they name theirs differently; :func:`bayesdrop.rate_param_groups`
    #: reads it through :meth:`rate_parameters`.
    rate_parameter_names: tuple[str, ...] = ("logit_p", "log_alpha", "log_sigma2")

    def rate_parameters(self) -> list[nn.Parameter]:
        r"""The parameters of this module (not of the layer it wraps) that set its rates.

        ``logit_p`` (LBD, Concrete), ``log_alpha`` (variational, SIVAE's Gaussian rates) and
        ``log_sigma2`` (sparse variational and ARD, whose rate is :math:`\alpha = \sigma^2/\theta^2`).
        """
        own = dict(self.named_parameters(recurse=False))
        return [own[n] for n in self.rate_parameter_names if n in own]

    def kl(self) -> Tensor:
        """KL divergence (or negative log prior) of this module's parameters, a 0-dim tensor."""
        ref = next(self.parameters(), None)
        if ref is None:
            return torch.zeros(())
        return ref.new_zeros(())
