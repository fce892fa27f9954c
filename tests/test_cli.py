"""The ``bayesdrop`` command: ``recsys`` is delegated; ``reproduce`` and ``demo`` moved out."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from bayesdrop import cli


def test_moved_command_says_where_it_lives_when_the_suite_is_absent(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bayesdrop_reproduce" else real(name, *a),
    )
    for name, command in (("reproduce", "bayesdrop-reproduce"), ("demo", "bayesdrop-demo")):
        assert cli.main([name, "--quick"]) == 2
        err = capsys.readouterr().err
        assert "reproduce/" in err and "pip install -e reproduce" in err and command in err


def test_moved_command_delegates_with_a_deprecation_note(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("fake_reproduce_cli")
    fake.main = lambda argv: calls.append(list(argv)) or 0  # type: ignore[attr-defined]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setitem(sys.modules, "bayesdrop_reproduce.experiments.cli", fake)
    assert cli.main(["reproduce", "toy-gradients", "--quick"]) == 0
    assert calls == [["toy-gradients", "--quick"]]
    assert "deprecated" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["nonsense"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
