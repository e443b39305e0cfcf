"""Dataset loaders: the bundled demo table and the staged UCI (MAF) benchmark splits.

The benchmark data is not shipped with afa. Its root folder comes from the ``AFA_DATA``
environment variable (default ``../shared/data``, relative to the working directory);
``benchmarks/README.md`` in the repository lists the files the benchmarks expect there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.datasets import load_wine

__all__ = ["UCI_MAF_FILES", "UCISplits", "data_root", "load_demo_table", "load_uci_maf"]

DEFAULT_DATA_ROOT = "../shared/data"

UCI_MAF_FILES = {
    "power": "uci-maf/power/power_2007h1_maf.npz",
    "miniboone": "uci-maf/miniboone/miniboone_maf_val_test.npz",
    "bsds300": "uci-maf/bsds300/bsds300_recreated.npz",
}


class UCISplits(NamedTuple):
    """Train, validation and test arrays of one UCI (MAF) dataset.

    ``train`` is None where the staged data lacks it (MINIBOONE).
    """

    train: np.ndarray | None
    val: np.ndarray
    test: np.ndarray


def load_demo_table() -> pd.DataFrame:
    """The UCI Wine recognition table: 178 rows x 13 chemical measurements.

    Shipped with scikit-learn, so it loads offline. The cultivar (the classification target)
    is left out: the table holds only the measurements, in their raw units. It is small and
    its features are correlated and skewed, which makes it a fair, quick test of whether a
    conditional model beats a Gaussian, a column mean and scikit-learn's imputers.

    Returns
    -------
    DataFrame of shape (178, 13)

    Examples
    --------
    >>> load_demo_table().shape
    (178, 13)
    """
    return load_wine(as_frame=True).data


def data_root() -> Path:
    """Folder holding the staged benchmark data: ``$AFA_DATA`` or ``../shared/data``.

    Returns
    -------
    Path
        Relative paths are taken from the current working directory.

    Examples
    --------
    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"AFA_DATA": "/data/afa"}):
    ...     print(data_root())
    /data/afa
    """
    return Path(os.environ.get("AFA_DATA", DEFAULT_DATA_ROOT))


def load_uci_maf(name: str) -> UCISplits:
    """Load the MAF-standardised splits of a staged UCI dataset.

    Parameters
    ----------
    name : {"power", "miniboone", "bsds300"}
        ``"power"`` is a January-June 2007 subset and ``"bsds300"`` a re-creation, so their
        log-likelihoods are not comparable with published numbers; ``"miniboone"`` holds the
        official validation and test splits only (``train`` is None).

    Returns
    -------
    UCISplits
        Named tuple ``(train, val, test)`` of arrays of shape (n, d).

    Raises
    ------
    FileNotFoundError
        When the file is not under :func:`data_root`; set ``AFA_DATA`` to the data folder.
    """
    if name not in UCI_MAF_FILES:
        raise ValueError(f"Unknown UCI dataset {name!r}; choose one of {sorted(UCI_MAF_FILES)}.")
    path = data_root() / UCI_MAF_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found (resolved to {path.resolve()}). Set the AFA_DATA environment "
            "variable to the folder holding the staged benchmark data (the one containing "
            "'uci-maf/')."
        )
    with np.load(path) as arrays:
        train = arrays["train"] if "train" in arrays.files else None
        return UCISplits(train=train, val=arrays["val"], test=arrays["test"])
