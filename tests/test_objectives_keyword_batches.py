"""objective on keyword batches and models returning a mapping (Hugging Face conventions).

The reference is the same model behind a hand-written wrapper that takes one tensor and returns
the logits: with the same seed, the loss and every gradient must be identical.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop import objective
from bayesdrop.nn import ConcreteDropout, LearnableBernoulliDropout


class FakeModelOutput(OrderedDict):  # type: ignore[type-arg]
    """A Hugging Face ``ModelOutput`` in shape: an OrderedDict whose entries are attributes."""


class KeywordNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.drop = LearnableBernoulliDropout(nn.Linear(6, 6), init_p=0.3)
        self.conc = ConcreteDropout(nn.Linear(6, 3))

    def forward(self, input_ids, attention_mask, temperature=1.0):
        h = (self.emb(input_ids) * attention_mask.unsqueeze(-1)).mean(1)
        logits = self.conc(torch.tanh(self.drop(h))) / temperature
        return FakeModelOutput(logits=logits, pooled=h)


class TensorWrapper(nn.Module):
    """What a user writes without keyword-batch support: one tensor in, logits out."""

    def __init__(self, inner: nn.Module, **fixed) -> None:
        super().__init__()
        self.inner, self.fixed = inner, fixed

    def forward(self, ids_and_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = ids_and_mask.unbind(1)
        return self.inner(input_ids=ids, attention_mask=mask, **self.fixed)["logits"]


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _loss_and_grads(model, inputs, y, seed, **kw):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = objective(model, inputs, y, ce, 100, **kw)
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def _check_same(model: nn.Module, batch: dict, y: torch.Tensor, **kw) -> None:
    stacked = torch.stack([batch["input_ids"], batch["attention_mask"].to(batch["input_ids"])], 1)
    fixed = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    wrapper = TensorWrapper(model, **fixed)
    for seed in (0, 1):
        loss, grads = _loss_and_grads(model, batch, y, seed, **kw)
        ref_loss, ref_grads = _loss_and_grads(wrapper, stacked, y, seed, **kw)
        assert torch.equal(loss, ref_loss)
        ref_grads = {k.removeprefix("inner."): v for k, v in ref_grads.items()}
        assert grads.keys() == ref_grads.keys() and grads
        for k in grads:
            assert torch.equal(grads[k], ref_grads[k]), k
    rate = [p for n, p in model.named_parameters() if n.endswith("logit_p")]
    assert rate and all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in rate)


def _small_batch() -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (6, 5), generator=g)
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "temperature": 2.0}, torch.randint(
        0, 3, (6,), generator=g
    )


@pytest.mark.parametrize("pair", ["nograd", "concat"])
def test_keyword_batch_equals_a_tensor_wrapper(pair: str) -> None:
    torch.manual_seed(0)
    model = KeywordNet()
    batch, y = _small_batch()
    _check_same(model, batch, y, pair=pair)


def test_output_key_and_tuple_outputs() -> None:
    torch.manual_seed(0)
    model = KeywordNet()
    batch, y = _small_batch()
    seen = []

    def nll(out, t):
        seen.append(out)
        return ce(out, t)

    objective(model, batch, y, nll, 100)
    assert all(isinstance(o, torch.Tensor) and o.shape == (6, 3) for o in seen)
    seen.clear()
    objective(model, batch, y, lambda o, t: (seen.append(o), o.sum(1))[1], 100, output_key="pooled")
    assert all(o.shape == (6, 6) for o in seen)
    with pytest.raises(
        ValueError, match=r"without an entry 'scores'; its entries are \['logits', 'pooled'\]"
    ):
        objective(model, batch, y, ce, 100, output_key="scores")
    with pytest.raises(TypeError, match="output_key must be a string"):
        objective(model, batch, y, ce, 100, output_key=None)  # type: ignore[arg-type]

    class Tupled(nn.Module):  # several outputs: nll receives the tuple as returned
        def __init__(self) -> None:
            super().__init__()
            self.lin = LearnableBernoulliDropout(nn.Linear(3, 2))

        def forward(self, x):
            out = self.lin(x)
            return out, out.pow(2).sum(1)

    x = torch.randn(4, 3)
    loss = objective(
        Tupled(), x, torch.zeros(4, dtype=torch.long), lambda o, t: ce(o[0], t) + o[1], 10
    )
    assert torch.isfinite(loss)


def test_keyword_batch_bad_input() -> None:
    model = KeywordNet()
    batch, y = _small_batch()
    with pytest.raises(TypeError, match="inputs .* keys must be strings"):
        objective(model, {1: batch["input_ids"]}, y, ce, 100)
    with pytest.raises(TypeError, match=r"inputs \(dict\) holds no tensor"):
        objective(model, {"temperature": 2.0}, y, ce, 100)
    with pytest.raises(TypeError, match="inputs must be a Tensor"):
        objective(model, "ids", y, ce, 100)


def test_tiny_bert_keyword_batch_equals_a_tensor_wrapper() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Dropout) and not full.endswith("self.dropout"):
                setattr(m, child_name, LearnableBernoulliDropout(num_features=32, init_p=0.2))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (4, 10), generator=g)
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[1, 6:] = 0
    y = torch.randint(0, 3, (4,), generator=g)
    _check_same(model, {"input_ids": ids, "attention_mask": mask}, y)
    # a BatchEncoding is a mapping like any other
    enc = transformers.BatchEncoding({"input_ids": ids, "attention_mask": mask})
    loss, _ = _loss_and_grads(model, enc, y, 0)
    ref, _ = _loss_and_grads(model, {"input_ids": ids, "attention_mask": mask}, y, 0)
    assert torch.equal(loss, ref)
