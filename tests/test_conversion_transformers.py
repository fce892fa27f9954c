"""convert on Hugging Face transformers models built from tiny configs with random weights.

For BERT, DistilBERT, RoBERTa, GPT-2, T5, BART and ViT and each of LBD, Concrete, MC and Gaussian
dropout: the conversion succeeds on a keyword batch, eval outputs equal the original's bit for
bit, a training step through :func:`bayesdrop.objective` gives a finite loss and gradients on
every learned rate, :func:`bayesdrop.mc_predict` takes the keyword batch, and every dropout that
still fires is listed in ``report.fixed``. The last is checked independently of the conversion's
own detector: with the bayesdrop modules not sampling and every listed location silenced (the
``F.dropout`` and ``F.scaled_dot_product_attention`` calls it makes itself patched to rate 0),
a training-mode forward must equal the eval-mode one; a dropout missing from the list, or listed
under the wrong module, changes it.
Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop.nn import DropoutModule

transformers = pytest.importorskip("transformers")

FAMILIES = ["lbd", "concrete", "mc", "gaussian"]
LEARNED = {"lbd", "concrete"}
MODELS = ["bert", "distilbert", "roberta", "gpt2", "t5", "bart", "vit"]


def build(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A tiny model (hidden size 32, 2 layers, 2 heads, vocabulary 100) and a keyword batch."""
    T = transformers
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    common = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    model: nn.Module
    if name == "bert":
        model = T.BertForSequenceClassification(T.BertConfig(**common))
    elif name == "roberta":
        model = T.RobertaForSequenceClassification(T.RobertaConfig(**common, pad_token_id=1))
    elif name == "distilbert":
        config = T.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=2
        )
        model = T.DistilBertForSequenceClassification(config)
    elif name == "gpt2":
        config = T.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=2,
            pad_token_id=0, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        model = T.GPT2ForSequenceClassification(config)
    elif name == "t5":
        config = T.T5Config(
            vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, num_labels=2,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )  # fmt: skip
        model = T.T5ForSequenceClassification(config)
        ids[:, -1] = 1  # every example ends with <eos>
    elif name == "bart":
        config = T.BartConfig(
            vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=64, num_labels=2, dropout=0.1,
            attention_dropout=0.1, activation_dropout=0.1, eos_token_id=2, pad_token_id=1,
        )  # fmt: skip
        model = T.BartForSequenceClassification(config)
        ids[:, -1] = 2
    elif name == "vit":
        config = T.ViTConfig(
            image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, num_labels=2, hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
        )  # fmt: skip
        model = T.ViTForImageClassification(config)
        return model.eval(), {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    else:
        raise AssertionError(name)
    return model.eval(), {"input_ids": ids, "attention_mask": mask}


@contextlib.contextmanager
def silenced(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Dropout called directly by the modules ``names`` (``"<model>"``: the root) runs at rate 0.

    Only calls whose innermost running module is listed are silenced, so a listed module does
    not cover the dropout of its submodules.
    """
    wanted = {"" if n == "<model>" else n for n in names}
    stack: list[str] = []
    handles = []

    def leave(*_: Any) -> None:
        stack.pop()

    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda *_, name=name: stack.append(name)))
        handles.append(m.register_forward_hook(leave, always_call=True))
    dropout, sdpa = F.dropout, F.scaled_dot_product_attention

    def quiet() -> bool:
        return bool(stack) and stack[-1] in wanted

    def quiet_dropout(x: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        return dropout(x, p, training and not quiet(), inplace)

    def quiet_sdpa(*args: Any, dropout_p: float = 0.0, **kwargs: Any) -> Any:
        return sdpa(*args, dropout_p=0.0 if quiet() else dropout_p, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "dropout", quiet_dropout)
        mp.setattr(F, "scaled_dot_product_attention", quiet_sdpa)
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@pytest.fixture(scope="module", params=MODELS)
def hf_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module, dict[str, torch.Tensor]]:
    model, batch = build(request.param)
    return request.param, model, batch


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_hugging_face_model(hf_model, family):
    name, model, batch = hf_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(**batch).logits
    new, report = bayesdrop.convert(model, family, example_inputs=batch)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    ours = [m for m in new.modules() if isinstance(m, DropoutModule)]
    assert len(ours) == len(report) > 0 or name == "bart"  # BART applies all its dropout in code
    new.eval()
    with torch.no_grad():
        torch.testing.assert_close(new(**batch).logits, expected, rtol=0, atol=0)

    # every dropout that still fires is listed: silence the listed ones, turn ours off, and a
    # training-mode forward is the eval-mode forward
    new.train()
    for m in ours:
        m.eval()
    with torch.no_grad(), silenced(new, list(report.fixed)):
        torch.manual_seed(0)
        torch.testing.assert_close(new(**batch).logits, expected, rtol=0, atol=0)
    if any("p = 0" not in why for why in report.fixed.values()):  # what is listed does fire
        with torch.no_grad():
            torch.manual_seed(0)
            assert not torch.equal(new(**batch).logits, expected)

    # one training step
    new.train()
    labels = torch.tensor([0, 1])
    loss = bayesdrop.objective(
        new, batch, labels, lambda out, y: F.cross_entropy(out, y, reduction="none"), n_data=100
    )
    loss.backward()
    assert bool(torch.isfinite(loss))
    if family in LEARNED and ours:
        for m in ours:
            grads = [p.grad for p in m.rate_parameters()]
            assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)

    result = bayesdrop.mc_predict(new, batch, num_samples=3, max_batch=2)
    assert result.probs.shape == (2, 2)
    assert bool(torch.isfinite(result.probs).all())


def test_report_of_bert_names_what_stays_fixed():
    model, batch = build("bert")
    _, report = bayesdrop.convert(model, "lbd", example_inputs=batch)
    assert not report.fixed  # attention dropout learned (attention="learned", the default)
    _, report = bayesdrop.convert(model, "lbd", example_inputs=batch, attention="fixed")
    attention = "bert.encoder.layer.0.attention.self"
    assert report.fixed[f"{attention}.dropout"].startswith("Dropout(p=0.1) read, not called")
    assert "F.scaled_dot_product_attention(dropout_p=0.1)" in report.fixed[attention]
    assert {r.granularity for r in report.replacements} == {"per unit"}


def test_t5_reads_of_a_wrapped_layer_work():
    """T5's feed-forward block reads ``wo.weight.dtype`` after ``wo`` is wrapped."""
    model, batch = build("t5")
    new, report = bayesdrop.convert(model, "concrete", example_inputs=batch)
    wo = new.transformer.encoder.block[0].layer[1].DenseReluDense.wo
    assert isinstance(wo, bayesdrop.nn.ConcreteDropout) and wo.weight is wo.layer.weight
    assert "p = 0, no dropout to learn" in report.fixed["classification_head.dropout"]
    new.train()
    assert bool(torch.isfinite(new(**batch).logits).all())


def test_bart_functional_dropout_is_listed():
    model, batch = build("bart")
    _, report = bayesdrop.convert(model, "lbd", example_inputs=batch)
    calls = {k: v for k, v in report.fixed.items() if v.startswith("dropout(p=0.1)")}
    # 2 encoder and 2 decoder layers: 2 calls each (attention output, feed-forward), plus the
    # activation dropout, plus the embeddings of encoder and decoder
    assert sorted(calls) == [
        "model.decoder",
        "model.decoder.layers.0",
        "model.decoder.layers.1",
        "model.encoder",
        "model.encoder.layers.0",
        "model.encoder.layers.1",
    ]
    assert "x3" in calls["model.encoder.layers.0"] and "x4" in calls["model.decoder.layers.0"]
