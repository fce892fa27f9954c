"""What learned attention-probability dropout costs on a BERT-style transformers model.

``BertForSequenceClassification`` from a small configuration with random weights (hidden size
128, 2 layers, 4 heads, feed-forward 256, vocabulary 1000; batch 16 of 64 tokens; nothing is
downloaded). One training step (forward, backward, Adam) of each variant, relative to the
original model's step (``F.cross_entropy`` on its logits), one torch thread, process CPU time,
median of interleaved rounds:

* ``routed``: the original with its attention dropout routed through its dropout module
  (:func:`bayesdrop.adapters.route_attention_dropout`), nothing converted;
* ``<family>, attention learned``: ``convert(model, family)`` (the default ``attention="learned"``),
  trained through :func:`bayesdrop.objective`;
* ``<family>, attention fixed``: ``convert(model, family, attention="fixed")``.

Also the eval-mode forward of the routed model relative to the original's (the original
attention kernel runs when the dropout does not sample).

    python benchmarks/bench_attention_routing.py [--rounds R] [--families lbd concrete]
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_median  # noqa: E402

import bayesdrop  # noqa: E402
from bayesdrop.adapters import route_attention_dropout  # noqa: E402


def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--families", nargs="*", default=["lbd", "concrete"])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
    )
    model = BertForSequenceClassification(config)
    batch = {
        "input_ids": torch.randint(0, 1000, (16, 64)),
        "attention_mask": torch.ones(16, 64, dtype=torch.long),
    }
    y = torch.randint(0, 2, (16,))
    routed = copy.deepcopy(model)
    route_attention_dropout(routed, batch)
    variants: dict[str, tuple[nn.Module, bool]] = {
        "original": (model, False),
        "routed": (routed, False),
    }
    for family in args.families:
        for attention in ("learned", "fixed"):
            new, _ = bayesdrop.convert(model, family, example_inputs=batch, attention=attention)
            variants[f"{family}, attention {attention}"] = (new, True)

    def step(m: nn.Module, through_objective: bool) -> Callable[[], None]:
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)

        def run() -> None:
            m.train()
            opt.zero_grad()
            if through_objective:
                loss = bayesdrop.objective(m, batch, y, nll, n_data=1000)
            else:
                loss = nll(m(**batch).logits, y).mean()
            loss.backward()
            opt.step()

        return run

    times = interleaved_median(
        {k: step(m, obj) for k, (m, obj) in variants.items()}, rounds=args.rounds, reps=3
    )
    base = times["original"]
    print(f"{'training step':34s} {'ms':>8s} {'/ original':>11s}")
    for k, t in times.items():
        print(f"{k:34s} {1e3 * t:8.1f} {t / base:11.2f}")

    def forward(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            m.eval()
            with torch.no_grad():
                m(**batch)

        return run

    ev = interleaved_median(
        {"original": forward(model), "routed": forward(routed)}, rounds=args.rounds, reps=5
    )
    print(f"eval forward, routed / original: {ev['routed'] / ev['original']:.2f}")


if __name__ == "__main__":
    main()
