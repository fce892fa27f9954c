"""torch.compile: every family compiles, trains and predicts with changing batch sizes.

A batch of 32 followed by a short one of 7 (a data set's last batch) makes the compiler retrace
with a symbolic batch size; every random draw, every estimator and the antithetic pair of
:func:`bayesdrop.objective` must trace with it. Each family's small MLP is compiled and run on
both sizes in training (plain forward and ``objective`` with ``backward``) and in evaluation
(equal to the eager model, which is deterministic there), and under
:func:`bayesdrop.mc_predict`.

The fast tests use the ``aot_eager`` backend (the compiler's tracing, dynamic shapes and
autograd, without generating C++: no C compiler needed); the ``slow`` ones the default inductor
backend, as a user's ``torch.compile(model)`` runs. Every test skips when torch.compile cannot run
here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop.nn as bnn
from bayesdrop import mc_predict, objective

FAMILIES: dict[str, Callable[[nn.Linear], nn.Module]] = {
    "mc": lambda lin: nn.Sequential(bnn.MCDropout(0.3), lin),
    "lbd": lambda lin: bnn.LearnableBernoulliDropout(lin, init_p=0.3),
    "concrete": lambda lin: bnn.ConcreteDropout(lin),
    "gaussian": lambda lin: bnn.GaussianDropout(lin, p=0.3),
    "variational": lambda lin: bnn.VariationalDropout(lin, noise="B"),
    "sparse": lambda lin: bnn.SparseVariationalDropout(lin),
    "ard": lambda lin: bnn.ARDDropout(lin),
}
ALL = [*FAMILIES, "fast"]


def model_for(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "fast":
        return bnn.FastDropoutMLP(10, [16], 3, p=0.3, input_p=0.2)
    wrap = FAMILIES[family]
    return nn.Sequential(wrap(nn.Linear(10, 16)), nn.ReLU(), wrap(nn.Linear(16, 3)))


def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


@functools.cache
def compile_unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot compile here (``None`` when it can)."""
    try:
        f = torch.compile(lambda x: torch.relu(x) + 1.0, backend=backend, dynamic=False)
        f(torch.zeros(2))
    except Exception as err:  # no C compiler, unsupported Python, ...
        return f"torch.compile(backend={backend!r}) does not run here: {type(err).__name__}: {err}"
    return None


@pytest.fixture(autouse=True)
def fresh_compiler() -> Iterator[None]:
    """Each test starts with an empty compile cache (the recompile limit counts per code object,
    and every test compiles the same nn.Sequential.forward)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def check_family(family: str, backend: str) -> None:
    why = compile_unavailable(backend)
    if why is not None:
        pytest.skip(why)
    eager = model_for(family)
    compiled = torch.compile(eager, backend=backend)
    g = torch.Generator().manual_seed(1)
    for size in (32, 7, 32, 5):
        x = torch.randn(size, 10, generator=g)
        y = torch.randint(0, 3, (size,), generator=g)
        compiled.train()
        out = compiled(x)
        assert out.shape == (size, 3) and bool(torch.isfinite(out).all())
        eager.zero_grad()
        loss = objective(compiled, x, y, nll, n_data=100)
        loss.backward()
        assert bool(torch.isfinite(loss))
        grads = [p.grad for p in eager.parameters()]
        assert all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads)
        assert any(bool(gr.abs().sum() > 0) for gr in grads if gr is not None)
        compiled.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), eager(x))
        res = mc_predict(compiled, x, num_samples=4)
        assert res.probs.shape == (size, 3) and bool(torch.isfinite(res.probs).all())
    if family == "fast":  # its training loss is the expected NLL under the output moments
        expected = torch.compile(eager.expected_nll, backend=backend)
        for size in (32, 7):
            x, y = torch.randn(size, 10, generator=g), torch.randint(0, 3, (size,), generator=g)
            torch.testing.assert_close(expected(x, y), eager.expected_nll(x, y))


@pytest.mark.parametrize("family", ALL)
def test_family_compiles_with_changing_batch_size(family: str) -> None:
    check_family(family, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL)
def test_family_compiles_with_inductor(family: str) -> None:
    check_family(family, "inductor")


def test_lbd_pair_traces_without_graph_breaks() -> None:
    """The antithetic pair of a compiled LBD model runs as whole graphs (a graph break per LBD
    module, reading the random stream's state, made a compiled step slower than eager)."""
    why = compile_unavailable("aot_eager")
    if why is not None:
        pytest.skip(why)
    from torch._dynamo.utils import counters

    counters.clear()
    model = torch.compile(model_for("lbd"), backend="aot_eager")
    g = torch.Generator().manual_seed(2)
    graphs = []
    for size in (32, 7, 9, 11, 13):
        x, y = torch.randn(size, 10, generator=g), torch.randint(0, 3, (size,), generator=g)
        objective(model, x, y, nll, n_data=100).backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert dict(counters["graph_break"]) == {}
    # once the batch size is symbolic, new sizes reuse the graphs (no recompile per size)
    assert graphs[-1] == graphs[-3], graphs


@pytest.mark.parametrize("family", ["mc", "lbd", "concrete", "gaussian", "variational"])
def test_compiled_model_draws_the_eager_noise(family: str) -> None:
    """Inside a compiled graph the draws come from the global generator as in eager mode, so a
    compiled training forward equals the eager one from the same seed (also after the batch size
    became symbolic)."""
    why = compile_unavailable("aot_eager")
    if why is not None:
        pytest.skip(why)
    eager = model_for(family).train()
    compiled = torch.compile(eager, backend="aot_eager")
    g = torch.Generator().manual_seed(3)
    for size in (32, 7, 9):
        x = torch.randn(size, 10, generator=g)
        torch.manual_seed(size)
        out = compiled(x)
        torch.manual_seed(size)
        torch.testing.assert_close(out, eager(x))


def test_uniform_draws_without_generator_are_the_global_stream() -> None:
    """Leaving ``generator=None`` out of the factory call changes no number in eager mode."""
    torch.manual_seed(0)
    ref = bnn.MCDropout(0.5).train()(torch.ones(4, 6))
    torch.manual_seed(0)
    u = torch.rand(4, 6)
    torch.testing.assert_close(ref, (u >= 0.5).float() * 2.0)
