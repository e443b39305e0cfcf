"""PosteriorMatchingImputer: a VAE with a partial posterior, as a scikit-learn transformer."""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from afa._torch import call_seed, cpu_copy, resolve_device, seeded, standard_normal, to_tensor
from afa._training import Trainer, TrainingSettings
from afa.masks import TRAINING_MASKS, as_observed_mask, row_hash_uniforms, row_keyed_normals
from afa.models import PosteriorMatchingVAE
from afa.posteriors import POSTERIOR_FAMILIES

__all__ = ["PosteriorMatchingImputer"]

NOISE_ELEMENTS_PER_CHUNK = 2**20  # rows x samples x features processed at once at inference
# A correlated decoder factorises a d x d matrix per row and mask; beyond this width the
# cost outgrows its benefit, and "auto" falls back to the factorised heteroscedastic decoder.
_MAX_CORRELATED_FEATURES = 64
# Below this many rows the learned correlation overfits (Wine, 133 rows: LL -8.65 against
# -7.32 for the factorised decoder), so "auto" keeps the factorised decoder.
_MIN_CORRELATED_ROWS = 2_000
_LARGEST_STANDARDISED = 1e15  # observed values, in standard deviations: squares stay finite


@dataclass(frozen=True)
class _Capacity:
    """Size-dependent choices behind the ``"auto"`` parameters."""

    latent_dim: int
    decoder_scale: str | None
    hidden_layer_sizes: tuple[int, ...]
    dropout: float
    weight_decay: float
    batch_size: int
    max_iter: int
    n_iter_no_change: int


def _auto_capacity(n_rows: int, n_features: int) -> _Capacity:
    """Capacity, regularisation and training length for a table of ``n_rows x n_features``.

    Small tables get narrow, regularised networks trained for many epochs; large tables get
    wide networks and fewer epochs. Batches hold about a third of a small table (large
    batches tame the noise of the one-sample ELBO); training aims at about 15,000 optimiser
    steps, and early stopping waits about 1,000 steps for an improvement.
    """
    width = 64 if n_rows < 2_000 else 128 if n_rows < 20_000 else 256
    batch_size = int(min(512, max(32, 2 ** round(math.log2(max(n_rows, 1) / 3)))))
    steps_per_epoch = max(1, math.ceil(n_rows / batch_size))
    return _Capacity(
        latent_dim=int(min(16, max(2, n_features))),
        decoder_scale=(
            "correlated"
            if n_rows >= _MIN_CORRELATED_ROWS and n_features <= _MAX_CORRELATED_FEATURES
            else "heteroscedastic"
        ),
        hidden_layer_sizes=(width, width),
        dropout=0.1 if n_rows < 5_000 else 0.0,
        weight_decay=1e-2 if n_rows < 5_000 else 1e-4,
        batch_size=batch_size,
        max_iter=int(min(3_000, max(30, 15_000 // steps_per_epoch))),
        n_iter_no_change=int(min(300, max(5, 1_000 // steps_per_epoch))),
    )


def is_scalar_nan(value: object) -> bool:
    """True when ``value`` is a float NaN (the default ``missing_values`` marker)."""
    return isinstance(value, numbers.Real) and math.isnan(value)


def _missing_mask(X: np.ndarray, missing_values: float) -> np.ndarray:
    """Boolean mask, True where ``X`` holds an observed value."""
    if is_scalar_nan(missing_values):
        return ~np.isnan(X)
    return X != missing_values


def _check_numeric_columns(X: object) -> None:
    if isinstance(X, pd.DataFrame):
        bad = [str(c) for c, dtype in X.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
        if bad:
            raise ValueError(
                f"Non-numeric columns {bad}: afa models numeric features only; encode "
                "categorical columns as numbers first."
            )


def describe_rows(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"[{shown}{', ...' if len(rows) > limit else ''}] ({len(rows)} rows)"


def _check_rows_observed(observed: np.ndarray) -> None:
    empty_rows = np.flatnonzero(~observed.any(axis=1))
    if empty_rows.size:
        raise ValueError(
            f"Training rows {describe_rows(empty_rows)} have no observed values; drop them "
            "before fitting."
        )


def is_real(value: object) -> bool:
    """A real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_positive_int(value: object) -> bool:
    """An integer of at least 1, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _moments_fit(moments: dict, optimizer: torch.optim.Optimizer) -> bool:
    """Whether saved per-parameter Adam state matches ``optimizer``'s parameters."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    return all(
        isinstance(index, int)
        and 0 <= index < len(parameters)
        and all(
            value.shape == parameters[index].shape
            for name, value in entry.items()
            if name != "step"
        )
        for index, entry in moments.items()
    )


def is_fraction_range(value: object) -> bool:
    """``(low, high)`` with ``0 <= low <= high <= 1``."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        return False
    low, high = value
    return is_real(low) and is_real(high) and bool(0.0 <= low <= high <= 1.0)


def check_positive_int_or_auto(name: str, value: object) -> None:
    """A ValueError naming ``name`` unless ``value`` is ``"auto"`` or a positive integer."""
    if not (isinstance(value, str) and value == "auto") and not is_positive_int(value):
        raise ValueError(f"{name} must be a positive integer or 'auto'; got {value!r}.")


def check_hidden_layer_sizes(sizes: object) -> None:
    """A ValueError unless ``sizes`` is ``"auto"`` or a non-empty tuple of positive ints."""
    if not (isinstance(sizes, str) and sizes == "auto") and not (
        isinstance(sizes, (tuple, list)) and sizes and all(is_positive_int(s) for s in sizes)
    ):
        raise ValueError(
            f"hidden_layer_sizes must be 'auto' or a non-empty tuple of positive integers; "
            f"got {sizes!r}."
        )


def check_n_samples(n_samples: object) -> int:
    """``n_samples`` itself when it is a positive integer, else a ValueError naming it."""
    if not is_positive_int(n_samples):
        raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}.")
    return int(n_samples)


def check_score_inputs(
    validate: Callable[..., tuple[np.ndarray, np.ndarray]],
    X,
    observed_mask,
    n_samples: int | None,
    default_samples: int,
    hint: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The checked inputs of ``score_conditional``: complete rows, where they are present,
    the evidence mask and the number of samples (``default_samples`` when None).

    ``validate`` is a fitted imputer's ``_validate``, which checks the columns.
    """
    X, present = validate(X, reset=False)
    if not present.all():
        rows = np.flatnonzero(~present.all(axis=1))
        raise ValueError(
            f"score_conditional needs complete rows, but rows {describe_rows(rows)} have "
            f"missing values{hint}."
        )
    mask = as_observed_mask(observed_mask, X.shape)
    return X, present, mask, check_n_samples(default_samples if n_samples is None else n_samples)


class ImputerTagsMixin:
    """scikit-learn tags of afa's imputers: NaN input allowed (when it marks missing
    entries) and the float dtype preserved."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = is_scalar_nan(self.missing_values)
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class PosteriorMatchingImputer(
    ImputerTagsMixin, OneToOneFeatureMixin, TransformerMixin, BaseEstimator
):
    """Impute and score any conditional ``p(x_u | x_o)`` with a Posterior-Matching VAE.

    A VAE (full-covariance Gaussian encoder, residual-MLP decoder) is trained jointly with a
    partial posterior ``q(z | x_o)`` that matches the encoder's posterior for random subsets
    of observed features (Strauss & Oliva, 2022). Imputation averages decoder means under
    ``q(z | x_o)``; conditional log-likelihoods are importance sampled.

    Parameters
    ----------
    latent_dim : int or "auto", default="auto"
        Latent dimension; ``"auto"`` uses the number of features, clipped to [2, 16].
    posterior : {"autoregressive", "gaussian", "flow", "spline"}, default="autoregressive"
        Family of ``q(z | x_o)``: a MADE mixture of Gaussians, a full-covariance Gaussian, a
        conditional masked affine autoregressive flow, or a rational-quadratic spline flow.
    likelihood : {"gaussian", "bernoulli"}, default="gaussian"
        Decoder likelihood. ``"gaussian"`` has a learned scale per feature (see
        ``decoder_scale``); ``"bernoulli"`` is for data in [0, 1] and is fitted on the raw
        values (no standardisation).
    decoder_scale : {"auto", "correlated", "heteroscedastic", "feature", "shared"}, \
default="auto"
        Covariance of the Gaussian decoder ``p(x | z)``. ``"heteroscedastic"``: a scale per
        feature that the decoder outputs for each ``z``. ``"correlated"``: the same scales
        times one learned correlation matrix, so ``p(x | z)`` is a full-covariance Gaussian
        and imputation adds the Gaussian regression of ``x_u`` on ``x_o`` given ``z``.
        ``"feature"`` / ``"shared"``: one constant scale per feature / for all features.
        ``"auto"`` is ``"correlated"`` from 2,000 rows and up to 64 features (it costs a
        ``d x d`` Cholesky factorisation per row and mask, and overfits small tables), else
        ``"heteroscedastic"``.
    hidden_layer_sizes : tuple of int or "auto", default="auto"
        Widths of the residual blocks of every network; ``"auto"`` uses two blocks of 64, 128
        or 256 units as the table grows.
    dropout : float or "auto", default="auto"
        Dropout inside the residual blocks (there are none with a single hidden layer);
        ``"auto"`` is 0.1 below 5,000 rows, else 0.
    pm_weight : float, default=1.0
        Weight of the Posterior Matching term in the loss.
    stop_gradient : bool, default=True
        Stop the PM gradient at the encoder sample, so PM trains only ``q(z | x_o)``.
    training_mask : {"bernoulli", "uniform"}, default="bernoulli"
        How training masks are drawn each step: every entry observed with probability 0.5,
        or ``k`` entries observed with ``k`` uniform over the range ``observed_fraction``
        gives. Entries missing in the data stay missing.
    observed_fraction : tuple of float, default=(0.0, 1.0)
        ``(low, high)``, for ``training_mask="uniform"``: ``k`` is uniform on the counts
        with ``low <= k / d <= high``, at most ``d - 1``. Match it to the evidence the
        model will be asked about: ``(0.0, 0.2)`` suits acquisition from nothing, as in the
        Posterior Matching reference code on MNIST. Leave the default with ``"bernoulli"``
        masks.
    kl_schedule : {"constant", "cyclical"}, default="constant"
        KL weight over epochs: 1 throughout, or four linear 0-to-1 ramps.
    max_iter : int or "auto", default="auto"
        Maximum number of epochs; ``"auto"`` aims at about 15,000 optimiser steps
        (clipped to [30, 3000] epochs).
    batch_size : int or "auto", default="auto"
        Rows per step; ``"auto"`` is about ``n_rows / 3``, clipped to [32, 512].
    learning_rate_init : float, default=3e-3
        Adam's initial learning rate.
    learning_rate_decay : float, default=0.1
        Factor by which the learning rate falls over ``max_iter`` epochs (exponentially).
    weight_decay : float or "auto", default="auto"
        Decoupled weight decay on weight matrices; ``"auto"`` is 1e-2 below 5,000 rows and
        1e-4 above.
    max_grad_norm : float or None, default=1.0
        Each optimiser step's gradient is rescaled to at most this total norm; None disables
        the cap. Adam is insensitive to a gradient's overall scale, so below the typical norm
        the value matters little (on POWER caps of 1 and 5 trained alike). Without a cap, a
        rare step with a gradient a hundred times the usual one inflates Adam's running
        second moment, the following steps shrink, and early stopping ends the fit too
        soon.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the rows and stop when their loss stalls; the best
        epoch's weights are kept.
    validation_fraction : float, default=0.1
    n_iter_no_change : int or "auto", default="auto"
        Epochs without improvement before stopping; ``"auto"`` waits about 1,000 steps
        (clipped to [5, 300] epochs).
    tol : float, default=1e-3
        Minimum decrease of the validation loss, relative to the best so far, that counts as
        an improvement.
    n_samples : int, default=100
        Latent samples for ``transform`` and importance samples for ``score_conditional``.
    missing_values : float, default=np.nan
        Marker of a missing entry.
    device : {"auto", "cpu", "cuda"}, default="auto"
    random_state : int, RandomState or None, default=None
        Seeds training, the validation split and the inference noise.
    verbose : bool, default=False
        Show a progress bar over epochs.
    warm_start : bool, default=False
        Continue training the current model in ``fit`` instead of starting afresh.

    Attributes
    ----------
    model_ : PosteriorMatchingVAE
        The trained torch model (on standardised data).
    mean_, scale_ : ndarray of shape (n_features_in_,)
        Standardisation applied before the model.
    hyperparameters_ : dict
        The resolved values of every ``"auto"`` parameter (``decoder_scale`` is None for a
        Bernoulli decoder, which has no scale).
    n_iter_ : int
        Epochs trained.
    loss_curve_ : list of float
        Mean training loss per epoch.
    history_ : dict of list
        Per-epoch training loss, ELBO, KL, PM loss, KL weight, learning rate and
        validation loss.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from afa import PosteriorMatchingImputer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)) @ [[1, 0.5, 0], [0, 1, 0.5], [0, 0, 1]]
    >>> imp = PosteriorMatchingImputer(max_iter=5, random_state=0).fit(X)
    >>> X_nan = X[:4].copy(); X_nan[0, 1] = np.nan
    >>> imp.transform(X_nan).shape
    (4, 3)
    """

    def __init__(
        self,
        *,
        latent_dim: int | str = "auto",
        posterior: str = "autoregressive",
        likelihood: str = "gaussian",
        decoder_scale: str = "auto",
        hidden_layer_sizes: tuple[int, ...] | str = "auto",
        dropout: float | str = "auto",
        pm_weight: float = 1.0,
        stop_gradient: bool = True,
        training_mask: str = "bernoulli",
        observed_fraction: tuple[float, float] = (0.0, 1.0),
        kl_schedule: str = "constant",
        max_iter: int | str = "auto",
        batch_size: int | str = "auto",
        learning_rate_init: float = 3e-3,
        learning_rate_decay: float = 0.1,
        weight_decay: float | str = "auto",
        max_grad_norm: float | None = 1.0,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        n_iter_no_change: int | str = "auto",
        tol: float = 1e-3,
        n_samples: int = 100,
        missing_values: float = np.nan,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
        warm_start: bool = False,
    ) -> None:
        self.latent_dim = latent_dim
        self.posterior = posterior
        self.likelihood = likelihood
        self.decoder_scale = decoder_scale
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.pm_weight = pm_weight
        self.stop_gradient = stop_gradient
        self.training_mask = training_mask
        self.observed_fraction = observed_fraction
        self.kl_schedule = kl_schedule
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.learning_rate_decay = learning_rate_decay
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.n_samples = n_samples
        self.missing_values = missing_values
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        def choice(name: str, options) -> None:
            if getattr(self, name) not in options:
                raise ValueError(
                    f"{name} must be one of {sorted(options)}; got {getattr(self, name)!r}."
                )

        for name in ("latent_dim", "max_iter", "batch_size", "n_iter_no_change"):
            check_positive_int_or_auto(name, getattr(self, name))
        check_n_samples(self.n_samples)
        self._check_numbers()
        choice("posterior", POSTERIOR_FAMILIES)
        choice("likelihood", {"gaussian", "bernoulli"})
        choice("decoder_scale", {"auto", "heteroscedastic", "correlated", "feature", "shared"})
        choice("training_mask", TRAINING_MASKS)
        if not is_fraction_range(self.observed_fraction):
            raise ValueError(
                "observed_fraction must be (low, high) with 0 <= low <= high <= 1; got "
                f"{self.observed_fraction!r}."
            )
        if self.training_mask != "uniform" and tuple(self.observed_fraction) != (0.0, 1.0):
            raise ValueError(
                "observed_fraction bounds the 'uniform' training masks; with training_mask="
                f"{self.training_mask!r} it would have no effect."
            )
        choice("kl_schedule", {"constant", "cyclical"})
        check_hidden_layer_sizes(self.hidden_layer_sizes)
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must lie in (0, 1); got {self.validation_fraction!r}."
            )
        if not 0.0 < self.learning_rate_decay <= 1.0:
            raise ValueError(
                f"learning_rate_decay must lie in (0, 1]; got {self.learning_rate_decay!r}."
            )
        cap = self.max_grad_norm
        if cap is not None and not (is_real(cap) and cap > 0):
            raise ValueError(f"max_grad_norm must be a positive number or None; got {cap!r}.")
        if not self.learning_rate_init > 0:
            raise ValueError(
                f"learning_rate_init must be positive; got {self.learning_rate_init!r}."
            )
        resolve_device(self.device)

    def _check_numbers(self) -> None:
        """Real-valued parameters: a clear error instead of a failure deep in training."""
        dropout, decay = self.dropout, self.weight_decay
        if not (dropout == "auto" and isinstance(dropout, str)) and not (
            is_real(dropout) and 0.0 <= dropout < 1.0
        ):
            raise ValueError(f"dropout must be 'auto' or a number in [0, 1); got {dropout!r}.")
        if not (decay == "auto" and isinstance(decay, str)) and not (is_real(decay) and decay >= 0):
            raise ValueError(f"weight_decay must be 'auto' or a number >= 0; got {decay!r}.")
        for name in ("pm_weight", "tol"):
            value = getattr(self, name)
            if not (is_real(value) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")

    def _resolve_capacity(self, n_rows: int, n_features: int) -> _Capacity:
        auto = _auto_capacity(n_rows, n_features)
        chosen = {
            "latent_dim": self.latent_dim,
            "decoder_scale": self.decoder_scale,
            "hidden_layer_sizes": self.hidden_layer_sizes,
            "dropout": self.dropout,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "max_iter": self.max_iter,
            "n_iter_no_change": self.n_iter_no_change,
        }
        resolved = {
            name: getattr(auto, name) if isinstance(value, str) and value == "auto" else value
            for name, value in chosen.items()
        }
        resolved["hidden_layer_sizes"] = tuple(int(s) for s in resolved["hidden_layer_sizes"])
        if len(resolved["hidden_layer_sizes"]) == 1:  # no residual block to drop out in
            resolved["dropout"] = 0.0
        if self.likelihood == "bernoulli":  # a Bernoulli decoder has no scale to model
            resolved["decoder_scale"] = None
        return _Capacity(**resolved)

    # ------------------------------------------------------------------ validation
    def _validate(self, X, *, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        """Validated array (float64 or float32) and its observed mask."""
        if not reset:
            check_n_samples(self.n_samples)  # set_params may have changed it since fit
        _check_numeric_columns(X)
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=[np.float64, np.float32],
            ensure_all_finite="allow-nan" if is_scalar_nan(self.missing_values) else True,
        )
        observed = _missing_mask(X, self.missing_values)
        if self.likelihood == "bernoulli":
            values = X[observed]
            if values.size and (values.min() < 0 or values.max() > 1):
                raise ValueError(
                    "likelihood='bernoulli' needs values in [0, 1]; X has values in "
                    f"[{values.min():.4g}, {values.max():.4g}]."
                )
        return X, observed

    def _validate_training_data(self, X) -> tuple[np.ndarray, np.ndarray]:
        X, observed = self._validate(X, reset=True)
        if X.shape[0] < 2:
            raise ValueError(f"Fitting needs at least 2 rows; got {X.shape[0]} sample.")
        empty_columns = np.flatnonzero(~observed.any(axis=0))
        if empty_columns.size:
            names = getattr(self, "feature_names_in_", np.arange(X.shape[1]))[empty_columns]
            raise ValueError(
                f"Columns {list(map(str, names))} have no observed values; drop them before "
                "fitting."
            )
        _check_rows_observed(observed)
        return X, observed

    # ------------------------------------------------------------------ fitting
    def _standardise(self, X: np.ndarray, observed: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            standardised = np.where(observed, (X - self.mean_) / self.scale_, 0.0)
        too_large = np.abs(standardised) > _LARGEST_STANDARDISED
        if too_large.any():
            rows = np.flatnonzero(too_large.any(axis=1))
            raise ValueError(
                f"Rows {describe_rows(rows)} hold values more than {_LARGEST_STANDARDISED:.0e} "
                "training standard deviations from the training mean; the model computes in "
                "float32 and cannot represent them. Check the data's units."
            )
        return standardised

    def _initialise(self, X: np.ndarray, observed: np.ndarray) -> None:
        random_state = check_random_state(self.random_state)
        self._training_seed_, self._split_seed_, self._inference_seed_ = (
            int(s) for s in random_state.randint(0, 2**31 - 1, size=3)
        )
        capacity = self._resolve_capacity(X.shape[0], X.shape[1])
        self.hyperparameters_ = asdict(capacity)
        if self.likelihood != "bernoulli":
            with np.errstate(invalid="ignore", over="ignore"):
                masked = np.where(observed, X, np.nan).astype(np.float64)
                self.mean_ = np.nanmean(masked, axis=0)
                scale = np.nanstd(masked, axis=0)
            spread = ~(np.isfinite(self.mean_) & np.isfinite(scale))
            if spread.any():
                names = getattr(self, "feature_names_in_", np.arange(X.shape[1]))[spread]
                raise ValueError(
                    f"Columns {list(map(str, names))} spread too widely for their mean and "
                    "standard deviation to be finite in float64; rescale them."
                )
            self.scale_ = np.where(scale > 0, scale, 1.0)
        else:
            self.mean_ = np.zeros(X.shape[1])
            self.scale_ = np.ones(X.shape[1])
        with seeded(self._training_seed_, torch.device("cpu")):
            model = PosteriorMatchingVAE(
                n_features=X.shape[1],
                latent_dim=capacity.latent_dim,
                hidden_layer_sizes=capacity.hidden_layer_sizes,
                posterior=self.posterior,
                likelihood=self.likelihood,
                dropout=capacity.dropout,
                pm_weight=self.pm_weight,
                stop_gradient=self.stop_gradient,
                training_mask=self.training_mask,
                decoder_scale=capacity.decoder_scale,
                observed_fraction=tuple(self.observed_fraction),
            )
        self.model_ = model.to(resolve_device(self.device))
        self._structure_ = self._structure(capacity)
        self._n_training_rows_ = X.shape[0]
        self._trainer = None
        self.history_: dict[str, list[float]] = {}

    def _structure(self, capacity: _Capacity) -> dict[str, object]:
        """What the built model fixes: a warm start cannot change it."""
        return {
            "posterior": self.posterior,
            "likelihood": self.likelihood,
            "latent_dim": capacity.latent_dim,
            "hidden_layer_sizes": capacity.hidden_layer_sizes,
            "decoder_scale": capacity.decoder_scale,
        }

    def _check_same_structure(self) -> None:
        """A warm start continues the built model: refuse parameters it cannot follow."""
        capacity = self._resolve_capacity(self._n_training_rows_, self.n_features_in_)
        wanted = self._structure(capacity)
        changed = [
            f"{name}={wanted[name]!r} (built with {built!r})"
            for name, built in getattr(self, "_structure_", wanted).items()
            if wanted[name] != built and getattr(self, name) != "auto"
        ]
        if changed:
            raise ValueError(
                "warm_start continues the model already built, which cannot take "
                + ", ".join(changed)
                + ". Set warm_start=False to build a new one."
            )

    @contextlib.contextmanager
    def _restored_on_failure(self, continues: bool) -> Iterator[None]:
        """Undo a fit that raises: the estimator keeps its state from before the call (or
        stays unfitted), never a half-trained or diverged model.

        ``continues`` says the call trains the existing model in place (warm start,
        ``partial_fit``): only then are its weights copied, and its optimiser is dropped on
        failure; a fresh fit builds a new model and leaves the old one untouched.
        """
        before = {name: value for name, value in vars(self).items() if name.endswith("_")}
        weights = copy.deepcopy(self.model_.state_dict()) if continues else None
        trainer = getattr(self, "_trainer", None)
        try:
            yield
        except BaseException:
            for name in [name for name in vars(self) if name.endswith("_")]:
                delattr(self, name)
            vars(self).update(before)
            if weights is not None:
                self.model_.load_state_dict(weights)
            self._trainer = None if continues else trainer  # its Adam state moved with the model
            raise

    def _new_trainer(self) -> Trainer:
        """A trainer for ``model_`` with the current training parameters.

        The architecture stays as built; the loss (``pm_weight``, ``stop_gradient``, the
        training masks), batch size, epochs, learning rate, weight decay and early stopping
        follow the parameters as they are now (``set_params`` then a ``warm_start`` fit uses
        them).
        """
        capacity = self._resolve_capacity(self._n_training_rows_, self.n_features_in_)
        self.hyperparameters_.update(
            {
                name: getattr(capacity, name)
                for name in ("batch_size", "max_iter", "weight_decay", "n_iter_no_change")
            }
        )
        settings = TrainingSettings(
            max_iter=capacity.max_iter,
            batch_size=capacity.batch_size,
            learning_rate_init=self.learning_rate_init,
            weight_decay=capacity.weight_decay,
            learning_rate_decay=self.learning_rate_decay ** (1.0 / capacity.max_iter),
            early_stopping=self.early_stopping,
            n_iter_no_change=capacity.n_iter_no_change,
            tol=self.tol,
            kl_schedule=self.kl_schedule,
            verbose=self.verbose,
            max_grad_norm=self.max_grad_norm,
        )
        model = self._model()
        model.pm_weight, model.stop_gradient = self.pm_weight, self.stop_gradient
        model.training_mask = self.training_mask
        model.observed_fraction = tuple(self.observed_fraction)
        return Trainer(model, settings, self._training_seed_, self.history_)

    def _resumed_trainer(self) -> Trainer:
        """A trainer that continues the learning-rate and KL schedules and, after a round
        trip through pickle or copy, Adam's moments (the per-parameter state only: the
        settings are the current parameters)."""
        trainer = self._new_trainer()
        resume = vars(self).pop("_resume", None)
        trainer.epochs_run = trainer.epoch if resume is None else resume["epochs_run"]
        if resume is not None and _moments_fit(resume["moments"], trainer.optimizer):
            state = trainer.optimizer.state_dict()
            trainer.optimizer.load_state_dict({**state, "state": resume["moments"]})
        return trainer

    def _tensors(self, X: np.ndarray, observed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        device = resolve_device(self.device)
        x = to_tensor(self._standardise(X, observed), device)
        return x, torch.tensor(observed, device=device)

    def _split(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng(self._split_seed_).permutation(n_rows)
        if not self.early_stopping:
            return order, order[:0]
        n_validation = max(1, int(round(self.validation_fraction * n_rows)))
        n_validation = min(n_validation, n_rows - 1)
        return order[n_validation:], order[:n_validation]

    def _store_history(self, trainer: Trainer) -> None:
        self.history_ = trainer.history
        self.loss_curve_ = list(trainer.history["loss"])
        self.n_iter_ = trainer.epoch

    def fit(self, X, y=None) -> PosteriorMatchingImputer:
        """Train the VAE and its partial posterior on ``X`` (NaN marks missing entries).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        continues = self.warm_start and hasattr(self, "model_")
        if continues:
            X, observed = self._validate_continuing(X)
        vars(self).pop("_resume", None)  # a fit starts its own optimiser
        with self._restored_on_failure(continues):
            if not continues:
                X, observed = self._validate_training_data(X)
                self._initialise(X, observed)
            x, mask = self._tensors(X, observed)
            train_rows, validation_rows = (
                torch.as_tensor(rows, device=x.device) for rows in self._split(X.shape[0])
            )
            self._trainer = self._new_trainer()
            self._trainer.fit(
                (x[train_rows], mask[train_rows]),
                (x[validation_rows], mask[validation_rows]),
                self.hyperparameters_["max_iter"],
            )
            self._store_history(self._trainer)
        return self

    def partial_fit(self, X, y=None) -> PosteriorMatchingImputer:
        """Train for one epoch over ``X``; the first call also builds the model.

        Standardisation statistics come from the first call's data. No rows are held out.
        The optimiser (its settings and Adam's moments) carries over between calls: training
        parameters changed with ``set_params`` take effect at the next ``fit``. A pickled or
        copied estimator resumes where it stopped (Adam's moments, the position in the
        learning-rate and KL schedules), rebuilding its optimiser from the parameters as they
        are then. Input this call rejects leaves the estimator as it was.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        continues = hasattr(self, "model_")
        if continues:
            X, observed = self._validate_continuing(X)
        with self._restored_on_failure(continues):
            if not continues:
                X, observed = self._validate_training_data(X)
                self._initialise(X, observed)
            if getattr(self, "_trainer", None) is None:
                self._trainer = self._resumed_trainer()
            self._trainer.record(self._trainer.run_epoch(*self._tensors(X, observed)))
            self._store_history(self._trainer)
        return self

    def _validate_continuing(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Checks for a call that trains the built model further; they change nothing, so
        input they reject leaves the estimator (its optimiser included) as it was."""
        self._check_same_structure()
        X, observed = self._validate(X, reset=False)
        _check_rows_observed(observed)
        return X, observed

    # ------------------------------------------------------------------ inference helpers
    def _model(self) -> PosteriorMatchingVAE:
        device = resolve_device(self.device)
        if next(self.model_.parameters()).device != device:
            self.model_.to(device)
        self.model_.eval()
        return self.model_

    def _noise(self, n_samples: int, width: int, offset: int, seed: int | None) -> torch.Tensor:
        base = self._inference_seed_ if seed is None else seed
        device = resolve_device(self.device)
        return standard_normal((n_samples, 1, width), base + offset, device)

    def _chunks(self, n_rows: int, n_samples: int) -> list[slice]:
        per_chunk = max(1, NOISE_ELEMENTS_PER_CHUNK // (n_samples * self.n_features_in_))
        return [slice(s, min(s + per_chunk, n_rows)) for s in range(0, n_rows, per_chunk)]

    def _wrap_like(self, values: np.ndarray, X_in) -> np.ndarray | pd.DataFrame:
        """``values`` shaped as ``X_in``: a DataFrame keeps its index, columns and the dtype
        of each float column (float32, or pandas' nullable Float64); other columns, which
        imputation may fill with non-integers, come back as floats."""
        if not isinstance(X_in, pd.DataFrame):
            return values
        frame = pd.DataFrame(values, index=X_in.index, columns=X_in.columns)
        floats = [pd.api.types.is_float_dtype(dtype) for dtype in X_in.dtypes]
        for position in np.flatnonzero(floats):
            frame.isetitem(position, frame.iloc[:, position].astype(X_in.dtypes.iloc[position]))
        return frame

    # ------------------------------------------------------------------ public inference
    @torch.inference_mode()
    def transform(self, X):
        """Replace missing entries by ``E[x_u | x_o]``; observed entries are returned unchanged.

        The estimate averages the decoder means of ``n_samples`` latents drawn from
        ``q(z | x_o)`` with noise shared by all rows, so a row's result does not depend on
        the other rows.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)

        Returns
        -------
        ndarray or DataFrame of the input's shape and dtype
        """
        check_is_fitted(self)
        X_in = X
        X, observed = self._validate(X, reset=False)
        model = self._model()
        x, mask = self._tensors(X, observed)
        noise = self._noise(self.n_samples, model.partial_posterior.noise_dim, 0, None)
        imputed = np.array(X, dtype=np.float64, copy=True)
        rows = np.flatnonzero(~observed.all(axis=1))
        for chunk in self._chunks(len(rows), self.n_samples):
            index = torch.as_tensor(rows[chunk], device=x.device)
            means = model.decoder_means(x[index], mask[index], noise).mean(0)
            imputed[rows[chunk]] = means.double().cpu().numpy() * self.scale_ + self.mean_
        result = np.where(observed, X, imputed.astype(X.dtype))
        return self._wrap_like(result, X_in)

    @torch.inference_mode()
    def sample(
        self, X, n_samples: int = 10, random_state: int | np.random.RandomState | None = None
    ) -> np.ndarray:
        """Multiple imputations: draws of ``x_u`` from the model given ``x_o``.

        Each draw takes ``z ~ q(z | x_o)`` and then ``x ~ p(x | z)``; observed entries are
        kept exactly. Draws are independent across rows, and a row's draws depend only on
        its own entries and the seed, not on the rest of the batch.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)
        n_samples : int, default=10
        random_state : int, RandomState or None, default=None
            Seed of the draws; ``None`` uses a seed fixed at fit time (repeatable draws).

        Returns
        -------
        ndarray of shape (n_samples, n, d), in the input's dtype
        """
        check_is_fitted(self)
        check_n_samples(n_samples)
        random_state = call_seed(random_state)
        X, observed = self._validate(X, reset=False)
        model = self._model()
        x, mask = self._tensors(X, observed)
        seed = self._inference_seed_ if random_state is None else random_state
        keyed = np.where(observed, X, np.nan)  # each row's noise follows from its evidence
        noise_dim = model.partial_posterior.noise_dim
        draws = np.empty((n_samples,) + X.shape, dtype=np.float64)
        for chunk in self._chunks(X.shape[0], n_samples):
            latent_noise, value_noise = (
                to_tensor(row_keyed_normals(keyed[chunk], n_samples, width, 2 * seed + k), x.device)
                for k, width in ((1, noise_dim), (2, X.shape[1]))
            )
            values = model.sample_completions(x[chunk], mask[chunk], latent_noise, value_noise)
            draws[:, chunk] = values.double().cpu().numpy() * self.scale_ + self.mean_
        return np.where(observed, X, draws.astype(X.dtype))

    @torch.inference_mode()
    def _log_conditional(
        self, X: np.ndarray, target: np.ndarray, observed: np.ndarray, n_samples: int
    ) -> np.ndarray:
        """``log p(x_t | x_o)`` in nats, in the input's units, for ``o ⊆ t``."""
        model = self._model()
        x, target_t = self._tensors(X, target)
        observed_t = torch.as_tensor(observed, device=x.device)
        encoder_noise = self._noise(n_samples, model.latent_dim, 3, None)
        posterior_noise = self._noise(n_samples, model.partial_posterior.noise_dim, 4, None)
        scores = np.empty(X.shape[0])
        for chunk in self._chunks(X.shape[0], n_samples):
            values = model.log_conditional(
                x[chunk], target_t[chunk], observed_t[chunk], encoder_noise, posterior_noise
            )
            scores[chunk] = values.double().cpu().numpy()
        jacobian = ((target & ~observed) * np.log(self.scale_)).sum(axis=1)
        return scores - jacobian

    def score_conditional(self, X, observed_mask, n_samples: int | None = None) -> np.ndarray:
        """Importance-sampled ``log p(x_u | x_o)`` per row, in nats, summed over ``u``.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)
            Complete rows (NaN is an error).
        observed_mask : array-like of bool, shape (n, d)
            True where the entry counts as observed; the others are scored.
        n_samples : int, optional
            Importance samples; defaults to the estimator's ``n_samples``.

        Returns
        -------
        ndarray of shape (n,)
            Rows with nothing unobserved score exactly 0.
        """
        check_is_fitted(self)
        hint = "; use score() for incomplete data"
        X, present, mask, n_samples = check_score_inputs(
            self._validate, X, observed_mask, n_samples, self.n_samples, hint
        )
        return self._log_conditional(X, present, mask, n_samples)

    def score(self, X, y=None) -> float:
        """Mean ``log p(x_u | x_o)`` per row under seeded Bernoulli(0.5) masks.

        Each present entry is hidden with probability 0.5. The hidden entries are a fixed
        function of each row's values, so every estimator hides the same entries (scores are
        comparable) and a row's contribution does not depend on its position. Entries
        missing in ``X`` are neither observed nor scored. Higher is better, as
        ``GridSearchCV`` expects.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)
        y : ignored

        Returns
        -------
        float
        """
        check_is_fitted(self)
        X, present = self._validate(X, reset=False)
        hidden = row_hash_uniforms(np.where(present, X, np.nan)) < 0.5
        return float(self._log_conditional(X, present, present & ~hidden, self.n_samples).mean())

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        """Move the model and Adam's moments to the CPU, so pickles load anywhere.

        The optimiser itself is rebuilt by the next ``partial_fit``, which takes the moments
        and the schedules' position back, so training continues as it would have without
        the round trip (with the parameters as they are then).
        """
        state = self.__dict__.copy()
        trainer = state.pop("_trainer", None)
        if trainer is not None:
            moments = cpu_copy(trainer.optimizer.state_dict()["state"])
            state["_resume"] = {"moments": moments, "epochs_run": trainer.epochs_run}
        if "model_" in state:
            state["model_"] = copy.deepcopy(self.model_).to("cpu")
        return state

    def __setstate__(self, state: dict) -> None:
        """Restore a pickle; one from an older afa gets the defaults of newer parameters."""
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
            if name != "self"
        }
        self.__dict__.update({**defaults, **state})
        if self.likelihood == "bernoulli" and "_structure_" in state:  # no scale to model
            self._structure_["decoder_scale"] = self.hyperparameters_["decoder_scale"] = None
