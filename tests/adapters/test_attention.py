"""route_attention_dropout: attention-probability dropout becomes a called module.

Checked on tiny randomly initialised transformers models (BERT, DistilBERT, RoBERTa, GPT-2, ViT,
T5, BART; hidden size 32, 2 layers, 2 heads, vocabulary 100) under the sdpa and eager attention
implementations, against the unrouted model itself: eval outputs bit for bit, and training
outputs with the dropout module made the identity equal to the original's with every dropout
rate 0 (the routed path computes the original attention). The reference formula used for sdpa is
compared with ``F.scaled_dot_product_attention`` in float64. timm is not importable without
torchvision here, so its attention class is reproduced below (its fused and non-fused paths).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop.adapters.attention import (
    attention_with_dropout_module,
    is_transformers_model,
    route_attention_dropout,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ["bert", "distilbert", "roberta", "gpt2", "vit", "t5", "bart"]


def tiny(name: str, p: float = 0.1) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A tiny random model of ``name`` with attention dropout ``p``, and a batch for it."""
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # padding in the second example
    batch: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
    small = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    if name == "bert":
        cfg = T.BertConfig(vocab_size=100, hidden_size=32, attention_probs_dropout_prob=p, **small)
        model = T.BertForSequenceClassification(cfg)
    elif name == "roberta":
        cfg = T.RobertaConfig(
            vocab_size=100, hidden_size=32, attention_probs_dropout_prob=p, pad_token_id=1, **small
        )
        model = T.RobertaForSequenceClassification(cfg)
    elif name == "distilbert":
        cfg = T.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=37, attention_dropout=p
        )
        model = T.DistilBertForSequenceClassification(cfg)
    elif name == "gpt2":
        cfg = T.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32, attn_pdrop=p,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        model = T.GPT2ForSequenceClassification(cfg)
    elif name == "vit":
        cfg = T.ViTConfig(
            image_size=16, patch_size=8, hidden_size=32, attention_probs_dropout_prob=p,
            num_labels=3, **small,
        )  # fmt: skip
        model = T.ViTForImageClassification(cfg)
        batch = {"pixel_values": torch.randn(2, 3, 16, 16)}
    elif name == "t5":
        cfg = T.T5Config(
            vocab_size=100, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2,
            dropout_rate=p, decoder_start_token_id=0,
        )  # fmt: skip
        model = T.T5ForConditionalGeneration(cfg)
        batch["decoder_input_ids"] = ids[:, :4]
    elif name == "bart":
        cfg = T.BartConfig(
            vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
            decoder_ffn_dim=37, max_position_embeddings=32, attention_dropout=p,
        )  # fmt: skip
        model = T.BartForSequenceClassification(cfg)
        ids[:, -1] = 2  # every sequence ends with the end-of-sequence token
    else:
        raise AssertionError(name)
    return model, batch


def attention_calls(name: str) -> int:
    """Attention modules of the tiny model (encoder-decoders: self, cross and decoder self)."""
    return 6 if name in ("t5", "bart") else 2


class Identity(nn.Module):
    """A 'dropout' that keeps everything and records what it is called on."""

    p = 0.0  # the models read the rate in training mode (and ignore it once routed)

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return x


def rates_to_zero(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for attr in ("dropout", "attention_dropout"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("name", MODELS)
def test_eval_bit_for_bit_and_training_path_is_the_original_attention(name, impl):
    model, batch = tiny(name)
    model.set_attn_implementation(impl)
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
    routed = copy.deepcopy(model)
    routing = route_attention_dropout(routed, batch)
    assert len(routing.routed) == attention_calls(name) and not routing.fixed
    assert routing.implementation == f"bayesdrop_{impl}"
    assert model.config._attn_implementation == impl  # the original is not touched
    with torch.no_grad():
        assert torch.equal(routed.eval()(**batch).logits, reference)

    # training mode, every rate 0 in the original; the routed dropout modules keep everything
    rates_to_zero(model)
    rates_to_zero(routed)
    stand_ins = []
    for dotted in routing.routed.values():
        parent, _, key = dotted.rpartition(".")
        stand_ins.append(Identity())
        routed.get_submodule(parent)._modules[key] = stand_ins[-1]
    with torch.no_grad():
        expected = model.train()(**batch).logits
        got = routed.train()(**batch).logits
    if impl == "eager":
        assert torch.equal(got, expected)
    else:  # the reference formula instead of the fused kernel: rounding only
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    for s in stand_ins:  # each called once per forward, on attention probabilities
        assert len(s.inputs) == 1
        probs = s.inputs[0]
        assert probs.dim() == 4 and probs.shape[:2] == (2, 2)
        assert (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "bart"])
def test_training_drops_attention_probabilities_through_the_module(name):
    model, batch = tiny(name, p=0.5)
    routing = route_attention_dropout(model, batch)
    dotted = next(iter(routing.routed.values()))
    drop = model.get_submodule(dotted)
    assert isinstance(drop, nn.Dropout) and drop.p == 0.5
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    drop.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    rates_to_zero(model)
    drop.p = 0.5
    model.train()
    torch.manual_seed(4)
    with torch.no_grad():
        a = model(**batch).logits
        b = model(**batch).logits
    assert not torch.equal(a, b)  # sampling
    probs, out = seen[0]
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)  # attention probabilities
    live = probs > 0
    dropped = (out == 0) & live
    assert torch.allclose(out[live & ~dropped], 2 * probs[live & ~dropped])  # 1/(1-p) scale
    n = int(live.sum())
    assert abs(float(dropped.sum()) / n - 0.5) < 4 * (0.25 / n) ** 0.5
    with torch.no_grad():  # eval: the module is not sampling, the original kernel runs
        model.eval()
        assert torch.equal(model(**batch).logits, model(**batch).logits)


def test_float_rates_get_an_attached_dropout_module_and_zero_rates_stay():
    model, batch = tiny("vit", p=0.25)
    routing = route_attention_dropout(model, batch)
    assert routing.attached == {
        "vit.layers.0.attention.attn_drop": 0.25,
        "vit.layers.1.attention.attn_drop": 0.25,
    }
    assert model.get_submodule("vit.layers.0.attention.attn_drop").p == 0.25

    zero, batch = tiny("bert", p=0.0)
    state = {k: v.clone() for k, v in zero.state_dict().items()}
    routing = route_attention_dropout(zero, batch)
    assert not routing.routed and routing.implementation is None
    assert len(routing.fixed) == 2 and all("p = 0" in why for why in routing.fixed.values())
    assert zero.config._attn_implementation == "sdpa"
    assert all(torch.equal(v, state[k]) for k, v in zero.state_dict().items())


def test_a_transformers_model_inside_a_plain_module_and_the_random_state():
    bert, batch = tiny("bert")

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = bert.bert
            self.head = nn.Linear(32, 3)

        def forward(self, input_ids, attention_mask):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
            return self.head(out.last_hidden_state[:, 0])

    model = Classifier().eval()
    assert not is_transformers_model(model) and is_transformers_model(model.backbone)
    with torch.no_grad():
        reference = model(**batch)
    state = torch.get_rng_state()
    routing = route_attention_dropout(model, batch)
    assert torch.equal(torch.get_rng_state(), state)  # discovery draws nothing for the user
    assert sorted(routing.routed) == [
        "backbone.encoder.layer.0.attention.self",
        "backbone.encoder.layer.1.attention.self",
    ]
    with torch.no_grad():
        assert torch.equal(model(**batch), reference)


def test_routing_a_routed_model_again_changes_nothing():
    model, batch = tiny("gpt2")
    first = route_attention_dropout(model, batch)
    assert first.implementation == "bayesdrop_sdpa" and len(first.routed) == 2
    again = route_attention_dropout(model, batch)
    assert not again.routed and not again.fixed
    assert model.config._attn_implementation == "bayesdrop_sdpa"


def test_models_it_does_not_know_are_left_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Linear(4, 2))
    before = repr(model)
    routing = route_attention_dropout(model)
    assert not routing.routed and not routing.fixed and repr(model) == before


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        route_attention_dropout("bert")  # type: ignore[arg-type]
    model, batch = tiny("bert")
    routing = route_attention_dropout(model)  # no inputs: left unchanged, and said so
    assert not routing.routed and "example_inputs" in routing.fixed[""]
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="example_inputs: the model failed"):
        route_attention_dropout(model, {"input_ids": torch.zeros(2, 3, 4, dtype=torch.long)})


# ------------------------------------------------------------------------ the reference formula
@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal", "gqa"])
def test_reference_formula_matches_scaled_dot_product_attention(mask):
    torch.manual_seed(1)
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    heads_kv = 2 if mask == "gqa" else 4
    k = torch.randn(2, heads_kv, 6, 8, dtype=torch.float64)
    v = torch.randn(2, heads_kv, 6, 3, dtype=torch.float64)
    kw: dict = {"scale": 0.3}
    if mask == "bool":
        m = torch.rand(2, 1, 5, 6) > 0.3
        m[..., 0] = True
        m[0, 0, 2] = False  # a query row with no allowed key
        kw["attn_mask"] = m
    elif mask == "float":
        kw["attn_mask"] = torch.randn(2, 1, 5, 6, dtype=torch.float64)
    elif mask == "causal":
        kw["is_causal"] = True
    elif mask == "gqa":
        kw["enable_gqa"] = True
    expected = F.scaled_dot_product_attention(q, k, v, **kw)
    got = attention_with_dropout_module(q, k, v, drop=nn.Identity(), **kw)
    assert not got.isnan().any()
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_reference_formula_drops_the_probabilities():
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.eye(3)[None, None]

    class Halve(nn.Module):
        def forward(self, x):
            return x * 0.5

    probs = attention_with_dropout_module(q, k, v, drop=nn.Identity())
    assert torch.allclose(attention_with_dropout_module(q, k, v, drop=Halve()), 0.5 * probs)


# ------------------------------------------------------------------------ timm-style attention
class TimmAttention(nn.Module):
    """timm's ``Attention`` (timm/layers/attention.py): fused sdpa or the same in plain ops."""

    def __init__(self, dim: int = 16, heads: int = 2, attn_drop: float = 0.1) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            p = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            q = q * self.scale
            attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


def test_timm_style_fused_attention_is_switched_to_its_module_path():
    torch.manual_seed(0)
    model = nn.Sequential(TimmAttention(), TimmAttention(attn_drop=0.0)).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        fused = model(x)
    routing = route_attention_dropout(model)
    assert routing.routed == {"0": "0.attn_drop"}
    assert "p = 0" in routing.fixed["1"]
    assert model[0].fused_attn is False and model[1].fused_attn is True
    with torch.no_grad():
        diff = (model(x) - fused).abs().max()
    assert diff <= 1e-5 * fused.abs().max()  # the plain-op path: rounding only
    calls = []
    model[0].attn_drop.register_forward_hook(lambda m, a, o: calls.append(o.shape))
    model.train()(x)
    assert calls == [torch.Size([3, 2, 5, 5])]


# ------------------------------------------------------------------------ through convert
@pytest.mark.parametrize("family", ["lbd", "concrete"])
def test_convert_learns_the_attention_dropout_of_a_transformers_model(family):
    from bayesdrop import convert, mc_predict, objective

    model, batch = tiny("bert")
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
    new, report = convert(model, family, example_inputs=batch)
    attention = [r for r in report.replacements if r.name.endswith("attention.self.dropout")]
    assert len(attention) == 2 and all(r.form == "one rate" for r in attention)
    assert not report.fixed and any("bayesdrop_sdpa" in n for n in report.notes)
    assert model.config._attn_implementation == "sdpa"  # the original is untouched
    with torch.no_grad():
        assert torch.equal(new.eval()(**batch).logits, reference)
    new.train()
    y = torch.tensor([0, 1])
    objective(new, batch, y, lambda o, t: F.cross_entropy(o, t, reduction="none"), 100).backward()
    for r in attention:
        grad = new.get_submodule(r.module).dropout.logit_p.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    torch.manual_seed(0)
    result = mc_predict(new, batch, num_samples=8)
    assert result.samples.shape[0] == 8 and result.samples.std(0).max() > 0


def test_convert_with_fixed_attention_lists_the_read_dropout():
    from bayesdrop import convert

    model, batch = tiny("bert")
    new, report = convert(model, "lbd", example_inputs=batch, attention="fixed")
    assert new.config._attn_implementation == "sdpa"
    read = [k for k in report.fixed if k.endswith("attention.self.dropout")]
    assert len(read) == 2
    _, same = convert(model, "lbd", example_inputs=batch, attention=False)
    assert sorted(same.fixed) == sorted(report.fixed)
    with pytest.raises(ValueError, match="attention must be"):
        convert(model, "lbd", example_inputs=batch, attention="yes")


def test_convert_learns_timm_style_attention_dropout():
    from bayesdrop import convert
    from bayesdrop.conversion import SingleRateDropout

    torch.manual_seed(0)
    model = nn.Sequential(TimmAttention(), nn.LayerNorm(16)).eval()
    x = torch.randn(2, 5, 16)
    new, report = convert(model, "lbd", example_inputs=x)
    assert model[0].fused_attn is True and new[0].fused_attn is False
    assert isinstance(new[0].attn_drop, SingleRateDropout)
    assert any("fused_attn switched off" in n for n in report.notes)
    with torch.no_grad():
        assert torch.allclose(new.eval()(x), model(x), rtol=1e-5, atol=1e-6)
