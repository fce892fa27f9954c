"""Training-step time of a BERT-style transformers classifier: nn.Dropout versus LBD.

BertForSequenceClassification with random weights (hidden 128, 2 layers, 4 heads, intermediate
512, vocabulary 1000), keyword batches of 32 sequences of 64 tokens, two classes, Adam, CPU, one
torch thread by default, process CPU time, median of interleaved rounds (ratios measured side by
side in one run). The reference is the model as transformers builds it (``nn.Dropout`` 0.1,
attention dropout inside the fused attention) trained on the plain mean cross-entropy of
``model(**batch).logits``. The LBD model is ``bayesdrop.convert(model, "lbd",
example_inputs=batch)`` (every dropout learned, the attention probabilities' included), trained
through ``bayesdrop.objective`` with the default ``pair="nograd"``. The intermediate rows say
where the time goes: the reference through ``objective`` (its overhead alone), LBD with the
attention dropout left fixed (``attention="fixed"``: fused attention kept), and the LBD model in
eval mode (no masks, no pair: the cost of the converted model's structure).

    python benchmarks/bench_transformers.py [--threads N] [--rounds R]

Skips with a message when transformers is not installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_median  # noqa: E402

import bayesdrop  # noqa: E402

HIDDEN, LAYERS, HEADS, VOCAB, SEQ, BATCH = 128, 2, 4, 1000, 64, 32
N_DATA = 8530


def nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    try:
        import transformers
    except ImportError:
        print("bench_transformers: transformers is not installed; nothing to measure")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        max_position_embeddings=2 * SEQ,
        num_labels=2,
    )
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g),
        "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
    }
    batch["attention_mask"][::3, SEQ // 2 :] = 0  # some padded sequences
    y = torch.randint(0, 2, (BATCH,), generator=g)

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(cfg).train()

    def plain_step(model: torch.nn.Module):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(**batch).logits, y).backward()
            opt.step()

        return step

    def objective_step(model: torch.nn.Module, train: bool = True):
        opt = torch.optim.Adam(bayesdrop.rate_param_groups(model, rate_lr=1e-2), lr=1e-4)
        model.train(train)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            bayesdrop.objective(model, batch, y, nll, N_DATA).backward()
            opt.step()

        return step

    lbd, _ = bayesdrop.convert(build(), "lbd", example_inputs=batch)
    lbd_fixed_attention, _ = bayesdrop.convert(
        build(), "lbd", example_inputs=batch, attention="fixed"
    )
    fns = {
        "nn.Dropout, plain loss": plain_step(build()),
        "nn.Dropout, objective": objective_step(build()),
        "LBD, attention fixed": objective_step(lbd_fixed_attention),
        "LBD (convert), eval mode": objective_step(
            bayesdrop.convert(build(), "lbd", example_inputs=batch)[0], train=False
        ),
        "LBD (convert)": objective_step(lbd),
    }
    print(
        f"BertForSequenceClassification hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads, "
        f"batch {BATCH} x {SEQ} tokens, Adam, CPU threads={torch.get_num_threads()}, "
        f"process CPU time (median of {args.rounds} interleaved rounds)"
    )
    t = interleaved_median(fns, rounds=args.rounds, reps=args.reps, warmup=2)
    base = t["nn.Dropout, plain loss"]
    print(f"{'variant':<28} {'ms/step':>8} {'ratio':>6}")
    for k, v in t.items():
        print(f"{k:<28} {1000 * v:>8.1f} {v / base:>6.2f}")


if __name__ == "__main__":
    main()
