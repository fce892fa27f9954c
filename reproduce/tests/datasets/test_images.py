"""Image data: the IDX reader against a file written here, splits, and install messages."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from bayesdrop_reproduce.datasets import images
from bayesdrop_reproduce.datasets.images import load_images, read_idx


def test_read_idx_roundtrip(tmp_path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3i", 2, 3, 4) + data.tobytes())
    np.testing.assert_array_equal(read_idx(path), data)
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(path)


def test_missing_fashion_mnist_says_how(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        images.load_fashion_mnist("train", root=tmp_path)


def test_digits_split() -> None:
    data = load_images("digits", n_test=297, n_train=100, seed=1)
    assert data.x_train.shape == (100, 1, 8, 8) and data.x_test.shape == (297, 1, 8, 8)
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    with pytest.raises(ValueError, match="name"):
        load_images("cifar")


@pytest.mark.skipif(not images.FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist missing")
def test_fashion_mnist() -> None:
    x, y = images.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10  # balanced test set
