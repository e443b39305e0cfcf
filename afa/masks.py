"""Observation masks: training masks (torch) and missingness for benchmarks (NumPy).

Convention everywhere in afa: ``True`` (or 1) means *observed*.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

__all__ = [
    "TRAINING_MASKS",
    "as_observed_mask",
    "bernoulli_mask",
    "mcar_mask",
    "row_hash_uniforms",
    "uniform_mask",
]


def bernoulli_mask(
    shape: tuple[int, int], generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Each entry observed independently with probability 0.5 (the reference code's masks).

    Examples
    --------
    >>> bernoulli_mask((2, 3), torch.Generator().manual_seed(0)).dtype
    torch.bool
    """
    return torch.rand(shape, generator=generator, device=device) < 0.5


def uniform_mask(
    shape: tuple[int, int],
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    observed_fraction: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Per row, ``k`` entries observed, chosen uniformly at random, with ``k`` uniform on the
    counts whose share ``k / d`` lies in ``observed_fraction = (low, high)`` (the count
    nearest the range's middle when none does), and at most ``d - 1`` so that something is
    always left to predict.

    The default range gives ``k ~ U{0, …, d-1}``; ``(0.0, 0.2)`` gives the sparse masks of
    acquisition from nothing (the Posterior Matching reference code's MNIST setting).

    Examples
    --------
    >>> int(uniform_mask((5, 4), torch.Generator().manual_seed(0)).sum(1).max()) < 4
    True
    >>> mask = uniform_mask((100, 50), torch.Generator().manual_seed(0), observed_fraction=(0, 0.2))
    >>> int(mask.sum(1).max()) <= 10
    True
    """
    n_rows, n_features = shape
    if n_features < 1:
        raise ValueError(f"uniform_mask needs at least one feature; got shape {shape}.")
    low, high = _counts_within(observed_fraction, n_features)
    n_observed = torch.randint(low, high + 1, (n_rows, 1), generator=generator, device=device)
    ranks = torch.rand(shape, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < n_observed


def _counts_within(observed_fraction: tuple[float, float], n_features: int) -> tuple[int, int]:
    """The least and greatest count ``k < d`` with ``low <= k / d <= high``."""
    low, high = observed_fraction
    least = math.ceil(low * n_features - 1e-9)
    greatest = math.floor(high * n_features + 1e-9)
    if least > greatest:  # no count in the range: the one nearest its middle
        least = greatest = math.floor((low + high) / 2 * n_features + 0.5)
    cap = n_features - 1
    return min(least, cap), min(greatest, cap)


TRAINING_MASKS = {"bernoulli": bernoulli_mask, "uniform": uniform_mask}


def as_observed_mask(
    mask: object, shape: tuple[int, ...], name: str = "observed_mask"
) -> np.ndarray:
    """Check a user's mask (boolean, or 0/1) against ``shape``; return a boolean copy.

    Examples
    --------
    >>> as_observed_mask([[1, 0]], (1, 2))
    array([[ True, False]])
    """
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape} but X has shape {shape}; they must match.")
    if mask.dtype != bool:
        try:
            binary = bool(np.isin(mask, (0, 1)).all())
        except TypeError:  # e.g. pandas' NA in a nullable boolean mask
            binary = False
        if not binary:
            raise ValueError(f"{name} must be boolean (True = observed) or 0/1, with no NA.")
        mask = mask.astype(bool)
    return mask.copy()


def mcar_mask(
    shape: tuple[int, int], missing_rate: float, random_state: int | np.random.Generator
) -> np.ndarray:
    """Missing completely at random: each entry hidden independently with ``missing_rate``.

    Returns a boolean array, ``True`` where the entry stays observed.

    Examples
    --------
    >>> mcar_mask((1000, 2), 0.5, 0).mean().round(1)
    np.float64(0.5)
    """
    if not 0.0 <= missing_rate <= 1.0:
        raise ValueError(f"missing_rate must lie in [0, 1]; got {missing_rate}.")
    rng = np.random.default_rng(random_state)
    return rng.random(shape) >= missing_rate


def _splitmix64(values: np.ndarray) -> np.ndarray:
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def row_hash_uniforms(X: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1), one per entry, that depend only on the values of the entry's row.

    Identical rows get identical uniforms wherever they appear, so a mask drawn from them
    does not depend on row order or on the other rows. Equal values hash alike: ``-0.0`` as
    ``0.0``, and every NaN as the same NaN.

    Examples
    --------
    >>> X = np.arange(6.0).reshape(3, 2)
    >>> np.array_equal(row_hash_uniforms(X)[::-1], row_hash_uniforms(X[::-1]))
    True
    """
    rows = np.asarray(X, dtype=np.float64)
    columns = np.arange(rows.shape[1], dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D)
    with np.errstate(over="ignore"):
        bits = _splitmix64(_row_keys(rows)[:, None] ^ columns)
    return _to_uniform(bits)


def row_keyed_normals(X: np.ndarray, n_draws: int, width: int, seed: int) -> np.ndarray:
    """Standard normals of shape ``(n_draws, n, width)``: each row's from its own values.

    Different rows get independent draws, and a row's draws depend only on its values
    (NaN included, as in :func:`row_hash_uniforms`) and ``seed``, never on the rest of the
    batch: multiple imputations that are independent across rows yet batch-independent.

    Examples
    --------
    >>> X = np.array([[1.0, np.nan], [2.0, 0.5]])
    >>> draws = row_keyed_normals(X, 3, 4, seed=0)
    >>> draws.shape, np.array_equal(row_keyed_normals(X[1:], 3, 4, seed=0)[:, 0], draws[:, 1])
    ((3, 2, 4), True)
    """
    keys = _row_keys(np.asarray(X, dtype=np.float64))[None, :, None, None]
    with np.errstate(over="ignore"):
        stream = _splitmix64(np.uint64(seed % 2**64) ^ np.uint64(0xD1B54A32D192ED03))
        counters = np.arange(n_draws * width * 2, dtype=np.uint64).reshape(n_draws, 1, width, 2)
        bits = _splitmix64(keys ^ stream ^ (counters * np.uint64(0x9E3779B97F4A7C15)))
    uniforms = _to_uniform(bits)
    radius = np.sqrt(-2.0 * np.log1p(-uniforms[..., 0]))  # 1 - u lies in (0, 1]
    return radius * np.cos(2.0 * np.pi * uniforms[..., 1])


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """One 64-bit hash per row of its values, equal values alike (-0.0 as 0.0, NaN as NaN)."""
    rows = np.array(rows, dtype=np.float64) + 0.0  # a copy, with -0.0 made 0.0
    rows[np.isnan(rows)] = np.nan  # one bit pattern for every NaN
    digests = [hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows]
    return np.frombuffer(b"".join(digests), dtype=np.uint64)


def _to_uniform(bits: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) from the top 53 bits."""
    return (bits >> np.uint64(11)).astype(np.float64) / 2.0**53
