"""Tests of afa.datasets (never reading the staged benchmark data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from afa.datasets import data_root, load_demo_table, load_mnist, load_uci_maf


def test_demo_table_is_a_complete_numeric_frame():
    table = load_demo_table()
    assert isinstance(table, pd.DataFrame)
    assert table.shape == (178, 13)
    assert table.notna().all().all()
    assert all(pd.api.types.is_float_dtype(t) for t in table.dtypes)


def test_data_root_default_and_env(monkeypatch):
    monkeypatch.delenv("AFA_DATA", raising=False)
    assert data_root() == Path("../shared/data")
    monkeypatch.setenv("AFA_DATA", "/somewhere")
    assert data_root() == Path("/somewhere")
    monkeypatch.setenv("AFA_DATA", "~/afa-data")
    assert data_root() == Path.home() / "afa-data"
    monkeypatch.setenv("AFA_DATA", "")
    assert data_root() == Path("../shared/data")


def test_load_uci_maf_reads_npz(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_DATA", str(tmp_path))
    folder = tmp_path / "uci-maf" / "miniboone"
    folder.mkdir(parents=True)
    val, test = np.ones((3, 2)), np.zeros((4, 2))
    np.savez(folder / "miniboone_maf_val_test.npz", val=val, test=test)
    splits = load_uci_maf("miniboone")
    assert splits.train is None
    np.testing.assert_array_equal(splits.val, val)
    np.testing.assert_array_equal(splits.test, test)


def test_load_uci_maf_missing_file_says_to_set_afa_data(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="AFA_DATA"):
        load_uci_maf("power")


def test_load_uci_maf_unknown_name():
    with pytest.raises(ValueError, match="Unknown UCI dataset"):
        load_uci_maf("gas")


def _write_idx(path: Path, array: np.ndarray) -> None:
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_load_mnist_reads_idx_and_resizes(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_DATA", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[0] = 255
    images[1, :, :14] = 255
    _write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.array([7, 1, 0]))
    rows, labels = load_mnist("test")
    assert rows.shape == (3, 784) and rows.dtype == np.float32
    np.testing.assert_array_equal(labels, [7, 1, 0])
    np.testing.assert_array_equal(rows[0], 1.0)
    small, _ = load_mnist("test", size=np.int64(16))
    assert small.shape == (3, 256)
    assert small.min() >= 0.0 and small.max() <= 1.0
    np.testing.assert_allclose(small[0], 1.0)
    half = small[1].reshape(16, 16)
    assert np.all(half[:, :7] == 1.0) and np.all(half[:, 9:] == 0.0)


def test_load_mnist_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="AFA_DATA"):
        load_mnist("train")
    with pytest.raises(ValueError, match="Unknown MNIST split"):
        load_mnist("validation")
    for size in (0, True, 16.0):
        with pytest.raises(ValueError, match="size must be a positive integer"):
            load_mnist("train", size=size)
