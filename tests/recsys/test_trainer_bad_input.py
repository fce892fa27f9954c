"""The recsys Python API refuses bad input by name: TrainConfig, train's resume checks (one test
per configuration field), the checkpoint reader and writer, recommend, and the data filters."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from bayesdrop.recsys import (
    CheckpointError,
    Interactions,
    MultVAE,
    Popularity,
    RunLockedError,
    TrainConfig,
    liang_split,
    prepare_liang,
    recommend,
    synthetic_interactions,
    train,
)
from bayesdrop.recsys.checkpoint import (
    load_checkpoint_file,
    run_lock,
    save_atomic,
    split_fingerprint,
    write_text_atomic,
)
from bayesdrop.recsys.data import binarize, filter_min_counts, read_interactions
from bayesdrop.recsys.trainer import RESUMABLE_CHANGES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split():
    return prepare_liang(synthetic_interactions(200, 60, rank=4, mean_items=12, seed=4), 20)


BASE = dict(
    model="sivae-lbd",
    epochs=1,
    batch_size=64,
    hidden=8,
    latent=4,
    n_extra=1,
    anneal_steps=10,
    progress=False,
)


@pytest.fixture(scope="module")
def sivae_ckpt(split, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "sivae.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(split, TrainConfig(**BASE, checkpoint=str(path)))
    finally:
        torch.set_num_threads(threads)
    return path


# ------------------------------------------------------------------------------ TrainConfig
CONFIG_CASES = [
    (dict(model="bpr"), ValueError, "model must be one of"),
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(epochs=2.0), TypeError, "epochs must be an int"),
    (dict(epochs=True), TypeError, "epochs must be an int"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(eval_batch_size=-1), ValueError, "eval_batch_size must be >= 1"),
    (dict(hidden=0), ValueError, "hidden must be >= 1"),
    (dict(latent=0), ValueError, "latent must be >= 1"),
    (dict(n_extra=-1), ValueError, "n_extra must be >= 0"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(seed=2**32), ValueError, "seed must be in [0, 2**32 - 1]"),
    (dict(seed=1.0), TypeError, "seed must be an int"),
    (dict(lr=0.0), ValueError, "lr must be finite and > 0"),
    (dict(lr=float("nan")), ValueError, "lr must be finite and > 0"),
    (dict(lr="1e-3"), TypeError, "lr must be a number"),
    (dict(rate_lr=-1.0), ValueError, "rate_lr must be finite and > 0"),
    (dict(dropout=1.0), ValueError, "dropout must be in [0, 1)"),
    (dict(l2=-0.1), ValueError, "l2 must be finite and >= 0"),
    (dict(anneal_steps=-1), ValueError, "anneal_steps must be >= 0"),
    (dict(anneal_steps="paper"), ValueError, "anneal_steps must be an int >= 0 or 'auto'"),
    (dict(anneal_cap=float("inf")), ValueError, "anneal_cap must be finite"),
    (dict(estimator="reinforce"), ValueError, "estimator must be one of"),
    (dict(arm_product="sum"), ValueError, "arm_product must be one of"),
    (dict(init_p=1.0), ValueError, "init_p must be in (0, 1)"),
    (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
    (dict(ease_l2=0.0), ValueError, "ease_l2 must be finite and > 0"),
    (dict(device="gpu"), ValueError, "device must be cpu, cuda, cuda:N or mps"),
    (dict(device=0), TypeError, "device must be a str"),
    (dict(checkpoint=""), TypeError, "checkpoint must be a file path"),
    (dict(checkpoint=3), TypeError, "checkpoint must be a file path"),
    (dict(resume=True), ValueError, "resume needs a checkpoint path"),
    (dict(allow_change=("lr",)), ValueError, "allow_change entries must be one of"),
    (dict(allow_change="epochs"), TypeError, "allow_change must be a sequence"),
    (dict(allow_change=("epochs",)), ValueError, "allow_change applies to a resumed run"),
]


@pytest.mark.parametrize("kw, error, match", CONFIG_CASES, ids=[str(c[0]) for c in CONFIG_CASES])
def test_train_config_refuses_bad_values(kw, error, match):
    with pytest.raises(error, match=re.escape(match)):
        TrainConfig(**kw)


def test_train_refuses_bad_arguments_before_work(split, tmp_path):
    with pytest.raises(TypeError, match="split must be a CFSplit"):
        train(split.train, TrainConfig(**BASE))
    with pytest.raises(TypeError, match="cfg must be a TrainConfig"):
        train(split, dict(BASE))
    with pytest.raises(ValueError, match="rate_lr applies to models with learned drop rates"):
        train(split, TrainConfig(**{**BASE, "model": "mult-vae"}, rate_lr=0.1))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
            train(split, TrainConfig(**BASE, device="cuda"))
    with pytest.raises(ValueError, match="is a directory"):
        train(split, TrainConfig(**BASE, checkpoint=str(tmp_path)))
    with pytest.raises(CheckpointError, match="does not exist"):
        train(split, TrainConfig(**BASE, checkpoint=str(tmp_path / "no.pt"), resume=True))
    assert sorted(os.listdir(tmp_path)) == ["no.pt.lock"]


# ------------------------------------------------------------------------------ resume
# One changed value per field of the run configuration.
CHANGES = {
    "model": "sivae-concrete",
    "epochs": 2,
    "batch_size": 32,
    "lr": 2e-3,
    "rate_lr": 0.05,
    "hidden": 9,
    "latent": 5,
    "dropout": 0.4,
    "l2": 0.1,
    "anneal_steps": "auto",
    "anneal_cap": 0.3,
    "n_extra": 2,
    "estimator": "disarm",
    "arm_product": "batch-mean",
    "init_p": 0.4,
    "temperature": 0.2,
    "ease_l2": 100.0,
    "seed": 1,
    "eval_batch_size": 100,
    "device": "cpu:0",
}


def test_every_run_field_has_a_mismatch_case():
    assert set(CHANGES) == set(TrainConfig().run_config())


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_resume_refuses_each_changed_field_by_name(split, sivae_ckpt, field):
    before = sivae_ckpt.read_bytes()
    cfg = TrainConfig(**{**BASE, field: CHANGES[field]}, checkpoint=str(sivae_ckpt), resume=True)
    with pytest.raises(CheckpointError, match=f"refusing to resume it: {field}: ") as info:
        train(split, cfg)
    assert str(sivae_ckpt) in str(info.value)
    if field in RESUMABLE_CHANGES:
        assert f"--allow-change {field}" in str(info.value)
    assert sivae_ckpt.read_bytes() == before  # nothing was written


def test_resume_refuses_another_split_and_fewer_epochs_than_done(split, sivae_ckpt, tmp_path):
    other = prepare_liang(
        synthetic_interactions(200, 60, rank=4, mean_items=12, seed=4), 20, seed=1
    )
    cfg = TrainConfig(**BASE, checkpoint=str(sivae_ckpt), resume=True)
    with pytest.raises(CheckpointError, match="data split: fingerprint differs"):
        train(other, cfg)
    # same sizes and users, one interaction moved: still refused
    moved = prepare_liang(synthetic_interactions(200, 60, rank=4, mean_items=12, seed=4), 20)
    t = moved.train.tolil()
    row = t.rows[0]
    free = next(j for j in range(moved.n_items) if j not in row)
    t[0, row[0]] = 0
    t[0, free] = 1
    moved.train = t.tocsr()
    moved.train.eliminate_zeros()
    assert moved.summary() == split.summary()
    with pytest.raises(CheckpointError, match="same sizes, different users or interactions"):
        train(moved, cfg)
    two = tmp_path / "two.pt"
    train(split, TrainConfig(**{**BASE, "epochs": 2}, checkpoint=str(two)))
    with pytest.raises(CheckpointError, match="has already completed 2 epochs, more than epochs=1"):
        train(
            split,
            TrainConfig(**BASE, checkpoint=str(two), resume=True, allow_change=("epochs",)),
        )


def test_allowed_changes_resume(split, sivae_ckpt, tmp_path):
    copy = tmp_path / "copy.pt"
    copy.write_bytes(sivae_ckpt.read_bytes())
    cfg = TrainConfig(
        **{**BASE, "eval_batch_size": 7, "device": "cpu:0"},
        checkpoint=str(copy),
        resume=True,
        allow_change=("eval_batch_size", "device"),
    )
    r = train(split, cfg)
    assert r["resumed_after_epoch"] == 1 and len(r["history"]) == 1


def test_an_existing_checkpoint_is_never_overwritten_without_resume(split, sivae_ckpt):
    before = sivae_ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="already exists; resume it"):
        train(split, TrainConfig(**BASE, checkpoint=str(sivae_ckpt)))
    assert sivae_ckpt.read_bytes() == before


def test_a_locked_checkpoint_is_refused(split, tmp_path):
    path = tmp_path / "c.pt"
    with run_lock([path]):
        with pytest.raises(RunLockedError, match="is in use by another run"):
            train(split, TrainConfig(**BASE, checkpoint=str(path)))
    assert not path.exists()


def test_non_finite_parameters_are_reported_as_divergence(split, monkeypatch):
    """A step that leaves NaN weights with a finite loss is caught before evaluation."""
    from bayesdrop.recsys.trainer import TrainingDivergedError

    real = torch.optim.Adam.step

    def poisoned_step(self, closure=None):
        out = real(self, closure)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    cfg = TrainConfig(**{**BASE, "model": "mult-dae", "anneal_steps": "auto", "batch_size": 500})
    with pytest.raises(TrainingDivergedError, match="loss became non-finite at epoch 1"):
        train(split, cfg)


# ------------------------------------------------------------------------------ checkpoint I/O
def test_failed_atomic_writes_leave_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_atomic({"a": torch.ones(2)}, path)
    write_text_atomic(tmp_path / "r.json", "old\n")

    def broken(obj, f, *a, **k):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    import bayesdrop.recsys.checkpoint as ck

    monkeypatch.setattr(ck.torch, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["a"].tolist() == [1.0, 1.0]

    def no_rename(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ck.os, "replace", no_rename)
    with pytest.raises(OSError, match="Input/output error"):
        write_text_atomic(tmp_path / "r.json", "new\n")
    monkeypatch.undo()
    assert (tmp_path / "r.json").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "r.json"]


def test_checkpoint_reader_names_the_file_for_every_fault(tmp_path, sivae_ckpt):
    raw = sivae_ckpt.read_bytes()
    faults = {
        "missing": (None, "does not exist"),
        "empty": (b"", "is empty"),
        "truncated": (raw[: len(raw) // 3], "cannot be read: truncated, corrupt"),
        "tail cut": (raw[:-20], "cannot be read: truncated, corrupt"),
        "garbage": (bytes(range(256)) * 4, "cannot be read|refused by torch.load"),
    }
    for name, (data, match) in faults.items():
        p = tmp_path / f"{name}.pt"
        if data is not None:
            p.write_bytes(data)
        with pytest.raises(CheckpointError, match=match) as info:
            load_checkpoint_file(p)
        assert str(p) in str(info.value)
    # a checkpoint holding a pickled class is refused by weights_only=True, nothing executed
    evil = tmp_path / "evil.pt"
    torch.save({"format": "bayesdrop.recsys.checkpoint", "version": 1, "x": os.getcwd}, evil)
    with pytest.raises(CheckpointError, match="refused by torch.load\\(weights_only=True\\)"):
        load_checkpoint_file(evil)


def test_split_fingerprint_tracks_every_part(split):
    same = prepare_liang(synthetic_interactions(200, 60, rank=4, mean_items=12, seed=4), 20)
    assert split_fingerprint(same) == split_fingerprint(split)
    relabelled = prepare_liang(synthetic_interactions(200, 60, rank=4, mean_items=12, seed=4), 20)
    relabelled.item_ids = relabelled.item_ids[::-1].copy()
    assert split_fingerprint(relabelled) != split_fingerprint(split)
    moved = prepare_liang(synthetic_interactions(200, 60, rank=4, mean_items=12, seed=4), 20)
    moved.test_heldout, moved.test_fold_in = moved.test_fold_in, moved.test_heldout
    assert split_fingerprint(moved) != split_fingerprint(split)


# ------------------------------------------------------------------------------ recommend
@pytest.fixture(scope="module")
def tiny():
    inter = Interactions(
        np.array([1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]),
        np.array([10, 20, 10, 30, 20, 10, 40, 30, 10, 20, 10, 30, 10]),
        None,
    )
    split = liang_split(inter, 1, min_heldout_items=2, test_prop=0.5)
    return split, Popularity().fit(split.train)


RECOMMEND_CASES = [
    (dict(users=[5], k=0), ValueError, "k must be >= 1"),
    (dict(users=[5], k=True), TypeError, "k must be an int"),
    (dict(users=[5], k=2.0), TypeError, "k must be an int"),
    (dict(users=5), TypeError, "users must be a list of user ids"),
    (dict(users="5"), TypeError, "users must be a list of user ids"),
    (dict(users=[]), ValueError, "users must name at least one user"),
    (dict(users=[5, 5]), ValueError, "users lists 5 more than once"),
    (dict(users=[99]), ValueError, "user 99 \\(int\\) is not in the model's data"),
    # "5" names the int id 5 (exact spelling); a string that spells no user's id is refused
    (dict(users=["5x"]), ValueError, "user '5x' \\(str\\) is not in .*ids are integers"),
    (dict(users=["99999"]), ValueError, "user 99999 \\(int\\) is not in .*ids are integers"),
    (dict(users=[5], exclude_seen="yes"), TypeError, "exclude_seen must be a bool"),
]


@pytest.mark.parametrize(
    "kw, error, match", RECOMMEND_CASES, ids=[str(c[0]) for c in RECOMMEND_CASES]
)
def test_recommend_refuses_bad_arguments(tiny, kw, error, match):
    split, model = tiny
    with pytest.raises(error, match=match):
        recommend(model, split=split, **kw)


def test_recommend_refuses_bad_sources(tiny, tmp_path):
    split, model = tiny
    with pytest.raises(ValueError, match="needs split="):
        recommend(model, [5])
    with pytest.raises(TypeError, match="split must be a CFSplit"):
        recommend(model, [5], split=split.train)
    with pytest.raises(TypeError, match="source must be a checkpoint path"):
        recommend(42, [5])
    with pytest.raises(CheckpointError, match="does not exist"):
        recommend(tmp_path / "none.pt", [5])
    with pytest.raises(ValueError, match="split applies to a model source"):
        recommend(tmp_path / "none.pt", [5], split=split)
    with pytest.raises(ValueError, match="the model scores 7 items but the split has 4"):
        recommend(MultVAE(7, 4, 2), [5], split=split)


def test_recommend_refuses_nan_scores(tiny):
    split, _ = tiny
    model = MultVAE(4, 4, 2)
    with torch.no_grad():
        for q in model.parameters():
            q.fill_(float("nan"))
    with pytest.raises(ValueError, match="scores contain NaN"):
        recommend(model, [5], split=split)


# ------------------------------------------------------------------------------ data API
def test_data_api_names_what_removed_everything(tmp_path):
    inter = Interactions(np.array([1, 1, 2]), np.array([5, 6, 5]), np.array([3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="threshold=3.5 removes every interaction"):
        binarize(inter, 3.5)
    with pytest.raises(ValueError, match="threshold must be finite"):
        binarize(inter, float("nan"))
    with pytest.raises(TypeError, match="threshold must be a number"):
        binarize(inter, "3.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_item=3 removes every interaction: no item has more"):
        filter_min_counts(inter, min_user=0, min_item=3)
    with pytest.raises(ValueError, match="no interactions to filter"):
        filter_min_counts(inter.subset(np.zeros(3, dtype=bool)))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_interactions(tmp_path, "ml-100k")
    (tmp_path / "x.dat").write_bytes(b"1::2::3::4\n\xc3\x28::1::1::1\n")
    with pytest.raises(
        ValueError, match="x.dat, line 2: not UTF-8 text \\(byte 0xc3 at column 1\\)"
    ):
        read_interactions(tmp_path / "x.dat", "ml-1m")
