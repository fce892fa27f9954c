"""Figures for uncertainty and learned rates (needs the optional extra ``bayesdrop[plot]``).

matplotlib is imported only when a function here is called. Figures are built with the
object-oriented API (``matplotlib.figure.Figure``), so no GUI backend and no global pyplot state
are involved; each function returns the ``Figure`` and, given ``path``, writes it in the format
its extension names (one of :data:`FORMATS`). The path is checked before anything is drawn: an
unknown extension, a missing or unwritable folder and a folder given as the file are refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .metrics.classification import CalibrationBins, PAvPUCurve, calibration_bins
from .metrics.ood import check_scores, fpr_at_tpr, ood_auroc

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FORMATS",
    "reliability_diagram",
    "pavpu_plot",
    "ood_histogram",
    "dropout_rate_plot",
    "rate_trajectories",
]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "bayesdrop.plots needs matplotlib; install it with: pip install 'bayesdrop[plot]'"
        ) from err
    return Figure(figsize=figsize, layout="constrained")


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = _new_figure(figsize)
    return fig, fig.add_subplot()


#: File formats a figure can be written in, chosen by the extension of ``path``.
FORMATS = ("png", "pdf", "svg", "eps", "ps")


def _check_path(path: str | os.PathLike[str] | None) -> None:
    """Refuse, before anything is drawn, a ``path`` the figure could not be written to."""
    if path is None:
        return
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, but got {type(path).__name__}")
    p = os.fspath(path)
    if not isinstance(p, str) or not p:
        raise ValueError(f"path must be a non-empty file path, but got {path!r}")
    ext = os.path.splitext(p)[1].lower().lstrip(".")
    if ext not in FORMATS:
        got = f"extension {'.' + ext!r}" if ext else "no extension"
        raise ValueError(
            f"path {p} has {got}; the figure is written in the format its extension names, one "
            f"of {', '.join('.' + f for f in FORMATS)}"
        )
    if os.path.isdir(p):
        raise ValueError(f"path {p} is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(folder):
        raise ValueError(f"path {p}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (
        os.path.exists(p) and not os.access(p, os.W_OK)
    ):
        raise ValueError(f"path {p} is not writable (permission denied)")


def _save(fig: Figure, path: str | os.PathLike[str] | None, dpi: int) -> None:
    if path is not None:
        p = os.fspath(path)
        fig.savefig(p, format=os.path.splitext(p)[1].lower().lstrip("."), dpi=dpi)


def reliability_diagram(
    probs: Tensor | CalibrationBins,
    labels: Tensor | None = None,
    n_bins: int = 15,
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 100,
) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with bin counts.

    The top panel draws, for each non-empty bin of :func:`bayesdrop.metrics.calibration_bins`,
    its accuracy (bar) and the gap to its mean confidence; the title gives the ECE of the same
    bins (:attr:`~bayesdrop.metrics.CalibrationBins.ece`, equal to
    :func:`bayesdrop.metrics.ece`). The bottom panel draws the number of predictions per bin, so
    that a large gap in a nearly empty bin is read as such.

    Args:
        probs: ``(N, C)`` predictive probabilities, or the bins themselves (a
            :class:`~bayesdrop.metrics.CalibrationBins`; then ``labels`` and ``n_bins`` are not
            used).
        labels: ``(N,)`` class indices (needed with probabilities).
        n_bins: equal-width confidence bins (as :func:`bayesdrop.metrics.ece`).
        title: axes title (default: the ECE).
        path: write the figure there, in the format of its extension (one of :data:`FORMATS`);
            checked before drawing.
        dpi: resolution of raster formats.

    Returns:
        The :class:`matplotlib.figure.Figure` (axes 0: reliability, axes 1: counts).
    """
    _check_path(path)
    if isinstance(probs, CalibrationBins):
        bins = probs
    else:
        if labels is None:
            raise TypeError("reliability_diagram needs labels with probabilities")
        bins = calibration_bins(probs, labels, n_bins)
    edges = bins.edges.detach().cpu().double()
    count = bins.count.detach().cpu().double()
    acc = bins.accuracy.detach().cpu().double()
    conf = bins.confidence.detach().cpu().double()
    ece_value = float(bins.ece)
    fig = _new_figure((4.5, 5.5))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = (edges[1:] - edges[:-1]).numpy()
    left = edges[:-1].numpy()
    filled = (count > 0).numpy()
    ax.bar(
        left[filled],
        acc.numpy()[filled],
        width=width[filled],
        align="edge",
        color="C0",
        edgecolor="black",
        label="accuracy",
    )
    ax.bar(
        left[filled],
        (conf - acc).numpy()[filled],
        bottom=acc.numpy()[filled],
        width=width[filled],
        align="edge",
        color="C3",
        alpha=0.3,
        edgecolor="C3",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title if title is not None else f"ECE = {100 * ece_value:.2f}%")
    ax.legend(loc="upper left")
    ax_count.bar(left, count.numpy(), width=width, align="edge", color="C7", edgecolor="black")
    ax_count.set_xlabel("confidence")
    ax_count.set_ylabel("count")
    _save(fig, path, dpi)
    return fig


def pavpu_plot(
    curves: PAvPUCurve | Mapping[str, PAvPUCurve],
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 100,
) -> Figure:
    """PAvPU against the threshold fraction ``t`` (as the LBD paper's Figure 2), one line per model.

    Args:
        curves: one :class:`~bayesdrop.metrics.PAvPUCurve` or a mapping label → curve; the legend
            shows each curve's mean PAvPU.
        title, path, dpi: as :func:`reliability_diagram`.
    """
    _check_path(path)
    if isinstance(curves, PAvPUCurve):
        curves = {"model": curves}
    if not isinstance(curves, Mapping) or not curves:
        raise TypeError("curves must be a PAvPUCurve or a non-empty mapping of label -> PAvPUCurve")
    fig, ax = _figure((5.0, 3.5))
    for label, c in curves.items():
        if not isinstance(c, PAvPUCurve):
            raise TypeError(f"curves[{label!r}] must be a PAvPUCurve, got {type(c).__name__}")
        ax.plot(
            c.t.numpy(),
            c.pavpu.numpy(),
            marker="o",
            markersize=3,
            label=f"{label} (mean {float(c.mean):.3f})",
        )
    ax.set_xlabel("threshold fraction t  (H_min + t (H_max - H_min))")
    ax.set_ylabel("PAvPU")
    ax.set_xlim(0, 1)
    if title is not None:
        ax.set_title(title)
    ax.legend()
    _save(fig, path, dpi)
    return fig


def ood_histogram(
    in_scores: Any,
    out_scores: Any,
    bins: int = 30,
    *,
    score_name: str = "score",
    labels: tuple[str, str] = ("in distribution", "out of distribution"),
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 100,
) -> Figure:
    """Histograms of the scores of in- and out-of-distribution examples, on shared bins.

    Each set is drawn as a density (its histogram divided by its size and the bin width), so
    sets of different sizes compare; the title gives :func:`bayesdrop.metrics.ood_auroc` and
    :func:`bayesdrop.metrics.fpr_at_tpr` (at 95%) of the same scores.

    Args:
        in_scores, out_scores: the inputs of the OOD metrics (1-D; higher means "more likely out
            of distribution"), e.g. the predictive entropy or the mutual information of
            :func:`bayesdrop.mc_predict` on each set.
        bins: number of equal-width bins spanning both sets.
        score_name: x-axis label (e.g. ``"mutual information (nats)"``).
        labels: legend labels of the two sets.
        title, path, dpi: as :func:`reliability_diagram` (default title: the two metrics).

    Returns:
        The :class:`matplotlib.figure.Figure`; its axes hold two bar containers (in, out).
    """
    _check_path(path)
    s_in = check_scores("in_scores", in_scores)
    s_out = check_scores("out_scores", out_scores)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, but got {bins!r}")
    lo = float(torch.minimum(s_in.min(), s_out.min()))
    hi = float(torch.maximum(s_in.max(), s_out.max()))
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    width = (edges[1:] - edges[:-1]).numpy()
    fig, ax = _figure((5.5, 3.5))
    for i, (scores, label) in enumerate(((s_in, labels[0]), (s_out, labels[1]))):
        counts = torch.histogram(scores, bins=edges).hist
        density = counts / (counts.sum() * torch.from_numpy(width))
        ax.bar(
            edges[:-1].numpy(),
            density.numpy(),
            width=width,
            align="edge",
            color=f"C{i}",
            alpha=0.5,
            label=f"{label} (n = {scores.numel()})",
        )
    auroc = float(ood_auroc(s_in, s_out))
    fpr95 = float(fpr_at_tpr(s_in, s_out, 0.95))
    ax.set_xlabel(score_name)
    ax.set_ylabel("density")
    ax.set_title(
        title if title is not None else f"AUROC = {auroc:.3f}, FPR at 95% TPR = {fpr95:.3f}"
    )
    ax.legend()
    _save(fig, path, dpi)
    return fig


def _rate_series(history: Any) -> tuple[list[str], dict[str, list[Tensor]]]:
    if isinstance(history, Mapping):
        series = {
            str(k): [torch.as_tensor(v).detach().reshape(-1) for v in vs]
            for k, vs in history.items()
        }
    elif isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        series = {}
        for i, snapshot in enumerate(history):
            if not isinstance(snapshot, Mapping):
                raise TypeError(f"history[{i}] must be a mapping layer name -> rates")
            if i and set(map(str, snapshot)) != set(series):
                raise ValueError("every snapshot in history must name the same layers")
            for k, v in snapshot.items():
                series.setdefault(str(k), []).append(torch.as_tensor(v).detach().reshape(-1))
    else:
        raise TypeError(
            "history must be a sequence of {layer: rates} snapshots (e.g. bayesdrop.dropout_rates(model) "
            "taken during training) or a mapping layer -> sequence of rates"
        )
    if not series:
        raise ValueError("history holds no dropout rates")
    return list(series), series


def dropout_rate_plot(
    history: Sequence[Mapping[str, Tensor]] | Mapping[str, Sequence[Tensor]],
    steps: Sequence[float] | None = None,
    *,
    band: tuple[float, float] = (0.1, 0.9),
    xlabel: str = "epoch",
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 100,
) -> Figure:
    """Learned drop probabilities per layer over training.

    Each layer is a line at its mean rate; when it has several rates (one per unit) a shaded band
    spans the ``band`` quantiles of its rates at each step.

    Args:
        history: snapshots in training order, each ``{layer name: p}`` as returned by
            :func:`bayesdrop.dropout_rates`, or a mapping ``layer -> [p at step 0, p at step 1, ...]``.
        steps: x values (default ``0, 1, 2, ...``).
        band: lower and upper quantiles of the shaded band, in [0, 1].
        xlabel, title, path, dpi: labels and output as :func:`reliability_diagram`.
    """
    _check_path(path)
    lo_q, hi_q = (float(b) for b in band)
    if not 0.0 <= lo_q <= hi_q <= 1.0:
        raise ValueError(f"band must be two quantiles 0 <= lo <= hi <= 1, but got {band}")
    names, series = _rate_series(history)
    n_steps = len(series[names[0]])
    if any(len(v) != n_steps for v in series.values()):
        raise ValueError("every layer in history must have one rate tensor per step")
    xs = list(range(n_steps)) if steps is None else [float(s) for s in steps]
    if len(xs) != n_steps:
        raise ValueError(f"steps has {len(xs)} values but history has {n_steps} snapshots")
    fig, ax = _figure((5.5, 3.5))
    for i, name in enumerate(names):
        vals = series[name]
        mean = [float(v.double().mean()) for v in vals]
        ax.plot(xs, mean, color=f"C{i % 10}", label=name or "(model)")
        if max(v.numel() for v in vals) > 1:
            lo = [float(torch.quantile(v.double(), lo_q)) for v in vals]
            hi = [float(torch.quantile(v.double(), hi_q)) for v in vals]
            ax.fill_between(xs, lo, hi, color=f"C{i % 10}", alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("drop probability p")
    ax.set_ylim(0, 1)
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize="small")
    _save(fig, path, dpi)
    return fig


def rate_trajectories(
    tracker: Any,
    *,
    modules: Sequence[str] | None = None,
    max_lines: int = 8,
    band: tuple[float, float] = (0.1, 0.9),
    fraction: float = 0.25,
    tol: float = 0.01,
    min_steps: int = 100,
    xlabel: str = "step",
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 100,
) -> Figure:
    """The drop rates a :class:`bayesdrop.RateTracker` recorded, one panel per module.

    A module with at most ``max_lines`` (recorded) rates gets one line per rate; a larger one a
    line at the mean over its rates with a band between the ``band`` quantiles at each step. The
    last ``fraction`` of the records is shaded, and each panel's title gives the module's drift
    over it, :math:`d = \\frac1K\\sum_k |p_k(t_{\\text{end}}) - p_k(t_{\\text{start}})|`
    (:meth:`~bayesdrop.RateTracker.drift`), and its state by the criterion of
    :meth:`~bayesdrop.RateTracker.settled`: "not settled" (:math:`d \\ge` ``tol``), "settled",
    "too short to tell" (:math:`d <` ``tol`` over a run of fewer than ``min_steps`` steps), or
    "fixed rate" (a module whose rates are not learned).

    Args:
        tracker: a :class:`bayesdrop.RateTracker` with at least one record.
        modules: names of the modules to draw (default: all, in model order).
        max_lines: largest number of rates drawn one line each.
        band: lower and upper quantiles of the shaded band, in [0, 1].
        fraction, tol, min_steps: the settling criterion stated in the titles
            (:meth:`~bayesdrop.RateTracker.settled`).
        xlabel, title, path, dpi: labels and output as :func:`reliability_diagram`.
    """
    _check_path(path)
    from .tracking import RateTracker

    if not isinstance(tracker, RateTracker):
        raise TypeError(
            f"tracker must be a bayesdrop.RateTracker, but got {type(tracker).__name__}"
        )
    if isinstance(max_lines, bool) or not isinstance(max_lines, int) or max_lines < 0:
        raise ValueError(f"max_lines must be an int >= 0, but got {max_lines!r}")
    lo_q, hi_q = (float(b) for b in band)
    if not 0.0 <= lo_q <= hi_q <= 1.0:
        raise ValueError(f"band must be two quantiles 0 <= lo <= hi <= 1, but got {band}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], but got {fraction}")
    if not float(tol) > 0.0:
        raise ValueError(f"tol must be positive, but got {tol}")
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
        raise ValueError(f"min_steps must be an int >= 1, but got {min_steps!r}")
    if not tracker.steps:
        raise ValueError("the tracker holds no records yet: call tracker.step() during training")
    history = tracker.history
    if modules is None:
        names = list(history)
    else:
        if isinstance(modules, str):
            raise TypeError("modules must be a sequence of module names, not a str")
        names = list(modules)
        unknown = [n for n in names if n not in history]
        if unknown:
            raise ValueError(f"modules {unknown} were not recorded; recorded: {list(history)}")
    if not names:
        raise ValueError("no module to draw: the tracker recorded no dropout module")
    drift = tracker.drift(fraction) if len(tracker.steps) > 1 else {}
    xs = [float(s) for s in tracker.steps]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = _new_figure((4.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    start = min(len(xs) - 2, int(len(xs) * (1.0 - fraction))) if len(xs) > 1 else 0
    for ax, name in zip(axes.flat, names, strict=False):
        h = history[name].double()  # (steps, K)
        if h.shape[1] <= max_lines:
            for k in range(h.shape[1]):
                ax.plot(xs, h[:, k].tolist(), color=f"C{k % 10}", lw=1, label=f"rate {k}")
        else:
            ax.plot(xs, h.mean(1).tolist(), color="C0", label=f"mean of {h.shape[1]} rates")
            lo = torch.quantile(h, lo_q, dim=1).tolist()
            hi = torch.quantile(h, hi_q, dim=1).tolist()
            ax.fill_between(xs, lo, hi, color="C0", alpha=0.2)
        label = name or "(model)"
        if name in drift:
            ax.axvspan(xs[start], xs[-1], color="0.85", zorder=0)
            if name not in tracker.learned:
                state = "fixed rate"
            elif drift[name] >= tol:
                state = "not settled"
            elif xs[-1] - xs[0] < min_steps:
                state = "too short to tell"
            else:
                state = "settled"
            label += f": drift {drift[name]:.3g} ({state})"
        ax.set_title(label, fontsize="small")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("drop probability p")
        if h.shape[1] <= max_lines and h.shape[1] > 1:
            ax.legend(fontsize="x-small")
    if title is not None:
        fig.suptitle(title)
    _save(fig, path, dpi)
    return fig
