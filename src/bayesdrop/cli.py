"""The ``bayesdrop`` command.

``bayesdrop recsys``      collaborative filtering: Mult-DAE/VAE, SIVAE, EASE (``bayesdrop recsys --help``)

The reproduction suite and the demo are an application beside the library, in the repository's
``reproduce/`` folder (``pip install -e reproduce``), with their own commands
``bayesdrop-reproduce`` and ``bayesdrop-demo``. ``bayesdrop reproduce`` and ``bayesdrop demo``
still run them when that application is installed (deprecated: they will be removed in a later
release), and otherwise say where they are.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Sub-commands that live in their own subpackage: name -> module exposing main(argv) -> int.
_DELEGATED = {
    "recsys": ("bayesdrop.recsys.cli", "collaborative filtering: train and evaluate"),
}

# Sub-commands that moved to the reproduction application: name -> (module, new command, help).
_MOVED = {
    "reproduce": (
        "bayesdrop_reproduce.experiments.cli",
        "bayesdrop-reproduce",
        "moved: regenerate the papers' key results (now bayesdrop-reproduce)",
    ),
    "demo": (
        "bayesdrop_reproduce.demo",
        "bayesdrop-demo",
        "moved: nn.Dropout vs LBD on digits (now bayesdrop-demo)",
    ),
}


def _moved(name: str, argv: list[str]) -> int:
    module_name, command, _ = _MOVED[name]
    if importlib.util.find_spec("bayesdrop_reproduce") is None:
        print(
            f"bayesdrop {name}: the reproduction suite is not part of the bayesdrop package; it is "
            f"the application in the repository's reproduce/ folder. From a checkout: "
            f"'pip install -e reproduce', then run '{command}' (or 'make reproduce').",
            file=sys.stderr,
        )
        return 2
    print(
        f"note: 'bayesdrop {name}' is deprecated and will be removed; use '{command}'.",
        file=sys.stderr,
    )
    module = importlib.import_module(module_name)
    return int(module.main(argv) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bayesdrop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (_, _, help_text) in _MOVED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if argv and argv[0] in _DELEGATED:
        module = importlib.import_module(_DELEGATED[argv[0]][0])
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and hasattr(module, "run"):
            module.run(argv[1:])  # a torchrun worker: ends the process itself (see its docstring)
        return int(module.main(argv[1:]) or 0)
    if argv and argv[0] in _MOVED:
        return _moved(argv[0], argv[1:])
    args = parser.parse_args(argv)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
