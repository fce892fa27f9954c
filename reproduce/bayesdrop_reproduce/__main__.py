"""``python -m bayesdrop_reproduce``: the same as ``bayesdrop-reproduce``."""

from .experiments.cli import main

raise SystemExit(main())
