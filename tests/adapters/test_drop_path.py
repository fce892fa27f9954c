"""Drop-path modules of timm and torchvision, found by duck typing and made learned by convert.

timm does not import here without torchvision (which is not installable against the CPU torch),
so both libraries' modules are reproduced below with their attributes and forward code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop import convert, mc_predict, objective
from bayesdrop.adapters.drop_path import find_drop_paths, replace_drop_paths
from bayesdrop.nn import DropPath, LearnableBernoulliDropout, MCDropout

pytestmark = pytest.mark.usefixtures("one_thread")


class TimmDropPath(nn.Module):
    """timm.layers.DropPath."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            mask.div_(keep)
        return x * mask


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        return x * noise.div_(survival)


class Block(nn.Module):
    """A pre-norm residual MLP block, x + drop_path(mlp(norm(x)))."""

    def __init__(self, drop_path: nn.Module, dim: int = 6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 12), nn.GELU(), nn.Dropout(0.1), nn.Linear(12, dim))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm(x)))


def model_with_every_kind() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        Block(TimmDropPath(0.1)),
        Block(StochasticDepth(0.2, "row")),
        Block(TimmDropPath(0.0)),
        Block(StochasticDepth(0.2, "batch")),
        Block(TimmDropPath(0.3, scale_by_keep=False)),
        nn.Flatten(),
        nn.Linear(6 * 4, 3),
    )


def test_find_drop_paths_by_their_attributes():
    model = model_with_every_kind()
    sites = {s.name: s for s in find_drop_paths(model)}
    assert sorted(sites) == [f"{i}.drop_path" for i in range(5)]
    assert (sites["0.drop_path"].p, sites["0.drop_path"].per_example) == (0.1, True)
    assert sites["3.drop_path"].per_example is False and sites["4.drop_path"].scaled is False
    assert [sites[f"{i}.drop_path"].why_fixed() is None for i in range(5)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert not find_drop_paths(nn.Sequential(nn.Dropout(0.2), nn.Identity(), nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        find_drop_paths([nn.Linear(2, 2)])  # type: ignore[arg-type]


def test_convert_learns_per_example_drop_paths_and_lists_the_others():
    model = model_with_every_kind().eval()
    x = torch.randn(8, 4, 6)
    with torch.no_grad():
        reference = model(x)
    new, report = convert(model, "lbd", example_inputs=x)
    paths = {r.name: r for r in report.replacements if r.form == "drop path"}
    assert sorted(paths) == ["0.drop_path", "1.drop_path"]
    assert paths["1.drop_path"].p == 0.2 and paths["1.drop_path"].rates == 1
    for name in paths:
        module = new.get_submodule(name)
        assert isinstance(module, DropPath)
        assert isinstance(module.dropout, LearnableBernoulliDropout)
        assert torch.allclose(module.p, torch.tensor([paths[name].p]))
    assert "p = 0" in report.fixed["2.drop_path"]
    assert "mode='batch'" in report.fixed["3.drop_path"]
    assert "scale_by_keep=False" in report.fixed["4.drop_path"]
    assert isinstance(model[0].drop_path, TimmDropPath)  # the original is untouched
    with torch.no_grad():
        assert torch.equal(new.eval()(x), reference)

    # training: the rates get gradients; MC prediction samples the learned drop-paths
    new.train()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def nll(out, t):
        return F.cross_entropy(out, t, reduction="none")

    objective(new, x, y, nll, 100).backward()
    for name in paths:
        grad = new.get_submodule(name).dropout.logit_p.grad
        assert grad is not None and grad.abs().sum() > 0
    only_paths, _ = convert(model, "lbd", example_inputs=x, exclude=["0.mlp.2", "1.mlp.2"])
    torch.manual_seed(1)
    samples = mc_predict(only_paths, x, num_samples=6).samples
    assert samples.std(0).max() > 0


def test_convert_drop_path_fixed_exclude_and_families():
    model = model_with_every_kind()
    x = torch.randn(4, 4, 6)
    _, report = convert(model, "lbd", example_inputs=x, drop_path="fixed")
    assert not [r for r in report.replacements if r.form == "drop path"]
    assert all(f"{i}.drop_path" in report.fixed for i in range(5))
    _, report = convert(model, "lbd", example_inputs=x, exclude=["0.drop_path"])
    assert [r.name for r in report.replacements if r.form == "drop path"] == ["1.drop_path"]
    new, report = convert(model, "mc", example_inputs=x)
    assert (
        isinstance(new[0].drop_path.dropout, MCDropout)
        and repr(new[0].drop_path.dropout) == "MCDropout(p=0.1)"
    )
    new, report = convert(model, "concrete")  # no trace needed for drop-paths
    assert type(new[1].drop_path.dropout).__name__ == "ConcreteDropout"
    with pytest.raises(ValueError, match="drop_path must be"):
        convert(model, "lbd", drop_path=True)


def test_a_module_shared_under_two_names_is_replaced_once_for_both():
    shared = TimmDropPath(0.2)
    model = nn.Sequential(Block(shared), Block(nn.Identity()))
    model[1].drop_path = shared
    replaced, fixed = replace_drop_paths(
        model, lambda site: DropPath(LearnableBernoulliDropout(num_features=1, init_p=site.p))
    )
    assert [s.names for s in replaced] == [("0.drop_path", "1.drop_path")] and not fixed
    assert model[0].drop_path is model[1].drop_path
