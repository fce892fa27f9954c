"""``bayesdrop-reproduce [EXPERIMENT ...] [--quick | --budget quick|medium|full] [--out DIR] ...``.

Runs the named experiments (all by default) with progress bars and writes, in ``--out``, one
``<name>.json`` and ``<name>.png`` per experiment and a ``report.md`` putting the papers' figures
beside ours. A failing experiment, or one whose files cannot be written, is reported (a traceback
goes into the experiment's JSON file, a failed write into ``report.md``), the others still run,
and the command exits with status 1 at the end. ``--budget`` chooses the setting: ``quick`` (the
same as ``--quick``: the whole suite within 15 minutes on 2 CPU cores), ``medium`` (longer
training for the experiments that learn dropout rates, so that their rates settle; aimed at about
an hour for the suite on 2 CPU cores; ``report.md`` says per experiment whether they did) or
``full`` (the papers' budgets; the default). A usage error (an ``--out`` that is a file or
not writable, an unknown experiment, a seed out of range, ``--device cuda`` without CUDA) exits
with status 2 before any work starts. Results already in ``--out`` from earlier runs are kept:
``report.md`` lists every experiment with a result there, each with its budget, commit and date,
and says which earlier results this run replaced (also said on stderr when the run starts).
Ctrl-C ends the run with status 130 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import ALL
from ._framework import (
    BUDGETS,
    Failure,
    RunConfig,
    provenance,
    read_results,
    run_experiment,
    write_report,
)

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
        "--quick",
        action="store_true",
        help="reduced setting: whole suite within ~15 min on 2 CPUs (= --budget quick)",
    )
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        default=None,
        help="quick (= --quick), medium (longer training for the experiments whose learned "
        "rates had not settled at quick; aimed at ~1 h on 2 CPUs) or full (the papers' "
        "budgets; default)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reproduce-out"),
        help="output directory, created if missing (default reproduce-out)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"seed of every generator, in [0, {2**31 - 1}] (default 0)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device (default: cuda when available, else cpu)",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


#: Seeds are offset per experiment and replicate (by up to a few million) and handed to torch and
#: numpy generators: this range keeps every derived seed valid for both.
SEED_RANGE = (0, 2**31 - 1)


def _check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Create ``--out`` and check that files can be written there, or exit 2 naming ``--out``."""
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: exists and is not a directory (give a directory)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"--out {out}: cannot create the directory ({err.strerror or err})")
    probe = out / f".bayesdrop-reproduce-write-test-{os.getpid()}"
    try:
        probe.write_text("")
    except OSError as err:
        parser.error(f"--out {out}: cannot write files there ({err.strerror or err})")
    finally:
        probe.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 when every experiment ran and wrote its files,
    1 when one failed or could not write a file (the others still ran), 2 for a usage error,
    130 when interrupted (Ctrl-C: one line on stderr, no traceback; ``report.md`` keeps every
    experiment that had finished)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(
            "bayesdrop-reproduce: interrupted (report.md keeps the experiments that finished)",
            file=sys.stderr,
        )
        return 130


def _main(argv: Sequence[str] | None) -> int:
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
    lo, hi = SEED_RANGE
    if not lo <= args.seed <= hi:
        parser.error(f"--seed must be an integer in [{lo}, {hi}], but got {args.seed}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu)")
    if args.quick and args.budget not in (None, "quick"):
        parser.error(f"--quick and --budget {args.budget} ask for two budgets; give one")
    budget = "quick" if args.quick else (args.budget or "full")
    _check_out(parser, args.out)
    cfg = RunConfig(
        quick=budget == "quick",
        medium=budget == "medium",
        seed=args.seed,
        device=device,
        out=args.out,
        tiny=args.tiny,
        progress=not args.no_progress,
    )
    # Results of earlier runs in --out stay in report.md; those this run redoes are replaced.
    earlier = read_results(args.out)
    replaced = [n for n in names if n in earlier]
    kept = [n for n in earlier if n not in names]
    if replaced:
        print(
            f"bayesdrop-reproduce: replacing earlier results in {args.out}: "
            + "; ".join(f"{n} ({provenance(earlier[n])})" for n in replaced),
            file=sys.stderr,
        )
    if kept:
        print(
            f"bayesdrop-reproduce: keeping in report.md the earlier results of {', '.join(kept)}",
            file=sys.stderr,
        )
    records = []
    report: Path | None = None
    report_error = None
    bar = tqdm(names, desc="reproduce", disable=not cfg.progress)
    for name in bar:
        bar.set_postfix_str(name)
        rec = run_experiment(name, cfg)
        records.append(rec)
        status = "FAILED" if isinstance(rec.result, Failure) else "ok"
        if rec.write_errors:
            status += ", files not written"
        tqdm.write(f"{name}: {status} in {rec.wall_time_s:.1f} s")
        try:  # rewritten after each experiment: an interrupted run still has its report
            report = write_report(records, cfg.out, cfg, earlier=earlier, order=ALL)
            report_error = None
        except OSError as err:
            report_error = f"{cfg.out / 'report.md'}: {type(err).__name__}: {err}"
    if report is not None and report_error is None:
        print(f"report: {report}")
    for rec in records:
        if isinstance(rec.result, Failure):
            print(f"{rec.result.name} failed: {rec.result.error}", file=sys.stderr)
        for error in rec.write_errors:
            print(f"{rec.result.name}: not written: {error}", file=sys.stderr)
    if report_error is not None:
        print(f"report not written: {report_error}", file=sys.stderr)
    bad = [r.result.name for r in records if not r.ok]
    if bad or report_error is not None:
        if bad:
            print(
                f"{len(bad)} of {len(records)} experiment(s) failed or could not write their "
                f"files: {', '.join(bad)}",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
