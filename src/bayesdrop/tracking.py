"""Watching learned rates move: :class:`RateTracker` records every module's drop rates over training.

A learned rate is only learned once it has stopped moving. The tracker keeps, at the steps it is
told about, a float32 copy of each dropout module's drop probabilities ``p`` (read through
:func:`bayesdrop.dropout_rates`, which detaches them), so it costs one small copy per record and
never touches the gradients or the random streams. :meth:`RateTracker.drift` and
:meth:`RateTracker.settled` state whether the rates settled by an explicit criterion, and
:func:`bayesdrop.plots.rate_trajectories` draws them.

Settling criterion (used by the reproduction suite's reports): over the last ``fraction`` of the
recorded steps (a quarter by default), the **drift** of a module is the mean over its rates of the
absolute change

.. math::
    d = \\frac1K\\sum_{k=1}^K \\bigl|p_k(t_{\\text{end}}) - p_k(t_{\\text{start}})\\bigr|,

where :math:`t_{\\text{start}}` is the first record in that window; the rates have settled when
:math:`d` is below ``tol`` (0.01 by default: one percentage point of drop probability) for every
module. The mean over rates (rather than the largest change) keeps the criterion meaningful for
per-weight families, whose individual rates keep fluctuating with the minibatch noise.

A small drift means settled only when the window is long: over 10 steps rates hardly move
whatever they will do next. :meth:`RateTracker.settled` therefore answers ``None`` (cannot
tell) when the recorded run spans fewer than ``min_steps`` steps (100 by default, so the default
window spans at least 25 steps) while the drift is below ``tol``, and also when the model has no
learned rates at all (fixed ``nn.Dropout`` or :class:`~bayesdrop.nn.MCDropout` rates do not
settle: they never move). A drift at or above ``tol`` is ``False`` however short the run.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ._validation import check_int, check_positive
from .nn._base import DropoutModule
from .objectives import dropout_rates

__all__ = ["RateTracker"]


class RateTracker:
    """Records the drop rates of every dropout module of ``model`` over training.

    Args:
        model: the model whose rates to record (``nn.Dropout*`` layers included, as fixed rates).
        every: record at every ``every``-th call of :meth:`step` (the first call always records).
        max_rates: modules with more rates than this (per-weight families) are recorded on a fixed
            random subset of ``max_rates`` of their rates (seeded by ``seed``), so that a record
            stays small; the drift is then estimated on that subset.
        seed: seed of the subsets.

    Attributes:
        steps: the step numbers at which rates were recorded.
        learned: names of the recorded modules whose rates are learned (they have rate
            parameters); fixed-rate modules are recorded too but cannot settle.
        history: ``{module name: (len(steps), K) float32 tensor}`` of recorded rates (built on
            access from the records).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesdrop.nn import LearnableBernoulliDropout
        >>> model = nn.Sequential(LearnableBernoulliDropout(nn.Linear(3, 2), init_p=0.2))
        >>> tracker = RateTracker(model)
        >>> for step in range(4):
        ...     with torch.no_grad():
        ...         model[0].logit_p -= 0.1 * step  # stands in for an optimiser step
        ...     tracker.step()
        >>> tracker.steps
        [0, 1, 2, 3]
        >>> tracker.history["0"].shape
        torch.Size([4, 3])
        >>> tracker.settled(tol=0.01)  # moved by more than tol: not settled, however short
        False
        >>> tracker.settled(tol=0.5) is None  # small drift, but 3 steps are too few to tell
        True
    """

    def __init__(
        self, model: nn.Module, *, every: int = 1, max_rates: int = 4096, seed: int = 0
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
        self.model = model
        self.every = check_int("every", every)
        self.max_rates = check_int("max_rates", max_rates)
        self.seed = check_int("seed", seed, minimum=0)
        self.steps: list[int] = []
        self._records: dict[str, list[Tensor]] = {}
        self._subsets: dict[str, Tensor | None] = {}
        self._calls = 0
        self.learned: list[str] = []

    def step(self) -> None:
        """Count one training step, and record the rates if it is a recording step."""
        if self._calls % self.every == 0:
            self.record(self._calls)
        self._calls += 1

    def record(self, step: int) -> None:
        """Record the current rates under the step number ``step`` (steps must increase)."""
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, but got {type(step).__name__}")
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"step must increase: got {step} after {self.steps[-1]}")
        rates = dropout_rates(self.model)
        if self._records and set(rates) != set(self._records):
            raise ValueError(
                "the model's dropout modules changed since the first record: "
                f"{sorted(self._records)} then {sorted(rates)}"
            )
        if not self._records:
            modules = dict(self.model.named_modules())
            self.learned = [
                n
                for n in rates
                if isinstance(modules.get(n), DropoutModule)
                and any(prm.requires_grad for prm in modules[n].rate_parameters())
            ]
        for name, p in rates.items():
            flat = p.detach().reshape(-1)
            if name not in self._subsets:
                self._subsets[name] = self._subset(flat.numel())
                self._records[name] = []
            idx = self._subsets[name]
            if idx is not None:
                flat = flat[idx.to(flat.device)]
            self._records[name].append(flat.to("cpu", torch.float32, copy=True))
        self.steps.append(step)

    def _subset(self, n: int) -> Tensor | None:
        if n <= self.max_rates:
            return None
        g = torch.Generator().manual_seed(self.seed + n)
        return torch.randperm(n, generator=g)[: self.max_rates].sort().values

    @property
    def history(self) -> dict[str, Tensor]:
        return {name: torch.stack(rec) for name, rec in self._records.items()}

    def drift(self, fraction: float = 0.25) -> dict[str, float]:
        """Mean absolute change of each module's rates over the last ``fraction`` of the records.

        Raises:
            ValueError: with fewer than two records, or ``fraction`` outside ``(0, 1]``.
        """
        fraction = check_positive("fraction", fraction)
        if fraction > 1.0:
            raise ValueError(f"fraction must be in (0, 1], but got {fraction}")
        n = len(self.steps)
        if n < 2:
            raise ValueError(f"drift needs at least two records, but {n} were made")
        start = min(n - 2, int(n * (1.0 - fraction)))
        return {
            name: float((rec[-1] - rec[start]).abs().mean()) if rec[-1].numel() else 0.0
            for name, rec in self._records.items()
        }

    def settled(
        self, tol: float = 0.01, fraction: float = 0.25, min_steps: int = 100
    ) -> bool | None:
        """Whether the learned rates settled: ``True``, ``False``, or ``None`` (cannot tell).

        Args:
            tol: largest :meth:`drift` (mean absolute change of drop probability) of a settled
                module over the last ``fraction`` of the records.
            fraction: the window, as a fraction of the records.
            min_steps: shortest recorded run (``steps[-1] - steps[0]``) over which a drift below
                ``tol`` counts as settled.

        Returns:
            ``False`` when some learned module drifted by ``tol`` or more; ``None`` when the
            model has no learned rates, fewer than two records were made, or the run spans
            fewer than ``min_steps`` steps (too short a run to tell); ``True`` otherwise. Note
            that ``None`` is falsy: ``if tracker.settled():`` reads "settled, and known to be".
        """
        tol = check_positive("tol", tol)
        min_steps = check_int("min_steps", min_steps)
        if not self.learned or len(self.steps) < 2:
            return None
        drift = self.drift(fraction)
        if any(drift[name] >= tol for name in self.learned):
            return False
        if self.steps[-1] - self.steps[0] < min_steps:
            return None
        return True

    def final(self) -> dict[str, Tensor]:
        """The last recorded rates of each module (of the recorded subset, for large modules)."""
        if not self.steps:
            raise ValueError("no rates were recorded yet: call step() or record() first")
        return {name: rec[-1].clone() for name, rec in self._records.items()}

    def names(self) -> Iterable[str]:
        """Names of the recorded modules, in model order."""
        return list(self._records)

    def __repr__(self) -> str:
        return (
            f"RateTracker(modules={len(self._records)}, records={len(self.steps)}, "
            f"every={self.every})"
        )
