"""The ``bayesdrop-reproduce`` machinery: files written, failures reported, CLI errors."""

from __future__ import annotations

import json
import sys
import types

import pytest

import bayesdrop_reproduce.experiments as experiments
from bayesdrop_reproduce.experiments import cli
from bayesdrop_reproduce.experiments._framework import JSON_KEYS, Result, RunConfig, to_jsonable


def _module(name: str, fail: bool) -> types.ModuleType:
    mod = types.ModuleType(f"bayesdrop_reproduce.experiments.{name.replace('-', '_')}")
    mod.NAME, mod.TITLE = name, f"title of {name}"

    def run(cfg: RunConfig) -> Result:
        if fail:
            raise RuntimeError("boom")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        return Result(
            name=name,
            title=mod.TITLE,
            paper_dataset="MNIST",
            stand_in="digits",
            settings={"tiny": cfg.tiny},
            metrics={"x": 1.5, "nan": float("nan")},
            table=[{"quantity": "error", "paper": "1%", "ours": 0.012}],
            verdict="reproduced",
            figure=fig,
        )

    mod.run = run
    return mod


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    names = ("fake-ok", "fake-fail")
    for name, fail in zip(names, (False, True)):
        mod = _module(name, fail)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(experiments, "ALL", names)
    monkeypatch.setattr(cli, "ALL", names)
    return names


def test_files_and_failure_reported(fake, tmp_path, capsys) -> None:
    rc = cli.main([*fake, "--out", str(tmp_path), "--tiny", "--no-progress"])
    assert rc == 1
    ok = json.loads((tmp_path / "fake-ok.json").read_text())
    bad = json.loads((tmp_path / "fake-fail.json").read_text())
    for payload in (ok, bad):
        assert set(JSON_KEYS) <= set(payload)
        assert payload["versions"]["torch"] and payload["versions"]["bayesdrop"]
        assert payload["wall_time_s"] >= 0
    assert ok["status"] == "ok" and ok["metrics"] == {"x": 1.5, "nan": "nan"}
    assert ok["figure"] == "fake-ok.png" and (tmp_path / "fake-ok.png").stat().st_size > 0
    assert bad["status"] == "failed" and "RuntimeError: boom" in bad["traceback"]
    report = (tmp_path / "report.md").read_text()
    assert "| error | 1% | 0.012 |" in report and "Stand-in here: digits" in report
    assert "fake-fail" in report and "Failed" in report
    captured = capsys.readouterr()
    assert "report.md" in captured.out and "fake-fail failed" in captured.err


def test_unknown_experiment_lists_valid(fake, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["nope", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "valid experiments: fake-ok, fake-fail" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid experiments"):
        experiments.load("nope")


def test_to_jsonable() -> None:
    import numpy as np
    import torch

    out = to_jsonable({"t": torch.tensor([1.0, 2.0]), "n": np.float32(0.5), 3: (float("inf"),)})
    assert out == {"t": [1.0, 2.0], "n": 0.5, "3": ["inf"]}
