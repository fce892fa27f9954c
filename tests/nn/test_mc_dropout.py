from __future__ import annotations

import pytest
import torch

from bayesdrop import MCDropout


def test_mc_dropout_rate_and_scale():
    m = MCDropout(0.25, generator=torch.Generator().manual_seed(0))
    y = m(torch.ones(40000))
    vals = torch.unique(y)
    assert vals.numel() == 2 and vals[0] == 0.0
    assert float(vals[1]) == pytest.approx(1 / 0.75, rel=1e-6)
    se = (0.25 * 0.75 / 40000) ** 0.5
    assert abs(float((y == 0).double().mean()) - 0.25) < 4.5 * se


def test_mc_dropout_eval_identity_and_mc_sampling():
    m = MCDropout(0.5).eval()
    x = torch.randn(100)
    assert torch.equal(m(x), x)
    m.mc_sampling = True
    assert not torch.equal(m(x), x)


def test_channelwise():
    m = MCDropout(0.5, channelwise=True)
    y = m(torch.ones(8, 4, 3, 3)).flatten(2)
    assert (y.amax(-1) == y.amin(-1)).all()


def test_bad_p():
    with pytest.raises(ValueError, match="p must be in"):
        MCDropout(1.0)
    with pytest.raises(TypeError, match="p must be a float"):
        MCDropout("0.5")


def test_channelwise_must_be_a_bool():
    """A string such as "no" is truthy: it would silently turn channel-wise dropout on."""
    for bad in ("no", "False", 0, 1, None):
        with pytest.raises(TypeError, match="channelwise must be a bool"):
            MCDropout(0.5, channelwise=bad)  # type: ignore[arg-type]
    assert MCDropout(0.5, channelwise=False).channelwise is False
