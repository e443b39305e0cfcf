"""Tests of afa.datasets (never reading the staged benchmark data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from afa.datasets import data_root, load_demo_table, load_uci_maf


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
