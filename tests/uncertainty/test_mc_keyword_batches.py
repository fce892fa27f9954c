"""mc_predict on keyword batches and models returning a mapping (Hugging Face conventions)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

from bayesdrop.nn import LearnableBernoulliDropout
from bayesdrop.uncertainty import mc_predict, mc_sampling, sample_seeds


class FakeModelOutput(OrderedDict):  # type: ignore[type-arg]
    """A Hugging Face ``ModelOutput`` in shape: an OrderedDict whose entries are attributes."""


class KeywordNet(nn.Module):
    """``model(input_ids=..., attention_mask=..., scale=...)`` returning a ModelOutput-like dict."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, scale: float = 1.0):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1)
        logits = self.head(self.drop(h.mean(1))) * scale
        return FakeModelOutput(logits=logits, hidden=h)


def _batch(b: int = 5, t: int = 6) -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 20, (b, t), generator=g)
    mask = torch.ones(b, t)
    mask[1, 4:] = 0.0
    return {"input_ids": ids, "attention_mask": mask, "scale": 2.0}


def _loop(model: nn.Module, batch: dict[str, Any], seeds: list[int], key: str) -> torch.Tensor:
    """The documented reference: one seeded pass per sample."""
    outs = []
    with mc_sampling(model), torch.no_grad():
        for s in seeds:
            torch.manual_seed(s)
            outs.append(torch.softmax(model(**batch)[key], dim=-1))
    return torch.stack(outs)


@pytest.mark.parametrize("max_batch", [5, 15, None])
def test_keyword_batch_and_mapping_output_equal_the_seeded_loop(max_batch: int | None) -> None:
    torch.manual_seed(0)
    model, batch = KeywordNet(), _batch()
    seeds = sample_seeds(6, torch.Generator().manual_seed(1))
    res = mc_predict(
        model, batch, 6, generator=torch.Generator().manual_seed(1), max_batch=max_batch
    )
    ref = _loop(model, batch, seeds, "logits")
    assert res.samples is not None
    torch.testing.assert_close(res.samples, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(res.samples[0], res.samples[1])  # the passes did sample


def test_output_key_selects_the_entry() -> None:
    class TwoHeads(KeywordNet):
        def forward(self, input_ids, attention_mask, scale=1.0):  # type: ignore[override]
            out = super().forward(input_ids, attention_mask, scale)
            return FakeModelOutput(start_logits=-out["logits"], logits=out["logits"])

    torch.manual_seed(0)
    model, batch = TwoHeads(), _batch()
    gen = torch.Generator().manual_seed(4)
    res = mc_predict(model, batch, 4, generator=gen, output_key="start_logits", max_batch=20)
    ref = _loop(model, batch, sample_seeds(4, torch.Generator().manual_seed(4)), "start_logits")
    torch.testing.assert_close(res.samples, ref, rtol=0, atol=1e-6)


def test_tuple_output_gives_its_first_element() -> None:
    class Tupled(KeywordNet):
        def forward(self, input_ids, attention_mask, scale=1.0):  # type: ignore[override]
            out = super().forward(input_ids, attention_mask, scale)
            return out["logits"], out["hidden"]

    torch.manual_seed(0)
    model, batch = Tupled(), _batch()
    res = mc_predict(model, batch, 3, generator=torch.Generator().manual_seed(2))
    with mc_sampling(model), torch.no_grad():
        seeds = sample_seeds(3, torch.Generator().manual_seed(2))
        ref = []
        for s in seeds:
            torch.manual_seed(s)
            ref.append(torch.softmax(model(**batch)[0], -1))
    torch.testing.assert_close(res.samples, torch.stack(ref), rtol=0, atol=1e-6)


def test_keyword_batch_bad_input() -> None:
    model = KeywordNet()
    with pytest.raises(TypeError, match="keys must be strings"):
        mc_predict(model, {0: torch.zeros(2, 3)}, 2)
    with pytest.raises(ValueError, match=r"x\['attention_mask'\] must be finite"):
        mc_predict(
            model,
            {
                "input_ids": torch.zeros(2, 3, dtype=torch.long),
                "attention_mask": torch.full((2, 3), float("nan")),
            },
            2,
        )
    with pytest.raises(ValueError, match="x has no batch dimension batch_dim=2"):
        mc_predict(model, _batch(), 2, batch_dim=2)


# --------------------------------------------------------------------------- transformers
def tiny_bert(lbd: bool) -> nn.Module:
    """A BertForSequenceClassification (hidden 32, 2 layers, vocab 100, random weights); with
    ``lbd`` its hidden-state dropouts are LearnableBernoulliDropout(num_features=32)."""
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
    if lbd:
        for name, m in list(model.named_modules()):
            for child_name, child in list(m.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if isinstance(child, nn.Dropout) and not full.endswith("self.dropout"):
                    setattr(m, child_name, LearnableBernoulliDropout(num_features=32, init_p=0.2))
    return model


def bert_batch(b: int = 4, t: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 100, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("lbd", [False, True], ids=["nn.Dropout", "lbd"])
@pytest.mark.parametrize("max_batch", [4, 24])
def test_bert_keyword_batch_equals_the_seeded_loop(lbd: bool, max_batch: int) -> None:
    model, batch = tiny_bert(lbd), bert_batch()
    res = mc_predict(
        model, batch, 6, generator=torch.Generator().manual_seed(5), max_batch=max_batch
    )
    ref = _loop(model, batch, sample_seeds(6, torch.Generator().manual_seed(5)), "logits")
    assert res.samples is not None and res.samples.shape == (6, 4, 3)
    torch.testing.assert_close(res.samples, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(res.samples[0], res.samples[1])
    assert model.training  # modes restored
