"""The ``bayesdrop`` command: ``recsys`` is delegated; anything else is a usage error."""

from __future__ import annotations

import sys
import types

import pytest

from bayesdrop import cli


def test_recsys_is_delegated_with_its_arguments(monkeypatch):
    calls = []
    fake = types.ModuleType("fake_recsys_cli")
    fake.main = lambda argv: calls.append(list(argv)) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bayesdrop.recsys.cli", fake)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.main(["recsys", "train", "--epochs", "1"]) == 0
    assert calls == [["train", "--epochs", "1"]]


@pytest.mark.parametrize("command", ["nonsense", "reproduce", "demo"])
def test_unknown_command_is_a_usage_error(command, capsys):
    # the reproduction suite has its own commands (bayesdrop-reproduce, bayesdrop-demo)
    with pytest.raises(SystemExit) as exc:
        cli.main([command])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
