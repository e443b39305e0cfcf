"""Dataset loaders: the bundled demo table, the staged UCI (MAF) splits and MNIST.

The benchmark data is not shipped with afa. Its root folder comes from the ``AFA_DATA``
environment variable (default ``../shared/data``, relative to the working directory);
``benchmarks/README.md`` in the repository lists the files the benchmarks expect there.
"""

from __future__ import annotations

import gzip
import numbers
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.datasets import load_wine

__all__ = [
    "UCI_MAF_FILES",
    "UCISplits",
    "data_root",
    "load_demo_table",
    "load_mnist",
    "load_uci_maf",
]

DEFAULT_DATA_ROOT = "../shared/data"

UCI_MAF_FILES = {
    "power": "uci-maf/power/power_2007h1_maf.npz",
    "miniboone": "uci-maf/miniboone/miniboone_maf_val_test.npz",
    "bsds300": "uci-maf/bsds300/bsds300_recreated.npz",
}


_MNIST_FILES = {
    "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
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
        Relative paths are taken from the current working directory; ``~`` is expanded,
        and an empty ``AFA_DATA`` counts as unset.

    Examples
    --------
    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"AFA_DATA": "/data/afa"}):
    ...     print(data_root())
    /data/afa
    """
    configured = os.environ.get("AFA_DATA", "")
    return Path(configured).expanduser() if configured else Path(DEFAULT_DATA_ROOT)


def _staged_file(relative: str) -> Path:
    path = data_root() / relative
    if not path.is_file():
        top = Path(relative).parts[0]
        raise FileNotFoundError(
            f"{path} not found (resolved to {path.resolve()}). Set the AFA_DATA environment "
            f"variable to the folder holding the staged benchmark data (the one containing "
            f"'{top}/')."
        )
    return path


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): magic, dimensions, then uint8 data."""
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    n_dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(shape)


def load_mnist(split: str = "train", size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Load staged MNIST images as rows of pixel intensities in [0, 1], and their labels.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        The standard 60,000 / 10,000 split.
    size : int, default=28
        Side of the returned images. Other sizes are resized bilinearly (half-pixel centres,
        no antialiasing, as ``tf.image.resize`` does in the Posterior Matching code), so
        ``size=16`` gives the 256-pixel MNIST of the acquisition benchmark.

    Returns
    -------
    images : ndarray of shape (n, size * size), float32 in [0, 1]
    labels : ndarray of shape (n,), int64

    Raises
    ------
    FileNotFoundError
        When the files are not under :func:`data_root`; set ``AFA_DATA`` to the data folder.
    """
    if split not in _MNIST_FILES:
        raise ValueError(f"Unknown MNIST split {split!r}; choose 'train' or 'test'.")
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer; got {size!r}.")
    size = int(size)
    image_file, label_file = _MNIST_FILES[split]
    images = _read_idx(_staged_file(image_file)).astype(np.float32) / 255.0
    labels = _read_idx(_staged_file(label_file)).astype(np.int64)
    if size != images.shape[1]:
        import torch  # imported here: the other loaders need only numpy

        resized = torch.nn.functional.interpolate(
            torch.from_numpy(images).unsqueeze(1),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )
        images = resized.squeeze(1).clamp(0.0, 1.0).numpy()
    return images.reshape(images.shape[0], -1), labels


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
    path = _staged_file(UCI_MAF_FILES[name])
    with np.load(path) as arrays:
        train = arrays["train"] if "train" in arrays.files else None
        return UCISplits(train=train, val=arrays["val"], test=arrays["test"])
