"""Checkpoints of ``bayesdrop recsys`` runs: what they hold, how they are written, read and locked.

A checkpoint is a ``torch.save`` dictionary that holds only tensors, numbers, strings, lists and
dictionaries, so it loads with ``torch.load(..., weights_only=True)`` (no code is run while
reading it). It holds

* ``format`` (:data:`FORMAT`) and ``version`` (:data:`VERSION`), so a file written by anything
  else is refused by name;
* ``config``: the run's full configuration (every field of
  :class:`~bayesdrop.recsys.trainer.TrainConfig` that defines the run) and ``world_size``;
* ``data``: a SHA-256 fingerprint of the split (:func:`split_fingerprint`), its sizes, and the
  split itself (train matrix, validation and test fold-in/held-out matrices, item ids and user
  ids in the data's own ids), so a checkpoint can be evaluated and asked for recommendations
  without the data file;
* ``model``, ``optimizer`` and ``state`` (epoch, update count, history, best-epoch weights);
* ``sha256``: a SHA-256 over all of the above (:func:`content_hash`), checked on every read, so
  a checkpoint whose tensors, split or settings were altered after writing (a flipped bit on
  disk, an edit) is refused instead of silently resumed, evaluated or asked for recommendations.

Writes are atomic (:func:`save_atomic`: temporary file in the same folder, ``fsync``,
``os.replace``; the temporary file is removed if the write fails), so a crash leaves either the
previous checkpoint or the new one, never a truncated file. A process killed during a write
(SIGKILL, power loss) cannot remove its temporary file; the next write or read of the same
checkpoint on the same host removes the temporary files of this naming pattern left by processes
that no longer run. :func:`run_lock` holds an exclusive
``fcntl.flock`` on ``<path>.lock`` for the whole run, so a second run on the same checkpoint or
output file is refused instead of racing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .data import CFSplit

try:  # POSIX only; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "RunLockedError",
    "split_fingerprint",
    "content_hash",
    "split_to_dict",
    "split_from_dict",
    "save_atomic",
    "write_text_atomic",
    "load_checkpoint_file",
    "run_lock",
    "check_writable_file",
    "describe_changes",
]

#: Value of the ``format`` key of every checkpoint this module writes.
FORMAT = "bayesdrop.recsys.checkpoint"
#: Layout version of the checkpoint dictionary, 2 since it holds the ``sha256`` content hash.
VERSION = 2
#: Key of the content hash in a checkpoint dictionary.
HASH_KEY = "sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, foreign, or from a different run."""


class RunLockedError(RuntimeError):
    """Another run holds the lock on a checkpoint or output file."""


# ------------------------------------------------------------------------------------ the split
def _ids_bytes(ids: np.ndarray) -> bytes:
    if ids.dtype.kind in "iu":
        return b"int:" + np.ascontiguousarray(ids, dtype=np.int64).tobytes()
    return b"str:" + "\x00".join(str(v) for v in ids.tolist()).encode("utf-8")


def split_fingerprint(split: CFSplit) -> str:
    """SHA-256 (hex) of everything that defines a split: ids, and the five matrices' patterns.

    Two splits have the same fingerprint exactly when they have the same item ids (in order),
    the same train/validation/test user ids (in order) and the same interactions in each part.
    """
    h = hashlib.sha256()
    for ids in (split.item_ids, split.train_user_ids, split.val_user_ids, split.test_user_ids):
        b = _ids_bytes(np.asarray(ids))
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    for m in _matrices(split):
        c = sp.csr_matrix(m)
        c.sum_duplicates()
        c.sort_indices()
        h.update(np.asarray(c.shape, dtype=np.int64).tobytes())
        h.update(np.asarray(c.indptr, dtype=np.int64).tobytes())
        h.update(np.asarray(c.indices, dtype=np.int64).tobytes())
    return h.hexdigest()


def _matrices(split: CFSplit) -> tuple[sp.csr_matrix, ...]:
    return (
        split.train,
        split.val_fold_in,
        split.val_heldout,
        split.test_fold_in,
        split.test_heldout,
    )


_PARTS = ("train", "val_fold_in", "val_heldout", "test_fold_in", "test_heldout")
_ID_PARTS = ("item_ids", "train_user_ids", "val_user_ids", "test_user_ids")


def _ids_to_list(ids: np.ndarray) -> dict[str, Any]:
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return {"kind": "int", "values": torch.from_numpy(ids.astype(np.int64))}
    return {"kind": "str", "values": [str(v) for v in ids.tolist()]}


def _ids_from_list(d: dict[str, Any]) -> np.ndarray:
    if d["kind"] == "int":
        return d["values"].numpy().astype(np.int64)
    return np.asarray(d["values"], dtype=np.str_)


def split_to_dict(split: CFSplit) -> dict[str, Any]:
    """The split as tensors and lists (loadable with ``weights_only=True``)."""
    out: dict[str, Any] = {}
    for name, m in zip(_PARTS, _matrices(split)):
        c = sp.csr_matrix(m)
        c.sum_duplicates()
        c.sort_indices()
        idx = np.int32 if c.shape[1] < 2**31 else np.int64
        out[name] = {
            "shape": [int(c.shape[0]), int(c.shape[1])],
            "indptr": torch.from_numpy(np.asarray(c.indptr, dtype=np.int64)),
            "indices": torch.from_numpy(np.asarray(c.indices, dtype=idx)),
        }
    for name in _ID_PARTS:
        out[name] = _ids_to_list(getattr(split, name))
    return out


def split_from_dict(d: dict[str, Any]) -> CFSplit:
    """Inverse of :func:`split_to_dict` (the filtering report is not kept)."""
    mats = []
    for name in _PARTS:
        part = d[name]
        indices = part["indices"].numpy().astype(np.int64)
        data = np.ones(len(indices), dtype=np.float32)
        mats.append(
            sp.csr_matrix((data, indices, part["indptr"].numpy()), shape=tuple(part["shape"]))
        )
    items, train_users, val_users, test_users = (_ids_from_list(d[name]) for name in _ID_PARTS)
    train, val_fold_in, val_heldout, test_fold_in, test_heldout = mats
    return CFSplit(
        train,
        val_fold_in,
        val_heldout,
        test_fold_in,
        test_heldout,
        items,
        train_users,
        val_users,
        test_users,
        [],
    )


# ------------------------------------------------------------------------------------ content hash
def _feed(h: Any, obj: Any) -> None:
    """Feed ``obj`` to the hash ``h`` in a canonical, type-tagged, length-prefixed encoding."""

    def put(tag: bytes, payload: bytes) -> None:
        h.update(tag + len(payload).to_bytes(8, "little") + payload)

    if obj is None:
        put(b"N", b"")
    elif isinstance(obj, bool):
        put(b"b", b"1" if obj else b"0")
    elif isinstance(obj, int):
        put(b"i", str(obj).encode("ascii"))
    elif isinstance(obj, float):
        put(b"f", obj.hex().encode("ascii"))
    elif isinstance(obj, str):
        put(b"s", obj.encode("utf-8"))
    elif isinstance(obj, bytes):
        put(b"y", obj)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        put(b"T", f"{t.dtype}{tuple(t.shape)}".encode("ascii"))
        put(b"D", t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        put(b"d", str(len(obj)).encode("ascii"))
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        put(b"l" if isinstance(obj, list) else b"t", str(len(obj)).encode("ascii"))
        for value in obj:
            _feed(h, value)
    else:
        raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}: {obj!r:.80}")


def content_hash(obj: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint dictionary's content, its ``sha256`` entry left out.

    The content is serialised canonically: every tensor by dtype, shape and raw bytes, every
    number, string, list and dictionary (in its order) by type and value, each length-prefixed;
    so the hash changes whenever any stored value changes, and does not depend on how
    ``torch.save`` lays out the file.
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in obj.items() if k != HASH_KEY})
    return h.hexdigest()


# ------------------------------------------------------------------------------------ writing
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsync'ed
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"


def _temp_path(p: Path) -> Path:
    """The temporary file a write of ``p`` goes through: ``.<name>.tmp-<host>-<pid>``."""
    return p.with_name(f".{p.name}.tmp-{_host()}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or no answer): keep its file
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed writes of ``path`` left behind; return them.

    Only files of this module's own pattern ``.<name>.tmp-<host>-<pid>`` are touched, and only
    those of this host whose process no longer runs (a write in progress, here or on another
    host sharing the folder, is left alone). Errors (a read-only folder) are ignored.
    """
    p = Path(path)
    pattern = re.compile(rf"^\.{re.escape(p.name)}\.tmp-{re.escape(_host())}-(\d+)$")
    removed: list[Path] = []
    try:
        entries = list(p.parent.iterdir()) if p.parent.is_dir() else []
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


def _write_atomic(path: str | os.PathLike[str], write: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(p)
    tmp = _temp_path(p)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(p.parent)


def save_atomic(obj: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically: temporary file, ``fsync``, ``os.replace``.

    If anything fails (disk full, interrupt) the temporary file is removed and ``path`` keeps
    its previous content. A checkpoint dictionary (``format`` :data:`FORMAT`) is written with its
    :func:`content_hash` under ``sha256``.
    """
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = {**{k: v for k, v in obj.items() if k != HASH_KEY}, HASH_KEY: content_hash(obj)}
    _write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`save_atomic`."""
    data = text.encode("utf-8")
    _write_atomic(path, lambda f: f.write(data))


# ------------------------------------------------------------------------------------ reading
def _first_sentence(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0]
    cut = first.find(". ")
    return f"{type(exc).__name__}: {(first[: cut + 1] if cut > 0 else first)[:200]}"


def load_checkpoint_file(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; every failure is a :class:`CheckpointError`
    naming the file (missing, a folder, unreadable, truncated or corrupt, written by something
    else, or by a newer layout)."""
    p = Path(path)
    remove_stale_temporaries(p)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory, not a checkpoint file")
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    if not raw:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes)")
    where = torch.device(map_location)
    location = "cpu" if where.type == "cpu" else where  # torch.load does not take "cpu:0"
    try:
        obj = torch.load(io.BytesIO(raw), map_location=location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {p} was refused by torch.load(weights_only=True): it is not a "
            "bayesdrop recsys checkpoint (it holds objects other than tensors, numbers, "
            f"strings and containers, or is no torch file at all): {_first_sentence(exc)}"
        ) from None
    except Exception as exc:  # torch.load fails in many ways on damaged bytes
        raise CheckpointError(
            f"checkpoint {p} cannot be read: truncated, corrupt, or not a torch checkpoint "
            f"({len(raw)} bytes; {_first_sentence(exc)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = type(obj).__name__ if not isinstance(obj, dict) else "a dictionary without it"
        raise CheckpointError(
            f"checkpoint {p} is not a bayesdrop recsys checkpoint (no format marker {FORMAT!r}; found {what})"
        )
    version = obj.get("version")
    if version == 1:
        raise CheckpointError(
            f"checkpoint {p} was written by an earlier bayesdrop without a content hash, so its "
            "integrity cannot be verified; train it again to write a checkpoint that can be"
        )
    if version != VERSION:
        raise CheckpointError(
            f"checkpoint {p} has layout version {version!r}; this bayesdrop reads version {VERSION}"
        )
    missing = [k for k in ("config", "data", "model", "state", HASH_KEY) if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {p} is incomplete: missing {missing}")
    try:
        actual = content_hash(obj)
    except TypeError as exc:
        raise CheckpointError(
            f"checkpoint {p} holds something no checkpoint holds: {exc}"
        ) from None
    if actual != obj[HASH_KEY]:
        raise CheckpointError(
            f"checkpoint {p} was altered after it was written: its content hash is {actual[:16]}..., "
            f"the stored one {str(obj[HASH_KEY])[:16]}... (a damaged disk or an edit); it is not "
            "used: restore it from a copy or train again"
        )
    return obj


# ------------------------------------------------------------------------------------ paths
def check_writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """Raise ``ValueError`` naming ``what`` unless ``path`` can be written as a regular file.

    Refuses a folder, a path under a regular file, and a file or nearest existing folder this
    process may not write. Creates nothing.
    """
    p = Path(path)
    if str(path) == "":
        raise ValueError(f"{what} must be a file path, but got an empty string")
    if p.is_dir():
        raise ValueError(f"{what} {p} is a directory; give a file path")
    if p.exists():
        if not p.is_file():
            raise ValueError(f"{what} {p} exists and is not a regular file")
        if not os.access(p, os.W_OK):
            raise ValueError(f"{what} {p} is not writable (permission denied)")
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {p}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {p}: directory {parent} is not writable (permission denied)")
    return p


@contextlib.contextmanager
def run_lock(paths: Sequence[str | os.PathLike[str]]) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``<path>.lock`` for each path, or refuse.

    Raises :class:`RunLockedError` naming the path (and the process id recorded in the lock
    file) when another run, in this or another process, holds one of the locks. Locks are
    released when the block ends or the process dies; the small ``.lock`` files stay (deleting
    them would race a run that is opening them).
    """
    held: list[int] = []
    try:
        for path in dict.fromkeys(str(Path(x).absolute()) for x in paths):
            lock = Path(f"{path}.lock")
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    try:
                        owner = os.read(fd, 64).decode("ascii", "replace").strip()
                    finally:
                        os.close(fd)
                    by = f" (process {owner})" if owner else ""
                    raise RunLockedError(
                        f"{path} is in use by another run{by}: its lock file {lock} is held; "
                        "wait for that run to finish or use another path"
                    ) from None
            held.append(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        for fd in reversed(held):
            os.close(fd)  # closing the descriptor releases the flock


def describe_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``["lr: 0.001 in the checkpoint, 0.01 now", ...]`` for every key whose values differ."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if a != b:
            out.append(
                f"{key}: {json.dumps(a, default=str)} in the checkpoint, "
                f"{json.dumps(b, default=str)} now"
            )
    return out
