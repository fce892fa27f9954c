"""The ``bayesdrop`` command.

``bayesdrop recsys``      collaborative filtering: Mult-DAE/VAE, SIVAE, EASE (``bayesdrop recsys --help``)

The reproduction suite and the demo are an application beside the library, in the repository's
``reproduce/`` folder (``pip install -e reproduce``), with their own commands
``bayesdrop-reproduce`` and ``bayesdrop-demo``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Sub-commands that live in their own subpackage: name -> module exposing main(argv) -> int.
_DELEGATED = {
    "recsys": ("bayesdrop.recsys.cli", "collaborative filtering: train and evaluate"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bayesdrop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if argv and argv[0] in _DELEGATED:
        module = importlib.import_module(_DELEGATED[argv[0]][0])
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and hasattr(module, "run"):
            module.run(argv[1:])  # a torchrun worker: ends the process itself (see its docstring)
        return int(module.main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
