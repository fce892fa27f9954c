"""The README's quick start runs end to end (one epoch instead of thirty, ten passes)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"## Quick start.*?```python\n(.*?)```", text, re.S)
    assert match, "README.md has no python block under '## Quick start'"
    return match.group(1)


def test_quick_start_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    code = _quick_start()
    assert "range(30)" in code and "num_samples=50" in code
    code = code.replace("range(30)", "range(1)").replace("num_samples=50", "num_samples=10")
    script = tmp_path / "quick_start.py"
    script.write_text(code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert re.search(r"MC accuracy 0\.\d{3}", out) and "mean PAvPU" in out
    assert (tmp_path / "reliability.png").stat().st_size > 0
