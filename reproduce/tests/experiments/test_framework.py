"""The ``bayesdrop-reproduce`` machinery: files written, failures reported, CLI errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

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


def test_out_that_is_a_file_is_a_usage_error(fake, tmp_path, capsys) -> None:
    target = tmp_path / "taken"
    target.write_text("keep me")
    for out in (target, target / "below"):
        with pytest.raises(SystemExit) as exc:
            cli.main([*fake, "--out", str(out), "--tiny", "--no-progress"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--out" in err and str(out) in err and "Traceback" not in err
    assert target.read_text() == "keep me"  # nothing overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no work started


@pytest.mark.parametrize("seed", ["-1", str(2**31)])
def test_seed_out_of_range_is_a_usage_error(fake, tmp_path, capsys, seed) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*fake, "--out", str(tmp_path / "o"), "--seed", seed, "--no-progress"])
    assert exc.value.code == 2
    assert "--seed must be an integer in [0, 2147483647]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_failed_write_is_reported_and_the_others_still_run(monkeypatch, tmp_path, capsys) -> None:
    names = ("fake-a", "fake-b", "fake-c")
    for name in names:
        mod = _module(name, fail=False)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(experiments, "ALL", names)
    monkeypatch.setattr(cli, "ALL", names)
    (tmp_path / "fake-a.json").mkdir()  # the JSON of the first cannot be written
    (tmp_path / "fake-b.png").mkdir()  # nor the figure of the second
    rc = cli.main([*names, "--out", str(tmp_path), "--tiny", "--no-progress"])
    assert rc == 1
    # every experiment ran; what could be written was written
    assert json.loads((tmp_path / "fake-b.json").read_text())["status"] == "ok"
    assert json.loads((tmp_path / "fake-c.json").read_text())["status"] == "ok"
    assert (tmp_path / "fake-a.png").stat().st_size > 0
    assert (tmp_path / "fake-c.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "| [fake-a](#fake-a) | ok, files not written |" in report
    assert "| [fake-b](#fake-b) | ok, files not written |" in report
    assert "| [fake-c](#fake-c) | ok |" in report
    assert "**Not written**: `fake-a.json: IsADirectoryError" in report
    assert "**Not written**: `fake-b.png: " in report
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "2 of 3 experiment(s) failed or could not write their files: fake-a, fake-b" in err
    # no temporary file is left behind
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_failed_report_write_does_not_stop_the_run(fake, monkeypatch, tmp_path, capsys) -> None:
    (tmp_path / "report.md").mkdir()
    rc = cli.main([*fake, "--out", str(tmp_path), "--tiny", "--no-progress"])
    assert rc == 1
    assert (tmp_path / "fake-ok.json").exists() and (tmp_path / "fake-fail.json").exists()
    err = capsys.readouterr().err
    assert "report not written:" in err and "report.md" in err and "Traceback" not in err


def test_json_write_is_atomic(tmp_path, monkeypatch) -> None:
    """A write that fails half-way keeps the previous file whole and leaves no temporary."""
    from bayesdrop_reproduce.experiments import _framework

    cfg = RunConfig(quick=False, seed=0, device="cpu", out=tmp_path, tiny=True)
    res = Result("x", "t", "d", "s", {}, {"v": 1.0}, [], "fine")
    first = _framework.write_json(res, tmp_path, cfg, 1.0)
    before = first.read_text()

    def broken(self, *args, **kwargs):
        self.open("w").write('{"half')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError, match="No space"):
        _framework.write_json(res, tmp_path, cfg, 2.0)
    monkeypatch.undo()
    assert first.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_cpu_timer_counts_process_cpu_time_with_one_thread(tmp_path) -> None:
    """Sleeping (what a loaded machine looks like from inside a process) adds nothing; work
    does; the block runs with one torch thread and the count is restored afterwards."""
    import time

    import torch

    from bayesdrop_reproduce.experiments._framework import clock, cpu_timer

    cfg = RunConfig(quick=False, seed=0, device="cpu", out=tmp_path)
    before = torch.get_num_threads()
    with cpu_timer(cfg) as idle:
        inside = torch.get_num_threads()
        time.sleep(0.3)
    with cpu_timer(cfg) as busy:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
    assert inside == 1 and torch.get_num_threads() == before
    assert idle["s"] < 0.1 and busy["s"] >= 0.2
    assert clock(cfg) == "process CPU time, one torch thread"


def test_budgets_pick_mode_and_conflicts(tmp_path) -> None:
    base = {"seed": 0, "device": "cpu", "out": tmp_path}
    quick = RunConfig(quick=True, **base)
    medium = RunConfig(quick=False, medium=True, **base)
    full = RunConfig(quick=False, **base)
    assert [c.mode for c in (quick, medium, full)] == ["quick", "medium", "full"]
    assert RunConfig(quick=False, tiny=True, medium=True, **base).mode == "tiny"
    assert [c.pick("F", "Q", "T") for c in (quick, medium, full)] == ["Q", "Q", "F"]
    assert [c.pick("F", "Q", "T", medium="M") for c in (quick, medium, full)] == ["Q", "M", "F"]
    assert medium.pick("F", "Q", "T", medium=None) is None  # None is a value, not "unset"
    with pytest.raises(ValueError, match="two budgets"):
        RunConfig(quick=True, medium=True, **base)


def test_rate_settling_states_the_criterion() -> None:
    import torch
    from torch import nn

    from bayesdrop import RateTracker
    from bayesdrop.nn import LearnableBernoulliDropout
    from bayesdrop_reproduce.experiments._framework import SETTLE_TOL, rate_settling

    model = nn.Sequential(LearnableBernoulliDropout(nn.Linear(2, 1), init_p=0.5))
    tracker = RateTracker(model)
    for step in range(8):  # logits move by 0.2 per step until step 5, then stop
        with torch.no_grad():
            if step <= 5:
                model[0].logit_p += 0.2
        tracker.step()
    # last quarter: records 6 -> 7, no change; over the last half: records 4 -> 7, one step
    assert rate_settling(tracker) == {
        "settled": True,
        "max_drift": 0.0,
        "tol": SETTLE_TOL,
        "fraction": 0.25,
        "what": "",
    }
    half = rate_settling(tracker, fraction=0.5)
    p = torch.sigmoid(torch.tensor([0.2 * 5, 0.2 * 6], dtype=torch.float32))
    assert half["max_drift"] == pytest.approx(float(p[1] - p[0]), rel=1e-5)
    assert half["settled"] is False
    assert rate_settling([{"a": 0.001}, 0.02], what="2 runs")["settled"] is False
    assert rate_settling({"a": 0.001, "b": 0.009})["max_drift"] == 0.009
    with pytest.raises(ValueError, match="at least one drift"):
        rate_settling([])


def test_budget_flag_reaches_config_json_and_report(fake, tmp_path, capsys) -> None:
    rc = cli.main(["fake-ok", "--budget", "medium", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    ok = json.loads((tmp_path / "fake-ok.json").read_text())
    assert ok["config"]["budget"] == "medium" and ok["config"]["quick"] is False
    assert ok["rates"] is None
    report = (tmp_path / "report.md").read_text()
    assert "Budget: **medium**" in report and "- Budget: medium" in report
    assert "| ok | medium | no learned rates |" in report
    with pytest.raises(SystemExit) as exc:
        cli.main(["fake-ok", "--quick", "--budget", "full", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "two budgets" in capsys.readouterr().err


def test_report_says_whether_the_rates_settled(tmp_path) -> None:
    from bayesdrop_reproduce.experiments._framework import Record, rate_settling, write_report

    cfg = RunConfig(quick=True, seed=0, device="cpu", out=tmp_path)
    rows = [{"quantity": "q", "paper": "1", "ours": "2"}]
    results = [
        Result("a", "A", "MNIST", "digits", {}, {"x": 1}, rows, "v", rates=rate_settling(0.004)),
        Result("b", "B", "MNIST", "digits", {}, {"x": 1}, rows, "v", rates=rate_settling(0.03)),
    ]
    report = write_report([Record(r, 1.0) for r in results], tmp_path, cfg).read_text()
    assert "| quick | yes (drift 0.004) |" in report and "| quick | no (drift 0.03) |" in report
    assert "Learned rates settled: yes: largest drift over the last 25% of training 0.004" in report
    assert "Learned rates settled: no: largest drift over the last 25% of training 0.03" in report


def test_earlier_results_stay_in_the_report_and_replacements_are_named(
    monkeypatch, tmp_path, capsys
) -> None:
    """Two runs into one folder: the second keeps the first's other experiment in report.md (with
    its own budget, commit and date) and says which result it replaced, on stderr and in the
    report."""
    names = ("fake-a", "fake-b")
    for name in names:
        mod = _module(name, fail=False)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(experiments, "ALL", names)
    monkeypatch.setattr(cli, "ALL", names)
    assert cli.main([*names, "--out", str(tmp_path), "--tiny", "--no-progress"]) == 0
    first_b = json.loads((tmp_path / "fake-b.json").read_text())
    assert set(first_b["run"]) == {"commit", "date"}
    capsys.readouterr()
    # second run: only fake-a, at another budget
    assert cli.main(["fake-a", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "replacing earlier results" in err and "fake-a (budget tiny" in err
    assert "keeping in report.md the earlier results of fake-b" in err
    report = (tmp_path / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| [fake-")]
    assert len(rows) == 2  # both experiments are in the summary, in registry order
    assert rows[0].startswith("| [fake-a](#fake-a) | ok | quick |")
    assert rows[1].startswith("| [fake-b](#fake-b) | ok (earlier run) | tiny |")
    assert first_b["run"]["date"] in rows[1] and first_b["run"]["commit"] in rows[1]
    assert "## fake-b" in report and "From an earlier run (budget tiny" in report
    assert "| error | 1% | 0.012 |" in report.split("## fake-b")[1]  # its table is kept
    assert "Replaced by this run: fake-a (was budget tiny" in report
    assert "Replaces the earlier result (budget tiny" in report.split("## fake-a")[1]
    # the earlier experiment's files are untouched
    assert json.loads((tmp_path / "fake-b.json").read_text()) == first_b


def test_files_that_are_not_results_are_ignored(tmp_path) -> None:
    from bayesdrop_reproduce.experiments._framework import read_results

    (tmp_path / "notes.json").write_text('{"a": 1}')
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "renamed.json").write_text(
        json.dumps({"name": "other", "status": "ok", "table": [], "verdict": "", "config": {}})
    )
    assert read_results(tmp_path) == {}


_INTERRUPTED = """
import sys, time, types
import bayesdrop_reproduce.experiments as experiments
from bayesdrop_reproduce.experiments import cli

mod = types.ModuleType("bayesdrop_reproduce.experiments.fake_slow")
mod.NAME, mod.TITLE = "fake-slow", "slow"

def run(cfg):
    print("started", flush=True)
    time.sleep(60)

mod.run = run
sys.modules[mod.__name__] = mod
experiments.ALL = cli.ALL = ("fake-slow",)
sys.exit(cli.main(["fake-slow", "--out", sys.argv[1], "--tiny", "--no-progress"]))
"""


def test_ctrl_c_exits_130_with_one_line(tmp_path) -> None:
    """SIGINT during an experiment: exit status 130, one line on stderr, no traceback."""
    import os
    import signal
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED, str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert lines == [
        "bayesdrop-reproduce: interrupted (report.md keeps the experiments that finished)"
    ]
