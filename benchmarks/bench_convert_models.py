"""convert on Hugging Face transformers models: model x family table.

For BERT, DistilBERT, RoBERTa, GPT-2, T5, BART and ViT (transformers, small configs with random
weights: hidden size 64, 2 layers, 2 heads, vocabulary 100, batch 8 of 32 tokens or 32x32 images;
nothing is downloaded) and each of LBD, Concrete, MC and Gaussian dropout, the columns are:

* ``convert``: whether ``bayesdrop.convert(model, family, example_inputs=batch)`` succeeds;
* ``eval |diff|``: the largest absolute difference of the eval-mode logits from the original's;
* ``fixed``: how many entries ``report.fixed`` lists (dropout that still fires, or stays as it
  was), with their reasons counted;
* ``step ratio``: CPU time of one training step of the converted model through
  :func:`bayesdrop.objective` over one step of the original (``F.cross_entropy`` on its logits),
  both with Adam; one torch thread, process CPU time, median of interleaved rounds;
* ``mc_predict``: whether :func:`bayesdrop.mc_predict` runs on the keyword batch and gives
  finite probabilities.

timm and torchvision models are added when they import here.

    python benchmarks/bench_convert_models.py [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_median  # noqa: E402

import bayesdrop  # noqa: E402

FAMILIES = ["lbd", "concrete", "mc", "gaussian"]
MODELS = ["bert", "distilbert", "roberta", "gpt2", "t5", "bart", "vit"]


def build(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers as T

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (8, 32), generator=g)
    mask = torch.ones(8, 32, dtype=torch.long)
    common = dict(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    if name == "bert":
        model = T.BertForSequenceClassification(T.BertConfig(**common))
    elif name == "roberta":
        model = T.RobertaForSequenceClassification(T.RobertaConfig(**common, pad_token_id=1))
    elif name == "distilbert":
        model = T.DistilBertForSequenceClassification(
            T.DistilBertConfig(vocab_size=100, dim=64, n_layers=2, n_heads=2, hidden_dim=128)
        )
    elif name == "gpt2":
        model = T.GPT2ForSequenceClassification(
            T.GPT2Config(
                vocab_size=100,
                n_embd=64,
                n_layer=2,
                n_head=2,
                n_positions=64,
                num_labels=2,
                pad_token_id=0,
                bos_token_id=0,
                eos_token_id=0,
            )  # fmt: skip
        )
    elif name == "t5":
        model = T.T5ForSequenceClassification(
            T.T5Config(
                vocab_size=100,
                d_model=64,
                d_kv=32,
                d_ff=128,
                num_layers=2,
                num_heads=2,
                num_labels=2,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )  # fmt: skip
        )
        ids[:, -1] = 1
    elif name == "bart":
        model = T.BartForSequenceClassification(
            T.BartConfig(
                vocab_size=100,
                d_model=64,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=128,
                decoder_ffn_dim=128,
                max_position_embeddings=64,
                num_labels=2,
                dropout=0.1,
                attention_dropout=0.1,
                activation_dropout=0.1,
                eos_token_id=2,
                pad_token_id=1,
            )  # fmt: skip
        )
        ids[:, -1] = 2
    elif name == "vit":
        model = T.ViTForImageClassification(
            T.ViTConfig(
                image_size=32,
                patch_size=8,
                num_channels=3,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
                num_labels=2,
                hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1,
            )  # fmt: skip
        )
        return model.eval(), {"pixel_values": torch.randn(8, 3, 32, 32, generator=g)}
    else:
        raise ValueError(name)
    return model.eval(), {"input_ids": ids, "attention_mask": mask}


def timm_models() -> tuple[dict[str, Callable[[], tuple[nn.Module, Any]]], str]:
    """timm models if timm imports here, else the reason it does not."""
    try:
        import timm
    except Exception as err:  # timm imports torchvision, which may not import with this torch
        return {}, f"timm does not import here ({type(err).__name__}: {err})"

    def make(arch: str, **kw: Any) -> Callable[[], tuple[nn.Module, Any]]:
        def f() -> tuple[nn.Module, Any]:
            torch.manual_seed(0)
            model = timm.create_model(arch, pretrained=False, num_classes=2, **kw)
            return model.eval(), torch.randn(8, 3, 32, 32)

        return f

    return {
        "timm vit": make("vit_tiny_patch16_224", img_size=32, patch_size=8, drop_rate=0.1,
                         attn_drop_rate=0.1, drop_path_rate=0.1, depth=2),
        "timm convnext": make("convnext_atto", drop_path_rate=0.1, drop_rate=0.1),
    }, ""  # fmt: skip


def reasons(fixed: dict[str, str]) -> str:
    def kind(why: str) -> str:
        for key, label in (
            ("read, not called", "read-not-called"),
            ("p = 0", "p=0"),
            ("scaled_dot_product_attention", "sdpa dropout_p"),
            ("drop path", "drop path"),
            ("not called when", "not reached"),
            ("attention-probability", "attention"),
            ("dropout(", "F.dropout"),
            ("Bernoulli", "bernoulli"),
        ):
            if key in why:
                return label
        return "other"

    counts = Counter(kind(w) for w in fixed.values())
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out["logits"]


def step(model: nn.Module, batch: Any, labels: torch.Tensor, converted: bool) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, reduction="none")

    def run() -> None:
        opt.zero_grad()
        if converted:
            loss = bayesdrop.objective(model, batch, labels, nll, n_data=1000)
        else:
            out = model(**batch) if isinstance(batch, dict) else model(batch)
            loss = nll(logits(out), labels).mean()
        loss.backward()
        opt.step()

    return run


def row(name: str, make: Callable[[], tuple[nn.Module, Any]], family: str, rounds: int) -> str:
    model, batch = make()
    call = (lambda m: m(**batch)) if isinstance(batch, dict) else (lambda m: m(batch))
    with torch.no_grad():
        expected = logits(call(model))
    try:
        new, report = bayesdrop.convert(model, family, example_inputs=batch)
    except Exception as err:
        return f"{name:<14} {family:<9} FAILED: {type(err).__name__}: {str(err)[:80]}"
    new.eval()
    with torch.no_grad():
        diff = float((logits(call(new)) - expected).abs().max())
    labels = torch.arange(8) % 2
    t = interleaved_median(
        {
            "original": step(model, batch, labels, False),
            "converted": step(new, batch, labels, True),
        },
        rounds=rounds,
        reps=3,
        warmup=2,
    )
    try:
        res = bayesdrop.mc_predict(new, batch, num_samples=4)
        mc = "ok" if bool(torch.isfinite(res.probs).all()) else "non-finite"
    except Exception as err:
        mc = f"FAILED ({type(err).__name__})"
    return (
        f"{name:<14} {family:<9} {'ok':<7} {diff:>10.1e} {len(report):>5} {len(report.fixed):>5}"
        f" {t['converted'] / t['original']:>6.2f}  {mc:<10} {reasons(report.fixed)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}, CPU threads="
        f"{torch.get_num_threads()}, step ratio: process CPU time, median of {args.rounds} "
        "interleaved rounds"
    )
    print(
        f"{'model':<14} {'family':<9} {'convert':<7} {'eval|diff|':>10} {'conv':>5} {'fixed':>5}"
        f" {'step x':>6}  {'mc_predict':<10} fixed: reasons"
    )
    makers: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
        m: (lambda m=m: build(m)) for m in MODELS
    }
    extra, why = timm_models()
    makers.update(extra)
    for name, make in makers.items():
        for family in FAMILIES:
            print(row(name, make, family, args.rounds), flush=True)
    if why:
        print(f"\n{why}")


if __name__ == "__main__":
    main()
