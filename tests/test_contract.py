"""Contract tests shared by every dropout family (the conventions every module follows).

Each family supplies only a factory; the checks are the same for all: ``p`` and ``kl()`` shapes,
train samples / eval deterministic / MC sampling, state_dict round trip (also through
``torch.load(weights_only=True)``), bit-identical reruns with the same generator, float64,
bfloat16 autocast with float32 rate parameters, training through ``objective``, and tracing by
``torch._dynamo`` without graph breaks. CUDA variants run when a GPU is present.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop.nn as bnn
from bayesdrop import objective
from bayesdrop.nn import DropoutModule

IN, OUT = 6, 3


def _factories() -> dict[str, Callable[[torch.Generator | None], nn.Module]]:
    return {
        "mc": lambda g: nn.Sequential(bnn.MCDropout(0.3, generator=g), nn.Linear(IN, OUT)),
        "lbd-arm": lambda g: bnn.LearnableBernoulliDropout(
            nn.Linear(IN, OUT), estimator="arm", generator=g
        ),
        "lbd-disarm": lambda g: bnn.LearnableBernoulliDropout(nn.Linear(IN, OUT), generator=g),
        "concrete": lambda g: bnn.ConcreteDropout(nn.Linear(IN, OUT), generator=g),
        "gaussian-A": lambda g: bnn.GaussianDropout(
            nn.Linear(IN, OUT), p=0.3, noise="A", generator=g
        ),
        "gaussian-B": lambda g: bnn.GaussianDropout(
            nn.Linear(IN, OUT), p=0.3, noise="B", generator=g
        ),
        "variational-A": lambda g: bnn.VariationalDropout(
            nn.Linear(IN, OUT), noise="A", generator=g
        ),
        "variational-B": lambda g: bnn.VariationalDropout(
            nn.Linear(IN, OUT), noise="B", generator=g
        ),
        "sparse": lambda g: bnn.SparseVariationalDropout(nn.Linear(IN, OUT), generator=g),
        "ard": lambda g: bnn.ARDDropout(nn.Linear(IN, OUT), generator=g),
    }


FACTORIES = _factories()
NAMES = list(FACTORIES)


def make(name: str, seed: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return FACTORIES[name](g)


def test_every_registered_family_is_covered():
    """The contract runs on every family bayesdrop.nn exports and convert can name."""
    from bayesdrop.conversion import FAMILIES

    exported = {
        name
        for name in bnn.__all__
        if isinstance(getattr(bnn, name), type)
        and issubclass(getattr(bnn, name), DropoutModule)
        and getattr(bnn, name) is not DropoutModule
    }
    covered = {type(m).__name__ for name in NAMES for m in dropout_modules(make(name))}
    # fast dropout samples no noise (it propagates Gaussian moments): the sampling contract
    # does not apply; its own tests cover it
    deterministic = {"FastDropoutLinear", "FastDropoutMLP"}
    assert exported - covered == deterministic, f"no contract factory for {exported - covered}"
    assert set(FAMILIES.values()) <= covered


def dropout_modules(model: nn.Module) -> list[DropoutModule]:
    return [m for m in model.modules() if isinstance(m, DropoutModule)]


def _nll(out, y):
    return F.cross_entropy(out, y, reduction="none")


@pytest.mark.parametrize("name", NAMES)
def test_p_and_kl(name):
    for m in dropout_modules(make(name)):
        p = m.p
        assert isinstance(p, torch.Tensor) and p.dim() >= 1 and not p.requires_grad
        assert ((p >= 0) & (p < 1)).all()
        k = m.kl()
        assert k.dim() == 0 and torch.isfinite(k)


@pytest.mark.parametrize("name", NAMES)
def test_train_samples_eval_deterministic_mc_samples(name):
    model = make(name)
    x = torch.randn(64, IN)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    a = model(x)
    assert isinstance(a, torch.Tensor) and torch.equal(a, model(x))
    for m in dropout_modules(model):
        m.mc_sampling = True
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_weights_only(name):
    a = make(name)
    with torch.no_grad():
        for prm in a.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = FACTORIES[name](None)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(5, IN)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_bit_identical_training(name):
    def run():
        model = make(name, seed=7)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(8, IN, generator=g), torch.randint(0, OUT, (8,), generator=g)
            opt.zero_grad()
            objective(model, x, y, _nll, 100).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_float64(name):
    model = make(name).double()
    x, y = torch.randn(8, IN, dtype=torch.float64), torch.randint(0, OUT, (8,))
    loss = objective(model, x, y, _nll, 100)
    assert loss.dtype == torch.float64
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast_keeps_rate_parameters_float32(name):
    model = make(name)
    x, y = torch.randn(8, IN), torch.randint(0, OUT, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = objective(model, x, y, _nll, 100)
    loss.float().backward()
    for pname, prm in model.named_parameters():
        assert prm.dtype == torch.float32, pname
        if prm.grad is not None:
            assert torch.isfinite(prm.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_dynamo_traces_without_graph_breaks(name):
    import torch._dynamo as dynamo

    model = make(name)
    x = torch.randn(4, IN)
    for mode in ("train", "eval", "mc"):
        model.train(mode == "train")
        for m in dropout_modules(model):
            m.mc_sampling = mode == "mc"
        dynamo.reset()
        explanation = dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0, (mode, explanation.break_reasons)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_training_step(name):
    model = make(name).cuda()
    x, y = torch.randn(8, IN, device="cuda"), torch.randint(0, OUT, (8,), device="cuda")
    objective(model, x, y, _nll, 100).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _every_module() -> dict[str, Callable[[], nn.Module]]:
    """Every dropout module bayesdrop ships, wrapper and bare forms, fast dropout included."""
    out: dict[str, Callable[[], nn.Module]] = {
        name: (lambda n=name: dropout_modules(make(n))[0]) for name in NAMES
    }
    out["fast-linear"] = lambda: bnn.FastDropoutLinear(IN, OUT)
    out["fast-mlp"] = lambda: bnn.FastDropoutMLP(IN, [5], OUT)
    out["mc-channelwise"] = lambda: bnn.MCDropout(0.3, channelwise=True)
    for cls in (bnn.LearnableBernoulliDropout, bnn.ConcreteDropout):
        out[f"{cls.__name__}-bare"] = lambda c=cls: c(num_features=IN)
    out["gaussian-bare"] = lambda: bnn.GaussianDropout(p=0.3)
    return out


EVERY = _every_module()


@pytest.mark.parametrize("mode", ["train", "eval", "mc"])
@pytest.mark.parametrize("name", list(EVERY))
def test_wrong_input_dtype_is_refused_naming_the_expected_dtype(name, mode):
    """int64, bool and complex inputs, and a half input to a float32 module outside autocast, are
    refused by every module before any work with a TypeError naming the module and the dtype it
    expects (not torch's internal 'mat1 and mat2' or 'not implemented for Long')."""
    m = EVERY[name]()
    m.train(mode == "train")
    for d in dropout_modules(m) or [m]:
        d.mc_sampling = mode == "mc"
    params = [p for p in m.parameters() if p.is_floating_point()]
    has_layer = getattr(m, "layer", None) is not None or name.startswith("fast")
    want = "torch.float32" if has_layer else "a floating-point dtype"
    for dtype in (torch.int64, torch.bool, torch.complex64):
        x = torch.ones(4, IN, dtype=dtype)
        with pytest.raises(TypeError, match=rf"{type(m).__name__}: input must be a real floating"):
            m(x)
        with pytest.raises(TypeError, match=want):
            m(x)
    x16 = torch.randn(4, IN).half()
    if has_layer:
        assert params and all(p.dtype == torch.float32 for p in params)
        with pytest.raises(
            TypeError,
            match=r"dtype of the module's parameters, torch.float32, but got torch.float16",
        ):
            m(x16)
        # the same input under autocast, and the module converted to half, are accepted
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert m(x16.bfloat16()).is_floating_point()
        m.double()
        assert m(torch.randn(4, IN, dtype=torch.float64)).dtype == torch.float64
    else:  # no parameters meet the input: any floating dtype is used as given
        assert m(x16).dtype == torch.float16
    if params:  # nothing was changed by the refused calls
        assert all(torch.isfinite(p).all() for p in m.parameters())


def test_a_packed_sequence_of_the_wrong_dtype_is_refused():
    from torch.nn.utils.rnn import pack_padded_sequence

    m = bnn.LearnableBernoulliDropout(nn.LSTM(IN, 4, batch_first=True))
    packed = pack_padded_sequence(torch.ones(2, 3, IN).double(), [3, 2], batch_first=True)
    with pytest.raises(TypeError, match="torch.float32, but got torch.float64"):
        m(packed)
