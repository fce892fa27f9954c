"""recommend(): top-k items in the data's own ids, seen items excluded, checked by hand; the
checkpoint keeps what it needs (split, ids, best weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bayesdrop.recsys import (
    Interactions,
    TrainConfig,
    liang_split,
    load_run,
    prepare_liang,
    recommend,
    synthetic_interactions,
    train,
)
from bayesdrop.recsys.checkpoint import (
    load_checkpoint_file,
    split_fingerprint,
    split_from_dict,
    split_to_dict,
)
from bayesdrop.recsys.cli import main
from bayesdrop.recsys.recommender import user_histories

pytestmark = pytest.mark.usefixtures("one_thread")

# users and their items, in file order
ROWS = [
    ("ann", "c"), ("ann", "a"), ("ann", "b"),
    ("bob", "a"), ("bob", "d"),
    ("cat", "b"), ("cat", "c"), ("cat", "e"),
    ("dan", "c"), ("dan", "a"),
    ("eve", "e"), ("eve", "d"), ("eve", "a"),
    ("fay", "b"), ("fay", "a"), ("fay", "d"),
]  # fmt: skip


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    inter = Interactions(np.array([u for u, _ in ROWS]), np.array([i for _, i in ROWS]), None)
    split = liang_split(inter, 1, min_heldout_items=2, test_prop=0.5)
    ckpt = tmp_path_factory.mktemp("hand") / "popularity.pt"
    train(split, TrainConfig(model="popularity", checkpoint=str(ckpt), progress=False))
    return split, ckpt


def test_the_hand_example_split(hand):
    """The facts the hand computation below starts from."""
    split, _ = hand
    assert split.train_user_ids.tolist() == ["eve", "cat", "bob", "ann"]
    assert split.val_user_ids.tolist() == ["dan"] and split.test_user_ids.tolist() == ["fay"]
    # items in order of first appearance among the training users' rows: ann c a b, bob d, cat e
    assert split.item_ids.tolist() == ["c", "a", "b", "d", "e"]


# Popularity over the training users (eve: e d a, cat: b c e, bob: a d, ann: c a b):
# a 3, then c, b, d, e with 2 each; ties keep the item order c, b, d, e.
# ann saw c a b -> d e; bob saw a d -> c b e; dan (validation: fold-in + held-out c a) -> b d e;
# fay (test: b a d) -> c e.
EXPECTED = {"ann": ["d", "e"], "bob": ["c", "b", "e"], "dan": ["b", "d", "e"], "fay": ["c", "e"]}


def test_recommend_from_a_checkpoint_matches_the_hand_computation(hand):
    _, ckpt = hand
    users = ["fay", "ann", "dan", "bob"]
    got = recommend(ckpt, users, k=3)
    assert list(got) == users  # the order asked for
    assert got == {u: EXPECTED[u][:3] for u in users}
    assert recommend(ckpt, ["ann"], k=1) == {"ann": ["d"]}
    # ann has 2 unseen items: asking for 10 gives those 2
    assert recommend(ckpt, ["ann"], k=10) == {"ann": ["d", "e"]}
    # without exclusion the most popular items come back, seen or not
    assert recommend(ckpt, ["ann"], k=3, exclude_seen=False) == {"ann": ["a", "c", "b"]}


def test_recommend_command_prints_the_same(hand, capsys, tmp_path):
    _, ckpt = hand
    out = tmp_path / "recs.json"
    argv = ["recommend", "--checkpoint", str(ckpt), "--users", "dan", "bob", "--k", "2"]
    assert main(argv + ["--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["recommendations"] == [
        {"user": "dan", "items": ["b", "d"]},
        {"user": "bob", "items": ["c", "b"]},
    ]
    assert printed["exclude_seen"] is True and printed["model"] == "popularity"


@pytest.fixture(scope="module")
def neural(tmp_path_factory):
    split = prepare_liang(synthetic_interactions(200, 60, rank=4, mean_items=12, seed=6), 20)
    ckpt = tmp_path_factory.mktemp("neural") / "dae.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dict(model="mult-dae", epochs=3, batch_size=50, hidden=16, latent=4)
        result = train(split, TrainConfig(**cfg, progress=False, checkpoint=str(ckpt)))
    finally:
        torch.set_num_threads(threads)
    return split, ckpt, result


def test_checkpoint_keeps_the_split_ids_and_best_weights(neural):
    split, ckpt, result = neural
    run = load_run(ckpt)
    assert split_fingerprint(run.split) == split_fingerprint(split) == run.fingerprint
    for name in ("item_ids", "train_user_ids", "val_user_ids", "test_user_ids"):
        np.testing.assert_array_equal(getattr(run.split, name), getattr(split, name))
    assert run.best_epoch == result["best_epoch"] and run.epochs_done == 3
    best = load_checkpoint_file(ckpt)["state"]["best_state"]
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, best[k]), k
    rt = split_from_dict(split_to_dict(split))
    for name in ("train", "val_fold_in", "val_heldout", "test_fold_in", "test_heldout"):
        assert (getattr(rt, name) != getattr(split, name)).nnz == 0


def test_neural_recommendations_map_model_scores_to_raw_ids(neural):
    split, ckpt, _ = neural
    run = load_run(ckpt)
    users = [int(split.train_user_ids[3]), int(split.val_user_ids[0]), int(split.test_user_ids[5])]
    got = recommend(ckpt, users, k=5)
    # independent path: score the user's full history with the best weights, rank by hand
    hist = {
        int(split.train_user_ids[3]): split.train[3],
        int(split.val_user_ids[0]): split.val_fold_in[0] + split.val_heldout[0],
        int(split.test_user_ids[5]): split.test_fold_in[5] + split.test_heldout[5],
    }
    with torch.no_grad():
        for u in users:
            x = torch.tensor(hist[u].toarray(), dtype=torch.float32)
            scores = run.model(x)[0].numpy()
            seen = set(hist[u].indices.tolist())
            ranked = [j for j in np.argsort(-scores, kind="stable") if j not in seen][:5]
            assert got[u] == [int(split.item_ids[j]) for j in ranked]
            assert not set(got[u]) & {int(split.item_ids[j]) for j in seen}


def test_user_histories_cover_every_user_once(neural):
    split, _, _ = neural
    index, hist = user_histories(split)
    assert len(index) == hist.shape[0] == 200
    u = int(split.test_user_ids[0])
    row = hist[index[u]]
    both = split.test_fold_in[0] + split.test_heldout[0]
    assert sorted(row.indices.tolist()) == sorted(both.indices.tolist())


def test_compare_checkpoints_reproduces_the_training_result(neural, capsys):
    _, ckpt, result = neural
    assert main(["compare", "--checkpoints", str(ckpt)]) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out)["results"][0]
    assert row["test"] == result["test"]  # the saved best weights give the same test metrics
    t = result["test"]
    assert f"{t['ndcg@100']:.4f} ± {t['ndcg@100_se']:.4f}" in captured.err


def test_compare_checkpoints_prints_paired_differences(neural, tmp_path, capsys):
    from bayesdrop.metrics.ranking import ndcg_at_k, recall_at_k

    split, ckpt, _ = neural
    other = tmp_path / "other.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dict(model="mult-dae", epochs=1, batch_size=50, hidden=16, latent=4, seed=3)
        train(split, TrainConfig(**cfg, progress=False, checkpoint=str(other)))
    finally:
        torch.set_num_threads(threads)
    assert main(["compare", "--checkpoints", str(ckpt), str(other)]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["results"]
    assert "paired_vs_first" not in rows[0]
    # independent: score every test user at once with each run's best weights
    per = []
    for path in (ckpt, other):
        model = load_run(path).model
        with torch.no_grad():
            scores = model(torch.tensor(split.test_fold_in.toarray(), dtype=torch.float32))
        m = {}
        for name, fn, k in (("recall@20", recall_at_k, 20), ("ndcg@100", ndcg_at_k, 100)):
            v = fn(scores.double(), split.test_heldout, min(k, split.n_items),
                   exclude=split.test_fold_in, reduction="none").numpy()  # fmt: skip
            m[name] = v[~np.isnan(v)]
        per.append(m)
    for name in ("recall@20", "ndcg@100"):
        d = per[1][name] - per[0][name]
        got = rows[1]["paired_vs_first"][name]
        assert got["diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert got["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-9)
        assert rows[1]["test"][name] == pytest.approx(per[1][name].mean(), rel=1e-9)
    assert "paired differences against" in captured.err
    assert f"ndcg@100 {got['diff']:+.4f} ± {got['se']:.4f}" in captured.err


def _numeric_split(as_strings: bool):
    """The hand example's interactions with users 196, 186, 7, ... and items 50, 181, ...
    spelt as the data spells them: strings (MovieLens-100K read from RecBole) or ints."""
    user = {"ann": 196, "bob": 186, "cat": 7, "dan": 22, "eve": 244, "fay": 166}
    item = {"a": 50, "b": 181, "c": 1, "d": 100, "e": 258}
    spell = str if as_strings else int
    users = np.array([spell(user[u]) for u, _ in ROWS])
    items = np.array([spell(item[i]) for _, i in ROWS])
    return liang_split(Interactions(users, items, None), 1, min_heldout_items=2, test_prop=0.5)


@pytest.mark.parametrize("as_strings", [True, False], ids=["string-ids", "int-ids"])
def test_ints_and_digit_strings_name_the_same_user(as_strings):
    from bayesdrop.recsys import Popularity

    split = _numeric_split(as_strings)
    spell = str if as_strings else int
    assert isinstance(split.train_user_ids[0].item(), type(spell(1)))
    model = Popularity().fit(split.train)
    # every user saw at most 3 of the 5 items: two recommendations each
    exact = recommend(model, [spell(u) for u in (196, 186, 7)], k=2, split=split)
    assert all(len(v) == 2 for v in exact.values())
    # the documented call, whatever the data's id type; keys come back as given
    assert recommend(model, [196, 186], k=2, split=split) == {
        196: exact[spell(196)],
        186: exact[spell(186)],
    }
    assert recommend(model, ["196", "7"], k=2, split=split) == {
        "196": exact[spell(196)],
        "7": exact[spell(7)],
    }
    with pytest.raises(ValueError, match="more than once"):
        recommend(model, [196, "196"], split=split)
    # only exact spellings: "007" is not user 7, and True is not an id
    with pytest.raises(ValueError, match="'007'.* is not in the model's data"):
        recommend(model, ["007"], split=split)
    with pytest.raises(ValueError, match="True .* is not in the model's data"):
        recommend(model, [True], split=split)
