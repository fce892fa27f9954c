"""The ``bayesdrop`` command.

``bayesdrop demo``        train a small MLP with nn.Dropout and LBD (ARM, DisARM) on scikit-learn digits
``bayesdrop reproduce``   regenerate the papers' key results (see ``bayesdrop reproduce --help``)
``bayesdrop recsys``      collaborative filtering: Mult-DAE/VAE, SIVAE, EASE (``bayesdrop recsys --help``)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Sub-commands that live in their own subpackage: name -> module exposing main(argv) -> int.
_DELEGATED = {
    "reproduce": ("bayesdrop.experiments.cli", "regenerate the papers' key results"),
    "recsys": ("bayesdrop.recsys.cli", "collaborative filtering: train and evaluate"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bayesdrop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="nn.Dropout vs LBD (ARM, DisARM) on scikit-learn digits")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default 40)")
    demo.add_argument("--seed", type=int, default=0)
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if argv and argv[0] in _DELEGATED:
        module = importlib.import_module(_DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(epochs=args.epochs, seed=args.seed)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
