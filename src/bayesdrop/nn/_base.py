"""The base class every bayesdrop dropout module derives from.

It fixes the library's module contract: ``p`` is a read-only tensor of drop probabilities, ``kl()``
is a 0-dim sum over the module's own parameters (never scaled by the data-set size), and noise is
sampled when the module is in training mode *or* when MC sampling has been switched on
(``mc_sampling``), so that ``model.eval()`` is deterministic while MC prediction is not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .._validation import check_input_dtype
from .wrapped_layers import drop_packed

__all__ = ["DropoutModule"]


class DropoutModule(nn.Module):
    """Base class of all bayesdrop dropout modules.

    Subclasses implement :attr:`p` and, when they carry a prior, :meth:`kl`.

    Attributes:
        mc_sampling: when ``True`` the module samples noise even in eval mode (MC prediction).
            It is a plain attribute, never part of ``state_dict``; use
            :func:`bayesdrop.mc_sampling` to switch it for a whole model.
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

    # ------------------------------------------------------------------ input checks
    def _input_dtype(self) -> torch.dtype | None:
        """The dtype the input must have: that of the wrapped layer's floating parameters
        (``None``, any real floating dtype, for a module without a layer)."""
        layer: nn.Module | None = getattr(self, "layer", None)
        if layer is not None:
            for prm in layer.parameters():
                if prm.is_floating_point():
                    return prm.dtype
        return None

    def _check_input(self, x: Any) -> None:
        """Refuse, before any work, an input that is not a real floating tensor of
        :meth:`_input_dtype` (any floating dtype under :func:`torch.autocast`), naming the dtype
        expected. Every ``forward`` calls it first."""
        data = x.data if isinstance(x, PackedSequence) else x
        check_input_dtype(data, self._input_dtype(), owner=type(self).__name__)

    # ------------------------------------------------------------------ the wrapper form
    def __getattr__(self, name: str) -> Any:
        """Parameters, buffers and submodules; then, in the wrapper form, the wrapped layer's.

        A wrapper stands where its layer stood, so code written for the layer keeps working on
        it: ``wrapper.weight``, ``wrapper.bias``, ``wrapper.in_features``,
        ``wrapper.kernel_size``, ``wrapper.weight.dtype``, ... are read from ``wrapper.layer``
        (the same objects, not copies). Only reads are forwarded, and only names the wrapper
        does not have itself; ``state_dict`` keys are unchanged (the layer's stay under
        ``layer.``).
        """
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            layer = modules.get("layer") if modules is not None else None
            if layer is None or name.startswith("__"):
                raise
            try:
                return getattr(layer, name)
            except AttributeError:
                raise AttributeError(
                    f"'{type(self).__name__}' object (wrapping {type(layer).__name__}) has no "
                    f"attribute '{name}'"
                ) from None

    def _drop(self, x: Tensor) -> Tensor:
        """Sample the input noise of the wrapper/bare form: ``x`` times a fresh mask.

        ``x`` is shaped as the wrapped layer's input (the bare form: ``(*, num_features)``).
        Families that drop inputs implement it; :meth:`_forward_wrapped` calls it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not drop its inputs")

    def _forward_wrapped(self, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The forward of every wrapper family: ``layer(drop(x), *args, **kwargs)``.

        When sampling, ``x`` is dropped with :meth:`_drop`; in eval mode it is passed unchanged.
        The wrapped layer receives the other arguments as it would without the wrapper (an
        ``nn.LSTM/GRU/RNN`` its initial state ``h0`` or ``(h0, c0)``) and returns what it returns.
        A :class:`~torch.nn.utils.rnn.PackedSequence` input of a wrapped RNN is dropped with one
        mask per sequence and feature, shared over time, as a padded batch would be
        (:func:`~bayesdrop.nn.wrapped_layers.drop_packed`). The bare form (no layer) takes a
        single tensor.
        """
        self._check_input(x)
        layer: nn.Module | None = getattr(self, "layer", None)
        if layer is None:
            if args or kwargs:
                raise TypeError("the bare form takes a single input tensor; extra arguments given")
            return self._drop(x) if self.sampling else x
        if isinstance(x, PackedSequence):
            if not isinstance(layer, nn.RNNBase):
                raise TypeError(
                    f"a PackedSequence input needs a wrapped nn.LSTM/GRU/RNN, but the wrapped "
                    f"layer is {type(layer).__name__}"
                )
            if self.sampling:
                x = drop_packed(x, layer, self._drop)
        elif self.sampling:
            x = self._drop(x)
        return layer(x, *args, **kwargs)
