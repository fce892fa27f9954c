"""MovieLens-100K for the experiments: the ``recbole==1.2.1`` wheel, fetched from PyPI with
``pip download`` into a cache folder on first use, then read by the library's
:func:`bayesdrop.recsys.readers.read_recbole_wheel`.

The wheel (a zip file) carries ``recbole/dataset_example/ml-100k/ml-100k.inter`` (100,000
ratings of 1,682 movies by 943 users). Only the PyPI registry is contacted; the data are never
committed anywhere. The library itself downloads nothing: this is the application's job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bayesdrop.recsys.interactions import DataUnavailableError, Interactions
from bayesdrop.recsys.readers import RECBOLE_WHEEL_VERSION, read_recbole_wheel

__all__ = ["RECBOLE_WHEEL_VERSION", "default_cache_dir", "fetch_recbole_wheel", "load_ml100k"]


def default_cache_dir() -> Path:
    """``$BAYESDROP_CACHE`` or ``~/.cache/bayesdrop``."""
    env = os.environ.get("BAYESDROP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bayesdrop"


def fetch_recbole_wheel(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ``recbole==1.2.1`` wheel in ``cache_dir`` (default :func:`default_cache_dir`),
    downloaded with ``pip download recbole==1.2.1 --no-deps`` if absent.

    Raises:
        NotADirectoryError: ``cache_dir`` exists and is not a folder.
        DataUnavailableError: (a ``RuntimeError``) the download failed (e.g. no network); the
            message holds the command to run by hand.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise NotADirectoryError(20, "cache_dir is a file, not a folder", str(cache))
    pattern = f"recbole-{RECBOLE_WHEEL_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"recbole=={RECBOLE_WHEEL_VERSION}",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(cache),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if proc.returncode != 0 or not found:
        raise DataUnavailableError(
            "could not download the RecBole wheel that carries ML-100K; run\n  "
            + " ".join(cmd[2:])
            + f"\nby hand (needs access to PyPI). pip said: {proc.stderr.strip()[-400:]}"
        )
    return found[0]


def load_ml100k(cache_dir: str | os.PathLike[str] | None = None) -> Interactions:
    """MovieLens-100K (100,000 ratings) from the RecBole wheel (:func:`fetch_recbole_wheel`)."""
    return read_recbole_wheel(fetch_recbole_wheel(cache_dir))
