"""Shared machinery of ``bayesdrop-reproduce``: run settings, results, and the files written.

Every experiment module defines ``NAME``, ``TITLE`` and ``run(cfg: RunConfig) -> Result``. The
runner (``bayesdrop_reproduce.experiments.cli``) times it and writes, per experiment,

* ``<name>.json`` — every number of the :class:`Result`, the settings, the bayesdrop and torch
  versions and the wall time (or, for a failed experiment, its traceback);
* ``<name>.png`` — the experiment's figure, when it has one;

and once for the whole run ``report.md``: one table per experiment putting the paper's figure
beside ours, the paper's data set and the stand-in used here, and the verdict.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RunConfig",
    "Result",
    "Failure",
    "Record",
    "write_json",
    "write_figure",
    "write_report",
    "read_results",
    "provenance",
    "source_commit",
    "to_jsonable",
    "run_experiment",
    "progress",
    "cpu_timer",
    "clock",
    "torch_threads",
    "single_thread",
    "JSON_KEYS",
    "BUDGETS",
    "SETTLE_TOL",
    "SETTLE_FRACTION",
    "MEDIUM_DECAY_FROM",
    "rate_settling",
]

#: Keys every ``<name>.json`` holds (a failed experiment has ``error``/``traceback`` and empty
#: ``metrics``/``table``).
JSON_KEYS = (
    "name",
    "title",
    "status",
    "paper_dataset",
    "stand_in",
    "settings",
    "metrics",
    "table",
    "verdict",
    "figure",
    "wall_time_s",
    "versions",
    "config",
    "rates",
    "run",
)

#: The run settings, cheapest first (``tiny`` is the test suite's smoke setting, not listed).
BUDGETS = ("quick", "medium", "full")
#: Learned rates count as settled (the criterion stated in every report) when, over the last
#: :data:`SETTLE_FRACTION` of training, the mean absolute change of a module's rates
#: (:meth:`bayesdrop.RateTracker.drift`) is below :data:`SETTLE_TOL` for every module.
SETTLE_TOL = 0.01
#: The closing fraction of training over which :data:`SETTLE_TOL` is checked.
SETTLE_FRACTION = 0.25
#: In the ``medium`` budget the experiments that learn rates decay their learning rates linearly
#: to zero over the last half of training (``_training.linear_decay``): with a constant step
#: the rates jitter about their optimum by more than :data:`SETTLE_TOL` and never settle.
MEDIUM_DECAY_FROM = 0.5

_QUICK = object()  # RunConfig.pick: no medium value given, the quick one is used


@dataclass
class RunConfig:
    """How one ``bayesdrop-reproduce`` run is set up.

    Args:
        quick: reduced setting: the whole suite within 15 minutes on 2 CPU cores.
        seed: seed of every generator an experiment creates.
        device: ``"cpu"`` or ``"cuda"``.
        out: output directory.
        tiny: smoke-test setting used by the test suite: each experiment finishes in seconds and
            its numbers mean nothing beyond "the code path runs".
        progress: show tqdm progress bars.
        medium: the middle budget (``--budget medium``): the experiments that learn dropout
            rates train longer, so that their rates settle by the stated criterion
            (:data:`SETTLE_TOL`; each report says whether they did), aimed at about an hour for
            the whole suite on 2 CPU cores; the others run their quick setting.
    """

    quick: bool
    seed: int
    device: str
    out: Path
    tiny: bool = False
    progress: bool = True
    medium: bool = False

    def __post_init__(self) -> None:
        if self.quick and self.medium:
            raise ValueError("RunConfig: quick and medium are two budgets; set at most one")

    @property
    def mode(self) -> str:
        """``"tiny"``, ``"quick"``, ``"medium"`` or ``"full"``."""
        if self.tiny:
            return "tiny"
        return "quick" if self.quick else ("medium" if self.medium else "full")

    def pick(self, full: Any, quick: Any, tiny: Any, medium: Any = _QUICK) -> Any:
        """The value for this run's mode; the medium budget uses ``quick`` unless ``medium`` is
        given (only the experiments whose rates need longer training give it)."""
        if self.tiny:
            return tiny
        if self.quick:
            return quick
        if self.medium:
            return quick if medium is _QUICK else medium
        return full

    @property
    def decay_from(self) -> float | None:
        """Where the learning rates start their linear decay to zero, as a fraction of training
        (:data:`MEDIUM_DECAY_FROM` in the medium budget, also with ``tiny`` so that the tests
        reach it; ``None``, a constant step, otherwise)."""
        return MEDIUM_DECAY_FROM if self.medium else None

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded with ``seed + offset``."""
        return torch.Generator().manual_seed(self.seed + offset)


@dataclass
class Result:
    """What an experiment returns.

    Args:
        name: experiment name (``"toy-gradients"``).
        title: one-line title naming the paper and its table or figure.
        paper_dataset: the data set the paper used.
        stand_in: the data set used here in its place (or ``"same"``).
        settings: sizes, epochs, learning rates... everything needed to rerun it.
        metrics: every number measured (nested dicts/lists of numbers are fine).
        table: rows for the report, e.g. ``{"quantity": ..., "paper": ..., "ours": ...}``.
        verdict: one or two sentences, with numbers, saying whether the claim reproduced.
        figure: a matplotlib figure (written to ``<name>.png``) or ``None``.
        rates: for an experiment that learns dropout rates, whether they settled
            (:func:`rate_settling`); ``None`` when it learns none.
    """

    name: str
    title: str
    paper_dataset: str
    stand_in: str
    settings: dict
    metrics: dict
    table: list[dict]
    verdict: str
    figure: Any = None
    rates: dict | None = None


def rate_settling(
    drift: Any, *, what: str = "", tol: float = SETTLE_TOL, fraction: float = SETTLE_FRACTION
) -> dict[str, Any]:
    """Whether learned rates settled, in the report's words.

    ``drift`` is a :class:`bayesdrop.RateTracker` (its :meth:`~bayesdrop.RateTracker.drift` over
    the last ``fraction`` of the records), a mapping ``name -> drift``, or a sequence of them
    (several runs: all must settle). The rates settled when every drift is below ``tol``.

    Returns ``{"settled", "max_drift", "tol", "fraction", "what"}``.
    """
    from bayesdrop import RateTracker

    items = drift if isinstance(drift, (list, tuple)) else [drift]
    values: list[float] = []
    for item in items:
        if isinstance(item, RateTracker):
            item = item.drift(fraction)
        if isinstance(item, Mapping):
            values += [float(v) for v in item.values()]
        else:
            values.append(float(item))
    if not values:
        raise ValueError("rate_settling needs at least one drift")
    worst = max(values)
    return {
        "settled": bool(worst < tol),
        "max_drift": worst,
        "tol": tol,
        "fraction": fraction,
        "what": what,
    }


def _settled_cell(rates: dict | None) -> str:
    if not rates:
        return "no learned rates"
    word = "yes" if rates["settled"] else "no"
    return f"{word} (drift {rates['max_drift']:.3g})"


@dataclass
class Failure:
    """An experiment that raised: its name, title, message and traceback."""

    name: str
    title: str
    error: str
    traceback: str
    wall_time_s: float = 0.0


@dataclass
class Record:
    """One experiment as the runner saw it: its result (or failure), wall time and files."""

    result: Result | Failure
    wall_time_s: float
    files: dict[str, str] = field(default_factory=dict)
    #: The files of this experiment that could not be written, each as ``"<file>: <error>"``.
    write_errors: list[str] = field(default_factory=list)
    #: When the experiment finished (UTC).
    finished: str = field(default_factory=lambda: _now())

    @property
    def ok(self) -> bool:
        """The experiment ran and every one of its files was written."""
        return isinstance(self.result, Result) and not self.write_errors


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a failed write leaves
    the previous ``path`` (if any) whole and no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_jsonable(value: Any) -> Any:
    """Tensors, numpy values, paths and tuples turned into plain JSON values (NaN/inf as strings)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays and scalars
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _versions() -> dict[str, str]:
    from bayesdrop import __version__

    return {
        "bayesdrop": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


_COMMIT: list[str] = []


def source_commit() -> str:
    """The git commit of the checkout this suite runs from (``"unknown"`` outside a git
    checkout), with ``+changes`` when its tracked files differ from that commit."""
    if not _COMMIT:
        import subprocess

        here = Path(__file__).resolve().parent
        try:
            head = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            _COMMIT.append(head + ("+changes" if dirty else ""))
        except (OSError, subprocess.SubprocessError):
            _COMMIT.append("unknown")
    return _COMMIT[0]


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def write_json(result: Result | Failure, out: Path, cfg: RunConfig, wall_time_s: float) -> Path:
    """Write ``out/<name>.json`` and return its path.

    Besides the result it holds ``config`` (budget, seed, device) and ``run`` (``commit``, from
    :func:`source_commit`, and ``date``), which ``report.md`` shows beside each experiment.
    """
    config = {
        "quick": cfg.quick,
        "tiny": cfg.tiny,
        "budget": cfg.mode,
        "seed": cfg.seed,
        "device": cfg.device,
    }
    if isinstance(result, Failure):
        payload: dict[str, Any] = {
            "name": result.name,
            "title": result.title,
            "status": "failed",
            "paper_dataset": "",
            "stand_in": "",
            "settings": {},
            "metrics": {},
            "table": [],
            "verdict": f"failed: {result.error}",
            "figure": None,
            "error": result.error,
            "traceback": result.traceback,
            "rates": None,
        }
    else:
        payload = {
            "name": result.name,
            "title": result.title,
            "status": "ok",
            "paper_dataset": result.paper_dataset,
            "stand_in": result.stand_in,
            "settings": result.settings,
            "metrics": result.metrics,
            "table": result.table,
            "verdict": result.verdict,
            "figure": f"{result.name}.png" if result.figure is not None else None,
            "rates": result.rates,
        }
    payload["wall_time_s"] = wall_time_s
    payload["versions"] = _versions()
    payload["config"] = config
    payload["run"] = {"commit": source_commit(), "date": _now()}
    path = out / f"{result.name}.json"
    _write_text(path, json.dumps(to_jsonable(payload), indent=2) + "\n")
    return path


def write_figure(result: Result, out: Path, *, draft: bool = False) -> Path | None:
    """Save ``result.figure`` as ``out/<name>.png`` (and close it); ``None`` if there is none.

    ``draft`` (the tiny smoke-test setting) skips the tight bounding box and uses a low
    resolution: the file is written, quickly.
    """
    if result.figure is None:
        return None
    import matplotlib.pyplot as plt

    path = out / f"{result.name}.png"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if draft:
            result.figure.savefig(tmp, dpi=40, format="png")
        else:
            result.figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(result.figure)
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no table)"]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return lines


#: Keys a JSON file in ``--out`` must hold to count as an earlier result of this suite.
_RESULT_KEYS = frozenset({"name", "status", "table", "verdict", "config"})


def read_results(out: Path) -> dict[str, dict[str, Any]]:
    """The results already in ``out`` (``<name>.json`` files written by an earlier run), by
    experiment name. Files that do not parse or are not a result of this suite are left out."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(payload, dict) and _RESULT_KEYS <= set(payload):
            if payload["name"] == path.stem:
                found[path.stem] = payload
    return found


def provenance(payload: Mapping[str, Any]) -> str:
    """``"budget quick, commit 1a2b3c, 2026-01-01 12:00 UTC"`` for a result's JSON payload."""
    config = payload.get("config") or {}
    run = payload.get("run") or {}
    return (
        f"budget {config.get('budget', '?')}, commit {run.get('commit', 'unknown')}, "
        f"{run.get('date', 'date unknown')}"
    )


def _row(
    name: str, status: str, budget: str, settled: str, wall: float, commit: str, date: str
) -> str:
    return (
        f"| [{name}](#{name}) | {status} | {budget} | {settled} | {wall:.1f} | {commit} | {date} |"
    )


def write_report(
    records: Iterable[Record],
    out: Path,
    cfg: RunConfig,
    earlier: Mapping[str, Mapping[str, Any]] | None = None,
    order: Sequence[str] = (),
) -> Path:
    """Write ``out/report.md``: one section per experiment and a summary table.

    ``earlier`` holds the results that were in ``out`` before this run (:func:`read_results`):
    those of experiments this run did not redo stay in the report, each with its own budget,
    commit and date; those it redid are named as replaced. Sections follow ``order`` (the
    registry's run order), then the names' order.
    """
    records = list(records)
    earlier = dict(earlier or {})
    done = {rec.result.name: rec for rec in records}
    kept = {n: p for n, p in earlier.items() if n not in done}
    replaced = {n: p for n, p in earlier.items() if n in done}
    rank = {n: i for i, n in enumerate(order)}
    names = sorted([*done, *kept], key=lambda n: (rank.get(n, len(rank)), n))
    v = _versions()
    commit = source_commit()
    lines = [
        "# bayesdrop-reproduce — report",
        "",
        f"Budget: **{cfg.mode}** (this run), seed {cfg.seed}, device {cfg.device}; "
        f"bayesdrop {v['bayesdrop']}, torch {v['torch']}, commit {commit}.",
        "",
    ]
    if kept:
        lines += [
            f"Kept from earlier runs in this folder (not redone by this run; each row says its own "
            f"budget, commit and date): {', '.join(n for n in names if n in kept)}.",
            "",
        ]
    if replaced:
        lines += [
            "Replaced by this run: "
            + "; ".join(f"{n} (was {provenance(replaced[n])})" for n in names if n in replaced)
            + ".",
            "",
        ]
    lines += [
        f"Learned rates *settled* when, over the last {SETTLE_FRACTION:.0%} of training, the mean "
        f"absolute change of every module's rates (bayesdrop.RateTracker.drift) is below "
        f"{SETTLE_TOL}.",
        "",
        "| experiment | status | budget | rates settled | wall time (s) | commit | date |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        if name in done:
            rec = done[name]
            rates = rec.result.rates if isinstance(rec.result, Result) else None
            settled = _settled_cell(rates) if isinstance(rec.result, Result) else "—"
            lines.append(
                _row(name, _status(rec), cfg.mode, settled, rec.wall_time_s, commit, rec.finished)
            )
        else:
            p = kept[name]
            settled = _settled_cell(p.get("rates")) if p.get("status") == "ok" else "—"
            run = p.get("run") or {}
            lines.append(
                _row(
                    name,
                    f"{p.get('status', '?')} (earlier run)",
                    str((p.get("config") or {}).get("budget", "?")),
                    settled,
                    float(p.get("wall_time_s") or 0.0),
                    str(run.get("commit", "unknown")),
                    str(run.get("date", "unknown")),
                )
            )
    for name in names:
        if name in done:
            lines += _section(done[name], cfg, replaced.get(name))
        else:
            lines += _earlier_section(kept[name], out)
    path = out / "report.md"
    _write_text(path, "\n".join(lines) + "\n")
    return path


def _section(rec: Record, cfg: RunConfig, replaced: Mapping[str, Any] | None) -> list[str]:
    res = rec.result
    lines = ["", f"## {res.name}", "", f"**{res.title}**", ""]
    if replaced is not None:
        lines += [f"Replaces the earlier result ({provenance(replaced)}).", ""]
    for error in rec.write_errors:
        lines += [f"**Not written**: `{error}`", ""]
    if isinstance(res, Failure):
        return lines + [f"**Failed**: `{res.error}` (traceback in `{res.name}.json`).", ""]
    lines += [
        f"- Paper's data set: {res.paper_dataset}",
        f"- Stand-in here: {res.stand_in}",
        f"- Wall time: {rec.wall_time_s:.1f} s",
        f"- Budget: {cfg.mode}",
        f"- Learned rates settled: {_settled_line(res.rates)}",
        "",
    ]
    lines += _markdown_table(res.table)
    lines += ["", f"**Verdict.** {res.verdict}", ""]
    if "figure" in rec.files:
        lines += [f"![{res.name}]({Path(rec.files['figure']).name})", ""]
    return lines


def _earlier_section(p: Mapping[str, Any], out: Path) -> list[str]:
    name = str(p["name"])
    lines = ["", f"## {name}", "", f"**{p.get('title', name)}**", ""]
    lines += [f"From an earlier run ({provenance(p)}).", ""]
    if p.get("status") != "ok":
        return lines + [f"**Failed**: `{p.get('error', p.get('verdict'))}` (in `{name}.json`).", ""]
    budget = (p.get("config") or {}).get("budget", "?")
    lines += [
        f"- Paper's data set: {p.get('paper_dataset', '')}",
        f"- Stand-in here: {p.get('stand_in', '')}",
        f"- Wall time: {float(p.get('wall_time_s') or 0.0):.1f} s",
        f"- Budget: {budget}",
        f"- Learned rates settled: {_settled_line(p.get('rates'))}",
        "",
    ]
    table = p.get("table")
    lines += _markdown_table(table if isinstance(table, list) else [])
    lines += ["", f"**Verdict.** {p.get('verdict', '')}", ""]
    figure = p.get("figure")
    if isinstance(figure, str) and (out / figure).is_file():
        lines += [f"![{name}]({figure})", ""]
    return lines


def _settled_line(rates: dict | None) -> str:
    if not rates:
        return "no learned rates in this experiment"
    what = f" ({rates['what']})" if rates.get("what") else ""
    return (
        f"{'yes' if rates['settled'] else 'no'}{what}: largest drift over the last "
        f"{rates['fraction']:.0%} of training {rates['max_drift']:.3g} "
        f"({'<' if rates['settled'] else '>='} {rates['tol']})"
    )


def _status(rec: Record) -> str:
    if isinstance(rec.result, Failure):
        return "failed"
    return "ok, files not written" if rec.write_errors else "ok"


def run_experiment(name: str, cfg: RunConfig) -> Record:
    """Import and run experiment ``name``, catching any exception into a :class:`Failure`."""
    from . import load

    start = time.perf_counter()
    title = name
    try:
        module = load(name)
        title = getattr(module, "TITLE", name)
        result: Result | Failure = module.run(cfg)
    except Exception as err:  # noqa: BLE001 - reported, the other experiments still run
        result = Failure(
            name=name,
            title=title,
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(),
        )
    wall = time.perf_counter() - start
    record = Record(result, wall)
    # A file that cannot be written is reported (in the record, then report.md and the exit
    # status); it never stops the run: the other experiments still run and write theirs.
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        record.write_errors.append(f"{cfg.out}: {type(err).__name__}: {err}")
        if isinstance(result, Result) and result.figure is not None:
            import matplotlib.pyplot as plt

            plt.close(result.figure)
        return record
    if isinstance(result, Result):
        try:
            fig = write_figure(result, cfg.out, draft=cfg.tiny)
        except Exception as err:  # noqa: BLE001 - reported, the run goes on
            record.write_errors.append(f"{result.name}.png: {type(err).__name__}: {err}")
        else:
            if fig is not None:
                record.files["figure"] = str(fig)
    try:
        record.files["json"] = str(write_json(result, cfg.out, cfg, wall))
    except (OSError, TypeError, ValueError) as err:
        record.write_errors.append(f"{result.name}.json: {type(err).__name__}: {err}")
    return record


def progress(
    iterable: Iterable[Any], cfg: RunConfig, desc: str, total: int | None = None
) -> Iterator[Any]:
    """A tqdm bar over ``iterable`` (silent when ``cfg.progress`` is false)."""
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, disable=not cfg.progress, leave=False)


@contextmanager
def cpu_timer(cfg: RunConfig) -> Iterator[dict[str, float]]:
    """``with cpu_timer(cfg) as t: ...`` then ``t["s"]`` holds the seconds the block took, in a
    clock that does not swing with the machine's load.

    On the CPU the block runs with one torch thread and ``t["s"]`` is the process CPU time
    (:func:`time.process_time`): other jobs on the machine take turns with it but do not add to
    it, and there is no second thread whose waiting would. On CUDA it is the wall time between two
    synchronisations (the GPU's work is not CPU time). :func:`clock` names the clock used.
    """
    t: dict[str, float] = {}
    if cfg.device == "cpu":
        with single_thread(cfg):
            start = time.process_time()
            try:
                yield t
            finally:
                t["s"] = time.process_time() - start
        return
    torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        yield t
    finally:
        torch.cuda.synchronize()
        t["s"] = time.perf_counter() - start


def clock(cfg: RunConfig) -> str:
    """The clock :func:`cpu_timer` uses for ``cfg``, in words (for settings and reports)."""
    if cfg.device == "cpu":
        return "process CPU time, one torch thread"
    return f"wall time between CUDA synchronisations ({cfg.device})"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count.

    The experiments' models are small: a second thread only adds synchronisation, and on a CPU
    shared with other jobs OpenMP's waiting can slow a step 10-25x.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def single_thread(cfg: RunConfig) -> Iterator[None]:
    """One torch thread when ``cfg`` runs on the CPU; the thread count is left alone otherwise."""
    with torch_threads(1 if cfg.device == "cpu" else torch.get_num_threads()):
        yield
