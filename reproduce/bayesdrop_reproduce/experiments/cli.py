"""``bayesdrop-reproduce [EXPERIMENT ...] [--quick] [--out DIR] [--seed N] [--device cpu|cuda]``.

Runs the named experiments (all by default) with progress bars and writes, in ``--out``, one
``<name>.json`` and ``<name>.png`` per experiment and a ``report.md`` putting the papers' figures
beside ours. A failing experiment is reported (its traceback goes into its JSON file), the others
still run, and the command exits non-zero at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import ALL
from ._framework import Failure, RunConfig, run_experiment, write_report

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bayesdrop-reproduce``."""
    parser = argparse.ArgumentParser(
        prog="bayesdrop-reproduce",
        description="Regenerate the papers' key results at reduced scale; write JSON, PNG and "
        "report.md.",
        epilog="experiments: " + (", ".join(ALL) or "(none registered)"),
    )
    parser.add_argument(
        "experiments", nargs="*", metavar="EXPERIMENT", help="experiments to run (default: all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="reduced setting: whole suite within ~15 min on 2 CPUs"
    )
    parser.add_argument("--out", type=Path, default=Path("reproduce-out"), help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of every generator (default 0)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device (default: cuda when available, else cpu)",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 when every experiment ran)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    names = list(dict.fromkeys(args.experiments)) or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        parser.error(
            f"unknown experiment(s) {', '.join(unknown)}; valid experiments: "
            + (", ".join(ALL) or "(none registered)")
        )
    if not names:
        parser.error("no experiments are registered")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu)")
    cfg = RunConfig(
        quick=args.quick,
        seed=args.seed,
        device=device,
        out=args.out,
        tiny=args.tiny,
        progress=not args.no_progress,
    )
    cfg.out.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(names, desc="reproduce", disable=not cfg.progress)
    for name in bar:
        bar.set_postfix_str(name)
        records.append(run_experiment(name, cfg))
        rec = records[-1]
        status = "FAILED" if isinstance(rec.result, Failure) else "ok"
        tqdm.write(f"{name}: {status} in {rec.wall_time_s:.1f} s")
        report = write_report(records, cfg.out, cfg)  # rewritten after each: partial runs report
    failed = [r.result.name for r in records if isinstance(r.result, Failure)]
    print(f"report: {report}")
    if failed:
        for rec in records:
            if isinstance(rec.result, Failure):
                print(f"{rec.result.name} failed: {rec.result.error}", file=sys.stderr)
        print(
            f"{len(failed)} of {len(records)} experiment(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
