from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from bayesdrop_reproduce.demo import load_digits_split, main, train_one  # noqa: E402


def test_demo_trains_and_learns_rates():
    data = load_digits_split(0)
    row = train_one("disarm", epochs=3, seed=0, data=data, progress=False)
    assert row.accuracy > 0.8
    assert len(row.rates) == 3
    assert row.rates[0] != pytest.approx(0.2, abs=1e-4)  # the input rates moved


def test_cli_demo_prints_table(capsys):
    assert main(["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "LBD (DISARM)" in out and "nn.Dropout" in out and "ms/step" in out


def test_cli_rejects_bad_epochs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--epochs", "0"])
    assert exc.value.code == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", str(2**31)])
def test_cli_rejects_seed_out_of_range(capsys, seed):
    with pytest.raises(SystemExit) as exc:
        main(["--seed", seed])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--seed must be an integer in [0, 2147483647]" in err and "Traceback" not in err
