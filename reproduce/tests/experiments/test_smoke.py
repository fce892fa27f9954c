"""Every registered experiment runs in the tiny setting and writes a well-formed JSON and report."""

from __future__ import annotations

import json

import pytest

from bayesdrop_reproduce.experiments import ALL, load
from bayesdrop_reproduce.experiments._framework import JSON_KEYS
from bayesdrop_reproduce.experiments.cli import main


def test_registry_names_match_modules() -> None:
    assert len(set(ALL)) == len(ALL)
    for name in ALL:
        module = load(name)
        assert module.NAME == name and module.TITLE and callable(module.run)


@pytest.mark.parametrize("name", ALL)
def test_tiny_run_writes_json_and_report(name: str, tmp_path) -> None:
    assert main([name, "--tiny", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    payload = json.loads((tmp_path / f"{name}.json").read_text())
    assert set(JSON_KEYS) <= set(payload)
    assert payload["status"] == "ok" and payload["name"] == name
    assert payload["config"]["tiny"] is True
    assert payload["paper_dataset"] and payload["stand_in"] and payload["verdict"]
    assert isinstance(payload["settings"], dict) and isinstance(payload["metrics"], dict)
    assert payload["metrics"], "an experiment must record its numbers"
    assert payload["table"] and all({"paper", "ours"} <= set(row) for row in payload["table"])
    if payload["figure"] is not None:
        assert (tmp_path / payload["figure"]).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert f"## {name}" in report and payload["stand_in"] in report
