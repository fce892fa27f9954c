"""The worked fine-tune of the Hugging Face guide page, on tiny stand-in data."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
PATH = Path(__file__).resolve().parents[2] / "docs" / "guide" / "huggingface_finetune.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("huggingface_finetune", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["huggingface_finetune"] = module
    spec.loader.exec_module(module)
    return module


def stand_in(example):
    good, bad = ["great fun", "a moving film", "great acting"], ["dull", "a boring mess", "awful"]
    texts = [good[i % 3] if i % 2 else bad[i % 3] for i in range(80)]
    labels = [i % 2 for i in range(80)]
    return example.tokenise(texts, labels, n_train=64, n_test=16, vocab=20, max_len=6)


def test_tokenise_puts_cls_first_and_pads(example):
    data = stand_in(example)
    ids, mask = data.train["input_ids"], data.train["attention_mask"]
    assert ids.shape == (64, 6) and torch.equal(mask, (ids != example.PAD).long())
    assert (ids[:, 0] == example.CLS).all() and int(ids.max()) < data.vocab
    assert len(data.y_test) == 16


def test_every_variant_trains_and_is_summarised(example, one_thread):
    data = stand_in(example)
    runs = [
        example.run_one(v, data, seed=s, epochs=2, max_len=6, batch_size=16, mc_samples=3)
        for s in (0, 1)
        for v in example.VARIANTS
    ]
    assert all(r["converted"] == 8 and r["fixed"] == 0 for r in runs)
    summary = example.summarise(runs)
    assert list(summary) == list(example.VARIANTS)
    for entry in summary.values():
        for key in ("accuracy", "nll", "ece"):
            mean, se = entry[key]
            assert math.isfinite(mean) and se >= 0
    assert summary["fixed"]["rate_attention"][0] == pytest.approx(0.1)
    assert summary["lbd"]["rate_attention"][0] != pytest.approx(0.1, abs=1e-7)  # it moved
    assert "| lbd |" in example.table(summary)
