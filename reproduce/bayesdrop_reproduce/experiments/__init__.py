"""Reproductions of the papers' key results, run by ``bayesdrop-reproduce``.

Each experiment lives in its own module ``bayesdrop_reproduce.experiments.<name with - replaced by _>``
defining ``NAME``, ``TITLE`` and ``run(cfg: RunConfig) -> Result``
(see :mod:`bayesdrop_reproduce.experiments._framework`).

Example:
    >>> from bayesdrop_reproduce.experiments import ALL, load
    >>> all(load(name).NAME == name for name in ALL)
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._framework import Result, RunConfig

__all__ = ["ALL", "HEADLINE", "FURTHER", "load", "Result", "RunConfig"]

#: The papers' headline results, in run order.
HEADLINE: tuple[str, ...] = (
    "toy-gradients",
    "estimator-variance",
    "lrt-speed",
    "classification-uncertainty",
    "sparsity",
    "fast-dropout",
    "concrete-rates",
    "recsys",
)

#: The papers' further experiments, in run order.
FURTHER: tuple[str, ...] = (
    "uci-regression",
    "uci-benchmark",
    "sentiment-lstm",
    "segmentation",
    "control-dynamics",
    "fast-dropout-network",
    "sivae-rates",
    "ood-detection",
)

#: Every registered experiment, in run order.
ALL: tuple[str, ...] = HEADLINE + FURTHER


def load(name: str) -> ModuleType:
    """The module of experiment ``name`` (``"toy-gradients"`` → ``...experiments.toy_gradients``).

    Raises:
        ValueError: ``name`` is not a registered experiment (the message lists the valid ones).
    """
    if name not in ALL:
        valid = ", ".join(ALL) or "(none registered)"
        raise ValueError(f"unknown experiment {name!r}; valid experiments: {valid}")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
