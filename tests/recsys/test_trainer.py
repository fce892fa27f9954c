"""Training loop: best-epoch selection, atomic checkpoints and resume, data-parallel torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bayesdrop.recsys.cli import main as cli_main
from bayesdrop.recsys.data import prepare_liang, synthetic_interactions
from bayesdrop.recsys.trainer import (
    PAPER_ANNEAL_STEPS,
    TrainConfig,
    beta_at,
    evaluate,
    resolve_anneal_steps,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split():
    return prepare_liang(synthetic_interactions(300, 120, rank=4, mean_items=15, seed=1), 40)


def _cfg(**kw):
    base = dict(
        epochs=3, batch_size=64, hidden=32, latent=8, anneal_steps=10, progress=False, seed=0
    )
    base.update(kw)
    return TrainConfig(**base)


def test_beta_annealing():
    assert beta_at(0, 100, 0.2) == 0.0
    assert beta_at(10, 100, 0.2) == pytest.approx(0.1)
    assert beta_at(1000, 100, 0.2) == 0.2
    assert beta_at(5, 0, 0.3) == 0.3


def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.hidden, cfg.latent) == (
        200,
        500,
        1e-3,
        600,
        200,
    )
    assert cfg.anneal_cap == 0.2 and cfg.anneal_steps == "auto"


def test_auto_annealing_is_the_papers_schedule_scaled_to_the_run():
    # Liang et al. on ML-20M: 116,677 training users in batches of 500 (234 updates per epoch)
    # for 200 epochs; "auto" must give their 200,000 steps there.
    paper = TrainConfig(epochs=200, batch_size=500)
    assert resolve_anneal_steps(paper, 116_677) == PAPER_ANNEAL_STEPS == 200_000
    # on a small data set the cap is reached after the same 85.5% of the run
    small = TrainConfig(epochs=100, batch_size=100)  # 738 users -> 8 updates per epoch
    steps = resolve_anneal_steps(small, 738)
    assert steps == round(40_000 / 46_800 * 800 / 0.2) == 3419
    assert beta_at(683, steps, 0.2) < 0.2 <= beta_at(684, steps, 0.2)  # 684 / 800 = 85.5%
    assert resolve_anneal_steps(TrainConfig(anneal_steps=123), 738) == 123
    assert resolve_anneal_steps(TrainConfig(anneal_cap=0.0), 738) == 0


def test_auto_annealing_is_used_and_reported(split):
    r = train(split, _cfg(model="mult-vae", anneal_steps="auto", epochs=2))
    steps = resolve_anneal_steps(_cfg(anneal_steps="auto", epochs=2), 240)
    assert r["anneal_steps"] == steps and r["config"]["anneal_steps"] == "auto"
    assert [h["beta"] for h in r["history"]] == [beta_at(e * 4, steps, 0.2) for e in (1, 2)]
    assert r["history"][-1]["beta"] == pytest.approx(0.2)  # the cap is reached in this run


def test_rate_lr_gives_the_rates_their_own_group(split, monkeypatch):
    import bayesdrop.recsys.trainer as trainer_module

    seen = []
    real = torch.optim.Adam

    def recording_adam(params, **kw):
        opt = real(params, **kw)
        seen.append(
            [
                (g.get("name"), g["lr"], g["weight_decay"], len(g["params"]))
                for g in opt.param_groups
            ]
        )
        return opt

    monkeypatch.setattr(trainer_module.torch.optim, "Adam", recording_adam)
    slow = train(split, _cfg(model="sivae-lbd", epochs=1, n_extra=1))
    fast = train(split, _cfg(model="sivae-lbd", epochs=1, n_extra=1, rate_lr=0.2))
    assert seen[0][1][:3] == ("rates", 1e-3, 0.0) and seen[1][1][:3] == ("rates", 0.2, 0.0)
    assert seen[1][0][:2] == ("weights", 1e-3) and seen[1][1][3] == 1  # one logit vector
    # 4 Adam steps move each logit by about lr each (0.004 in all at 1e-3, 0.8 at 0.2): the
    # rates, all 0.5 at the start, spread by about 0.002 at 1e-3 and by far more at 0.2
    # (measured: range 0.0020, std 0.0006 against std 0.11)
    assert slow["drop_rates"]["max"] - slow["drop_rates"]["min"] < 0.003
    assert slow["drop_rates"]["std"] < 0.002 < 0.02 < fast["drop_rates"]["std"]


def test_result_has_the_promised_keys_and_best_epoch(split):
    r = train(split, _cfg(model="mult-vae"))
    names = ("recall@20", "recall@50", "ndcg@100")
    assert set(r["test"]) == {*names, *(f"{m}_se" for m in names), "users"}
    assert r["test"]["users"] == int((split.test_heldout.getnnz(axis=1) > 0).sum())
    vals = [h["val_ndcg@100"] for h in r["history"]]
    assert r["best_epoch"] == 1 + vals.index(max(vals))
    assert r["val"]["ndcg@100"] == max(vals)
    assert [h["beta"] for h in r["history"]] == [
        beta_at(e * 4, 10, 0.2) for e in (1, 2, 3)
    ]  # 240 train users / 64 -> 4 updates per epoch


def test_ease_beats_popularity_on_low_rank_data(split):
    ease = train(split, _cfg(model="ease", ease_l2=20.0))["test"]
    pop = train(split, _cfg(model="popularity"))["test"]
    assert ease["ndcg@100"] > pop["ndcg@100"] + 0.05
    assert ease["recall@20"] > pop["recall@20"] + 0.05


class _Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _crash_after_epoch(monkeypatch, epoch):
    import bayesdrop.recsys.trainer as trainer_module

    real = trainer_module.save_atomic

    def save_then_die(obj, path):
        real(obj, path)
        if obj["state"]["epoch"] == epoch:
            raise _Crash

    monkeypatch.setattr(trainer_module, "save_atomic", save_then_die)


def test_resume_after_a_crash_reproduces_an_uninterrupted_run(split, tmp_path, monkeypatch):
    ckpt = str(tmp_path / "run" / "ckpt.pt")
    cfg = dict(model="sivae-lbd", epochs=3, n_extra=1, anneal_steps="auto")
    full = train(split, _cfg(**cfg))
    with monkeypatch.context() as m:
        _crash_after_epoch(m, 2)
        with pytest.raises(_Crash):
            train(split, _cfg(**cfg, checkpoint=ckpt))
    # no temporary file is left; the lock file stays (deleting it would race another run)
    assert sorted(os.listdir(tmp_path / "run")) == ["ckpt.pt", "ckpt.pt.lock"]
    resumed = train(split, _cfg(**cfg, checkpoint=ckpt, resume=True))
    assert resumed["resumed_after_epoch"] == 2
    assert resumed["history"] == full["history"]
    assert resumed["test"] == full["test"]
    assert resumed["drop_rates"] == full["drop_rates"]


def test_more_epochs_on_resume_need_allow_change_and_then_match(split, tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    full = train(split, _cfg(model="mult-vae", epochs=3))
    part = train(split, _cfg(model="mult-vae", epochs=2, checkpoint=ckpt))
    assert len(part["history"]) == 2
    with pytest.raises(
        ValueError, match="epochs: 2 in the checkpoint, 3 now.*--allow-change epochs"
    ):
        train(split, _cfg(model="mult-vae", epochs=3, checkpoint=ckpt, resume=True))
    resumed = train(
        split,
        _cfg(model="mult-vae", epochs=3, checkpoint=ckpt, resume=True, allow_change=["epochs"]),
    )
    # anneal_steps is explicit (10): the schedule does not depend on epochs, so the extended
    # run is the uninterrupted 3-epoch run
    assert resumed["history"] == full["history"] and resumed["test"] == full["test"]
    with pytest.raises(ValueError, match='model: "mult-vae" in the checkpoint, "mult-dae" now'):
        train(split, _cfg(model="mult-dae", epochs=3, checkpoint=ckpt, resume=True))


def test_evaluate_excludes_fold_in_items(split):
    class Oracle(torch.nn.Module):
        """Scores the fold-in items highest: excluding them must still give a valid ranking."""

        def forward(self, x):
            return x.to_dense() * 100.0

    r = evaluate(Oracle(), split.test_fold_in, split.test_heldout)
    assert 0.0 <= r["ndcg@100"] <= 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig(model="bpr")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="resume needs"):
        TrainConfig(resume=True)


def _run_cli(args, nproc=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    if nproc:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "bayesdrop.recsys.cli",
        ]
    else:
        cmd = [sys.executable, "-m", "bayesdrop.recsys.cli"]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(tmp_path):
    args = [
        "compare",
        "--data",
        "synthetic",
        "--synthetic-users",
        "300",
        "--synthetic-items",
        "120",
        "--heldout-users",
        "40",
        "--models",
        "mult-dae",
        "mult-vae",
        "--epochs",
        "3",
        "--batch-size",
        "60",
        "--hidden",
        "32",
        "--latent",
        "8",
        "--dropout",
        "0",
        "--anneal-steps",
        "10",
        "--no-progress",
    ]
    assert cli_main(args + ["--output", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())["results"]
    two = _run_cli(args, nproc=2)["results"]
    assert [r["world_size"] for r in two] == [2, 2]
    # Mult-DAE without dropout is deterministic: the averaged gradients equal the full-batch
    # gradient, so the two runs agree up to floating-point summation order.
    dae1, dae2 = one[0], two[0]
    for h1, h2 in zip(dae1["history"], dae2["history"]):
        assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-4)
        assert h2["val_ndcg@100"] == pytest.approx(h1["val_ndcg@100"], abs=2e-3)
    # Mult-VAE samples different noise per process: equal within noise.
    vae1, vae2 = one[1]["test"], two[1]["test"]
    for k in ("recall@20", "recall@50", "ndcg@100"):
        assert abs(vae1[k] - vae2[k]) < 0.05


def test_evaluate_standard_errors_match_per_user_metrics(split):
    from bayesdrop.metrics.ranking import ndcg_at_k, recall_at_k
    from bayesdrop.recsys.baselines import Popularity

    model = Popularity().fit(split.train)
    r = evaluate(model, split.test_fold_in, split.test_heldout, batch_size=7)
    scores = model.scores(split.test_fold_in)
    n_items = split.n_items
    for name, fn, k in (("recall@20", recall_at_k, 20), ("ndcg@100", ndcg_at_k, 100)):
        per_user = fn(
            scores,
            split.test_heldout,
            min(k, n_items),
            exclude=split.test_fold_in,
            reduction="none",
        ).numpy()
        per_user = per_user[~np.isnan(per_user)]
        assert r["users"] == len(per_user)
        assert r[name] == pytest.approx(per_user.mean(), rel=1e-12)
        assert r[f"{name}_se"] == pytest.approx(
            per_user.std(ddof=1) / np.sqrt(len(per_user)), rel=1e-9
        )


def _without_seconds(result):
    return {k: v for k, v in result.items() if k != "seconds"}


def test_on_step_sees_every_update_and_leaves_the_run_bit_identical(split):
    from bayesdrop import RateTracker
    from bayesdrop.recsys import SIVAE

    cfg = _cfg(model="sivae-lbd", epochs=2, rate_lr=0.05)
    plain = train(split, cfg)
    steps, models, rates = [], [], []

    def on_step(step, model):
        steps.append(step)
        models.append(model)
        rates.append(model.p.detach().clone())

    watched = train(split, cfg, on_step=on_step)
    assert json.dumps(_without_seconds(watched)) == json.dumps(_without_seconds(plain))
    per_epoch = -(-split.train.shape[0] // cfg.batch_size)
    assert steps == list(range(2 * per_epoch + 1))  # 0: before the first update
    assert isinstance(models[0], SIVAE) and all(m is models[0] for m in models)
    assert float((rates[-1] - rates[0]).abs().max()) > 1e-3  # the rates moved under rate_lr

    # the use it is made for: a RateTracker fed by the callback, same run again
    trackers = []

    def track(step, model):
        if not trackers:
            trackers.append(RateTracker(model, seed=0))
        trackers[0].record(step)

    tracked = train(split, cfg, on_step=track)
    assert json.dumps(_without_seconds(tracked)) == json.dumps(_without_seconds(plain))
    assert trackers[0].steps == steps
    (history,) = trackers[0].history.values()
    torch.testing.assert_close(history[-1], rates[-1].float().reshape(-1))


def test_on_step_must_be_callable(split):
    with pytest.raises(TypeError, match="on_step must be callable"):
        train(split, _cfg(), on_step=3)


def test_progress_without_tqdm_prints_the_epoch_lines_and_gives_the_same_run(
    split, monkeypatch, capsys
):
    quiet = train(split, _cfg(epochs=2))
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    shown = train(split, _cfg(epochs=2, progress=True))
    err = capsys.readouterr().err
    assert "epoch 1: loss" in err and "epoch 2: loss" in err
    assert json.dumps(_without_seconds(shown)["test"]) == json.dumps(quiet["test"])
    assert shown["history"] == quiet["history"]
