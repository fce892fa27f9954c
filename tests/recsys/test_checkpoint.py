"""Checkpoint integrity: the content hash catches every altered value, old checkpoints without
one are named, and the temporary file of a write killed by SIGKILL is removed by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import bayesdrop.recsys.checkpoint as ck
from bayesdrop.recsys.checkpoint import (
    FORMAT,
    HASH_KEY,
    VERSION,
    CheckpointError,
    content_hash,
    load_checkpoint_file,
    remove_stale_temporaries,
    save_atomic,
)


def _ckpt() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": {"lr": 1e-3, "model": "mult-vae", "hidden": [8, 4], "flag": True, "none": None},
        "data": {
            "fingerprint": "ab" * 32,
            "split": {"indices": torch.arange(10, dtype=torch.int32)},
        },
        "model": {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(4, dtype=torch.float64)},
        "state": {"epoch": 2, "history": [{"recall": 0.25}], "mask": torch.tensor([True, False])},
    }


def test_written_checkpoints_carry_their_hash_and_read_back(tmp_path):
    obj = _ckpt()
    path = tmp_path / "c.pt"
    save_atomic(obj, path)
    raw = torch.load(path, weights_only=True)
    assert raw[HASH_KEY] == content_hash(obj) and len(raw[HASH_KEY]) == 64
    assert HASH_KEY not in obj  # the caller's dictionary is not changed
    back = load_checkpoint_file(path)
    assert torch.equal(back["model"]["w"], obj["model"]["w"])
    # the hash does not depend on the file layout: the same content re-saved has the same hash
    assert content_hash(back) == raw[HASH_KEY]


def _changes():
    """One altered value of every kind a checkpoint holds; each must change the hash."""

    def flip_float(o):
        w = o["model"]["w"]
        bits = w.view(torch.int32).clone()
        bits[1, 2] ^= 1  # the lowest mantissa bit: a change of one unit in the last place
        o["model"]["w"] = bits.view(torch.float32)

    def flip_index(o):
        o["data"]["split"]["indices"][7] ^= 1

    def flip_bool(o):
        o["state"]["mask"][1] = True

    def set_(path, value):
        def f(o):
            d = o
            for k in path[:-1]:
                d = d[k]
            d[path[-1]] = value

        return f

    return {
        "float bit": flip_float,
        "split index bit": flip_index,
        "bool tensor": flip_bool,
        "float64 dtype": set_(("model", "b"), torch.zeros(4, dtype=torch.float32)),
        "shape": set_(("model", "b"), torch.zeros(2, 2, dtype=torch.float64)),
        "number": set_(("config", "lr"), 1e-3 * (1 + 2**-52)),
        "int": set_(("state", "epoch"), 3),
        "int vs float": set_(("state", "epoch"), 2.0),
        "string": set_(("config", "model"), "mult-dae"),
        "list": set_(("config", "hidden"), [8, 5]),
        "bool": set_(("config", "flag"), False),
        "none": set_(("config", "none"), 0),
        "fingerprint": set_(("data", "fingerprint"), "ab" * 31 + "ac"),
        "new key": set_(("state", "extra"), 1),
        "history": set_(("state", "history"), [{"recall": 0.26}]),
    }


@pytest.mark.parametrize("what", list(_changes()))
def test_every_altered_value_is_refused(tmp_path, what):
    obj = _ckpt()
    path = tmp_path / "c.pt"
    save_atomic(obj, path)
    stored = torch.load(path, weights_only=True)
    _changes()[what](stored)
    assert content_hash(stored) != stored[HASH_KEY]
    torch.save(stored, path)  # altered after writing, hash kept: as a flipped bit on disk
    with pytest.raises(CheckpointError, match=f"checkpoint {path} was altered after it was"):
        load_checkpoint_file(path)


def test_a_bit_flipped_in_the_file_is_refused(tmp_path):
    """The bytes of a tensor flipped in the file itself: torch.load still reads it (no check of
    its own), the reader refuses it by the hash."""
    obj = _ckpt()
    path = tmp_path / "c.pt"
    save_atomic(obj, path)
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(obj["model"]["w"].numpy().tobytes())
    assert at > 0
    raw[at + 21] ^= 0x01
    path.write_bytes(bytes(raw))
    silently = torch.load(path, weights_only=True)["model"]["w"]
    assert not torch.equal(silently, obj["model"]["w"])  # torch alone would use it
    with pytest.raises(CheckpointError, match="was altered after it was written"):
        load_checkpoint_file(path)


def test_old_checkpoints_without_a_hash_get_a_clear_message(tmp_path):
    old = {k: v for k, v in _ckpt().items()}
    old["version"] = 1
    path = tmp_path / "old.pt"
    torch.save(old, path)
    with pytest.raises(CheckpointError, match="written by an earlier bayesdrop without a content"):
        load_checkpoint_file(path)
    missing = _ckpt()  # the current layout without its hash: incomplete
    torch.save(missing, path)
    with pytest.raises(CheckpointError, match=r"is incomplete: missing \['sha256'\]"):
        load_checkpoint_file(path)


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys, torch
    import bayesdrop.recsys.checkpoint as ck

    def half_then_killed(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    ck.torch.save = half_then_killed
    ck.save_atomic({"a": torch.ones(2)}, sys.argv[1])
    """
)


def test_the_temporary_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"a": torch.zeros(2)}, path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    left = [p for p in tmp_path.iterdir() if p.name != "c.pt"]
    assert len(left) == 1 and left[0].name.startswith(".c.pt.tmp-")  # what SIGKILL leaves
    assert left[0].read_bytes() == b"half a checkpoint"
    assert torch.load(path, weights_only=True)["a"].tolist() == [0.0, 0.0]  # old one intact
    # files that are not a dead writer's are kept: a live writer's, another host's, other names
    live = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        keep = [
            tmp_path / f".c.pt.tmp-{ck._host()}-{live.pid}",
            tmp_path / ".c.pt.tmp-otherhost-1",
            tmp_path / ".d.pt.tmp-otherhost-1",
            tmp_path / "c.pt.tmp-1",
        ]
        for k in keep:
            k.write_bytes(b"x")
        save_atomic({"a": torch.ones(2)}, path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["c.pt", *(k.name for k in keep)]
        )
    finally:
        live.stdin.close()
        live.wait(timeout=30)
    assert torch.load(path, weights_only=True)["a"].tolist() == [1.0, 1.0]
    # once the writer is gone, reading the checkpoint removes its file too
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    dead = [p for p in tmp_path.iterdir() if p.name.startswith(f".c.pt.tmp-{ck._host()}-")]
    # the file of the writer that has since ended was removed by the killed write's own start
    assert len(dead) == 1 and not keep[0].exists()
    with pytest.raises(CheckpointError, match="not a bayesdrop recsys checkpoint"):
        load_checkpoint_file(path)  # {"a": ...} is no checkpoint, but the read cleans first
    assert not any(p.exists() for p in dead)
    assert remove_stale_temporaries(path) == []
