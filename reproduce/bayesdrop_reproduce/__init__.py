"""bayesdrop_reproduce: the papers' key results regenerated with the bayesdrop library.

An application, not part of the ``bayesdrop`` wheel: the experiments
(:mod:`bayesdrop_reproduce.experiments`), the data sets they read
(:mod:`bayesdrop_reproduce.datasets`) and a short demo (:mod:`bayesdrop_reproduce.demo`).
Commands: ``bayesdrop-reproduce`` (also ``python -m bayesdrop_reproduce``) and
``bayesdrop-demo``.
"""

__version__ = "0.2.0.dev0"

__all__ = ["__version__"]
