"""Active feature acquisition: which unobserved feature to measure next, row by row."""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from afa._torch import resolve_device, seeded, standard_normal
from afa._training import Trainer, TrainingSettings
from afa.impute._posterior_matching import (
    PosteriorMatchingImputer,
    check_hidden_layer_sizes,
    check_positive_int_or_auto,
    describe_rows,
    is_fraction_range,
    is_positive_int,
    is_real,
    is_scalar_nan,
)
from afa.masks import as_observed_mask, row_hash_uniforms
from afa.models.lookahead import (
    CRITERIA,
    ENTROPY_HEADS,
    AcquisitionProblem,
    LookaheadNetwork,
    LookaheadObjective,
    information_gains,
    one_step_entropies,
    predictive_covariance,
    variance_shares,
)

__all__ = ["STRATEGIES", "AcquisitionPath", "LookaheadAcquirer"]

STRATEGIES = ("lookahead", "sampling", "random")
_LOOKAHEAD_ROWS_PER_CHUNK = 4_096
_SAMPLING_ELEMENTS_PER_CHUNK = 2**23  # completions x scenarios x actions x rows x features
_TRAINING_STEPS = 3_000  # batches of targets "auto" aims the lookahead training at
# each batch's targets (draws through the frozen imputer) cost ~50 network steps, so the
# network takes several steps on each: on MNIST 16x16, 4 matched three times the epochs
_UPDATES_PER_BATCH = 4


@dataclass(frozen=True)
class AcquisitionPath:
    """Simulated acquisition episodes, one per row, step by step.

    Attributes
    ----------
    order : ndarray of int, shape (n, T)
        The action acquired at each step (an index into ``actions_``; the column itself when
        there are no groups); -1 once a row has stopped.
    masks : ndarray of bool, shape (T + 1, n, d)
        The observed entries after ``t`` steps.
    imputations : ndarray of shape (T + 1, n, d)
        The imputer's estimate of each row after ``t`` steps.
    errors : ndarray of shape (T + 1, n)
        Root mean squared error over all ``d`` features after ``t`` steps, observed entries
        counting as zero error (the protocol of Posterior Matching's Fig. 7).
    spent : ndarray of shape (T + 1, n)
        Cumulative cost after ``t`` steps.
    gains : ndarray of shape (n, T)
        Expected gain of each chosen action (NaN for ``"random"`` and after stopping).
    decision_seconds : ndarray of shape (T,)
        Wall time of each step's decision for the whole batch (imputation excluded).
    target_errors : ndarray of shape (T + 1, n) or None
        Absolute error of the imputed target column, when the acquirer has a target.
    """

    order: np.ndarray
    masks: np.ndarray
    imputations: np.ndarray
    errors: np.ndarray
    spent: np.ndarray
    gains: np.ndarray
    decision_seconds: np.ndarray
    target_errors: np.ndarray | None = None

    @property
    def n_steps(self) -> int:
        """Number of steps simulated (``T``)."""
        return self.order.shape[1]

    def mean_errors(self) -> np.ndarray:
        """The acquisition curve: mean error over rows after ``0 … T`` steps."""
        return self.errors.mean(axis=1)


def _as_group_list(groups, names: np.ndarray | None, n_features: int) -> list[tuple[int, ...]]:
    """Resolve ``groups`` (column indices or names) into the list of actions."""
    grouped: list[tuple[int, ...]] = []
    for group in groups:
        if isinstance(group, (str, numbers.Integral)):
            raise ValueError(
                f"groups must be a sequence of sequences of columns; got the bare column {group!r}."
            )
        columns = tuple(_column_index(c, names, n_features, "groups") for c in group)
        if not columns:
            raise ValueError("groups must not contain an empty group.")
        grouped.append(columns)
    flat = [c for group in grouped for c in group]
    if len(flat) != len(set(flat)):
        raise ValueError("groups must be disjoint: a column appears in two groups (or twice).")
    singles = [(c,) for c in range(n_features) if c not in set(flat)]
    return sorted(grouped + singles, key=min)


def _column_index(column, names: np.ndarray | None, n_features: int, what: str) -> int:
    if isinstance(column, numbers.Integral) and not isinstance(column, bool):
        if not 0 <= column < n_features:
            raise ValueError(
                f"{what}: column index {column} is out of range for {n_features} features."
            )
        return int(column)
    if isinstance(column, str) and names is not None and column in set(names):
        return int(np.flatnonzero(names == column)[0])
    raise ValueError(
        f"{what}: unknown column {column!r}; give an integer index"
        + (" or one of the fitted column names." if names is not None else ".")
    )


def _path(
    X: np.ndarray,
    masks: list[np.ndarray],
    imputations: list[np.ndarray],
    spent: list[np.ndarray],
    order: list[np.ndarray],
    gains: list[np.ndarray],
    seconds: list[float],
    target: int | None,
) -> AcquisitionPath:
    imputed = np.stack(imputations)
    n_rows = X.shape[0]
    return AcquisitionPath(
        order=np.stack(order, axis=1) if order else np.empty((n_rows, 0), dtype=np.int64),
        masks=np.stack(masks),
        imputations=imputed,
        errors=np.sqrt(((imputed - X) ** 2).mean(axis=2)),
        spent=np.stack(spent),
        gains=np.stack(gains, axis=1) if gains else np.empty((n_rows, 0)),
        decision_seconds=np.asarray(seconds[: len(order)], dtype=np.float64),
        target_errors=None if target is None else np.abs(imputed[..., target] - X[:, target]),
    )


class LookaheadAcquirer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Greedy active feature acquisition with a Posterior-Matching VAE.

    For each row, :meth:`acquire_next` picks the unobserved feature (or group of features)
    with the best expected gain per unit cost. Two criteria define the gain:

    - ``"entropy"``: how much the measurement is expected to shrink the posterior over the
      latent ``z``, in nats (Posterior Matching §3.5; EDDI);
    - ``"variance"``: the share of the imputation's expected squared error (summed over
      the unobserved features, in the imputer's standardised units) that the measurement
      is expected to remove, from the model's predictive covariance. It aims at what an
      imputation is judged by, and on MNIST 16x16 it beats the entropy criterion (see the
      README's benchmark).

    Three strategies compute it:

    - ``"lookahead"``: a network trained after the imputer predicts the gain of every
      candidate, so a decision is one forward pass for the whole batch (Strauss & Oliva,
      2022, §3.5);
    - ``"sampling"``: the explicit estimate from ``n_samples`` draws of the partial
      posterior; for ``"entropy"`` ``H[q(z|x_o)] - mean_k H[q(z|x_o, x̂_k)]`` costs an
      encoder pass per draw and candidate (EDDI-style, slow), for ``"variance"`` the
      predictive covariance costs one decoder pass per draw;
    - ``"random"``: a random available candidate (a baseline). The draw depends only on
      the row's values and ``random_state``, never on the rest of the batch, so identical
      rows (e.g. new rows with nothing observed) get the same pick.

    With ``target`` the gain is about that column only: EDDI's reward (information about
    ``z`` that stays relevant to the target) for ``"entropy"``, the share of the target's
    predictive variance removed for ``"variance"``.

    Parameters
    ----------
    imputer : PosteriorMatchingImputer or None, default=None
        An unfitted imputer is cloned and fitted on ``X``; a fitted one (or one wrapped in
        ``sklearn.frozen.FrozenEstimator``, which survives ``clone``) is used frozen. None
        means ``PosteriorMatchingImputer(random_state=random_state)``. Entropies are
        analytic for ``posterior="gaussian"`` and one-sample Monte Carlo otherwise.
    strategy : {"lookahead", "sampling", "random"}, default="lookahead"
        The default strategy. The lookahead network is trained only when this is
        ``"lookahead"``; the other strategies need no training.
    criterion : {"variance", "entropy"}, default="variance"
        What a gain measures (see above). ``"variance"`` is the default because it picked
        better pixels on MNIST 16x16 (README, "Greedy acquisition"). The lookahead network
        is trained for this criterion; changing it afterwards needs a refit for
        ``"lookahead"`` (the other strategies follow it at once).
    head : {"entropy", "mixture"}, default="entropy"
        Which lookahead head decides for ``criterion="entropy"``. ``"entropy"`` regresses
        each candidate's expected posterior entropy; ``"mixture"`` is the reference code's
        diagonal Gaussian fitted to the mixture of one-step-ahead posteriors. Both are
        trained, so this can be changed with ``set_params`` after fitting.
    groups : sequence of sequences of columns, default=None
        Columns acquired together (one test yielding several values), as indices or fitted
        column names. Ungrouped columns are single actions. Actions are ordered by their
        smallest column (``actions_``), so without groups action ``j`` is column ``j``.
    target : int or str, default=None
        A column to predict. It is never acquired (its action is never available), and
        gains measure information about it.
    costs : array-like of shape (n_actions,), dict or Series, default=None
        Cost of each action; decisions maximise gain per unit cost (a negative gain
        estimate is multiplied by the cost instead), and ties go to the cheaper action. An
        array follows ``actions_`` (the target's own entry is never used); a dict or pandas
        Series is keyed by column, index or fitted name, a group by any one of its columns,
        and may leave out the target. None means unit costs. ``acquire_next`` and
        ``acquire`` accept their own ``costs``.
    min_gain : float, default=None
        Stopping rule: a row stops (``-1``) when its best expected gain (nats for
        ``"entropy"``, a share in [0, 1] for ``"variance"``) falls below this. Not applied
        to ``"random"``.
    n_samples : int, default=50
        Draws of the partial posterior for the ``"sampling"`` strategy (per candidate for
        ``"entropy"``), and per row and step when training a ``"variance"`` lookahead head.
    lookahead_samples : int, default=8
        Completions per row and step when training the ``"entropy"`` lookahead heads.
    actions_per_step : int, default=16
        Candidates fitted per training step (a random subset, as in the reference code).
    observed_fraction : tuple of float, default=(0.0, 1.0)
        Range of the share of features observed in training states (drawn uniformly). Use a
        low range, e.g. ``(0, 0.2)``, when episodes stop after few acquisitions of many.
        For ``criterion="variance"``, half of each training batch's states are instead
        points on the network's own greedy paths (by gain per unit of ``costs`` as set at
        fit time), as many actions along as this range allows: the states acquisition will
        put it in.
    hidden_layer_sizes : tuple of int or "auto", default="auto"
        Lookahead network trunk; ``"auto"`` copies the imputer's.
    max_iter : int or "auto", default="auto"
        Training epochs of the lookahead network; ``"auto"`` aims at about 3,000 steps.
    batch_size : int, default=64
    learning_rate_init : float, default=1e-3
    early_stopping : bool, default=True
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-3
    random_state : int, RandomState or None, default=None
    verbose : bool, default=False

    Attributes
    ----------
    imputer_ : PosteriorMatchingImputer
        The fitted imputer (frozen after fit).
    actions_ : list of tuple of int
        The columns each action reveals.
    target_index_ : int or None
    lookahead_ : LookaheadNetwork or None
        Present when fitted with ``strategy="lookahead"``.
    lookahead_criterion_ : str or None
        The criterion the lookahead network was trained for.
    history_ : dict of list
        Per-epoch lookahead training losses.
    n_iter_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of str

    Examples
    --------
    >>> import numpy as np
    >>> from afa import LookaheadAcquirer, PosteriorMatchingImputer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4)) @ rng.normal(size=(4, 4))
    >>> acq = LookaheadAcquirer(
    ...     imputer=PosteriorMatchingImputer(max_iter=5, random_state=0), max_iter=2,
    ...     random_state=0).fit(X)
    >>> acq.acquire_next(np.full((2, 4), np.nan)).shape
    (2,)
    """

    def __init__(
        self,
        imputer: PosteriorMatchingImputer | None = None,
        *,
        strategy: str = "lookahead",
        criterion: str = "variance",
        head: str = "entropy",
        groups: Sequence[Sequence[int | str]] | None = None,
        target: int | str | None = None,
        costs: Sequence[float] | None = None,
        min_gain: float | None = None,
        n_samples: int = 50,
        lookahead_samples: int = 8,
        actions_per_step: int = 16,
        observed_fraction: tuple[float, float] = (0.0, 1.0),
        hidden_layer_sizes: tuple[int, ...] | str = "auto",
        max_iter: int | str = "auto",
        batch_size: int = 64,
        learning_rate_init: float = 1e-3,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        tol: float = 1e-3,
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
    ) -> None:
        self.imputer = imputer
        self.strategy = strategy
        self.criterion = criterion
        self.head = head
        self.groups = groups
        self.target = target
        self.costs = costs
        self.min_gain = min_gain
        self.n_samples = n_samples
        self.lookahead_samples = lookahead_samples
        self.actions_per_step = actions_per_step
        self.observed_fraction = observed_fraction
        self.hidden_layer_sizes = hidden_layer_sizes
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {self.strategy!r}.")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {list(CRITERIA)}; got {self.criterion!r}.")
        if self.head not in ENTROPY_HEADS:
            raise ValueError(f"head must be one of {list(ENTROPY_HEADS)}; got {self.head!r}.")
        for name in (
            "n_samples",
            "lookahead_samples",
            "actions_per_step",
            "batch_size",
            "n_iter_no_change",
        ):
            value = getattr(self, name)
            if not is_positive_int(value):
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        check_positive_int_or_auto("max_iter", self.max_iter)
        if not is_fraction_range(self.observed_fraction):
            raise ValueError(
                f"observed_fraction must be (low, high) with 0 <= low <= high <= 1; got "
                f"{self.observed_fraction!r}."
            )
        check_hidden_layer_sizes(self.hidden_layer_sizes)
        if self.min_gain is not None and not (
            is_real(self.min_gain) and math.isfinite(self.min_gain)
        ):
            raise ValueError(f"min_gain must be None or a finite number; got {self.min_gain!r}.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must lie in (0, 1); got {self.validation_fraction!r}."
            )
        if self.imputer is not None and not isinstance(
            self.imputer, (PosteriorMatchingImputer, FrozenEstimator)
        ):
            raise ValueError(
                f"imputer must be a PosteriorMatchingImputer (or one in a FrozenEstimator); got "
                f"{type(self.imputer).__name__}."
            )

    def _resolve_imputer(self, X_in) -> PosteriorMatchingImputer:
        imputer = self.imputer
        if isinstance(imputer, FrozenEstimator):
            imputer = imputer.estimator
            check_is_fitted(imputer)
            return imputer
        if imputer is None:
            return PosteriorMatchingImputer(random_state=self._imputer_seed_).fit(X_in)
        try:
            check_is_fitted(imputer)
        except NotFittedError:
            return clone(imputer).fit(X_in)
        return imputer

    def _check_imputer_columns(self) -> None:
        """The imputer must read the same columns, in the same order, as ``X``."""
        if self.imputer_.n_features_in_ != self.n_features_in_:
            raise ValueError(
                f"The imputer was fitted on {self.imputer_.n_features_in_} features but X has "
                f"{self.n_features_in_}."
            )
        ours = getattr(self, "feature_names_in_", None)
        theirs = getattr(self.imputer_, "feature_names_in_", None)
        if ours is not None and theirs is not None and not np.array_equal(ours, theirs):
            raise ValueError(
                "X's columns differ from those the imputer was fitted on (names or order): "
                f"{list(ours)} against {list(theirs)}. Reorder X as the imputer's columns."
            )
        if not is_scalar_nan(self.imputer_.missing_values):
            raise ValueError(
                "LookaheadAcquirer marks entries not yet acquired with NaN; an imputer with "
                f"missing_values={self.imputer_.missing_values!r} is not supported. Use "
                "missing_values=np.nan."
            )

    def _resolve_costs(self, costs) -> np.ndarray:
        costs = self.costs if costs is None else costs
        if costs is None:
            return np.ones(len(self.actions_))
        if isinstance(costs, (Mapping, pd.Series)):
            costs = self._costs_by_column(costs)
        try:
            costs = np.asarray(costs, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"costs must be numbers; {error}.") from None
        if costs.shape != (len(self.actions_),):
            raise ValueError(
                f"costs must have one entry per action ({len(self.actions_)}: the columns, with "
                f"each group counted once, in the order of actions_), or be a dict or Series "
                f"keyed by column; got shape {costs.shape}."
            )
        if not np.all(np.isfinite(costs)) or np.any(costs <= 0):
            raise ValueError("costs must be finite and positive.")
        return costs

    def _costs_by_column(self, costs: Mapping | pd.Series) -> np.ndarray:
        """Costs in ``actions_`` order from a mapping keyed by column (a group by any one
        of its columns); the target's own action, never acquired, may be left out."""
        names = getattr(self, "feature_names_in_", None)
        action_of = {column: a for a, columns in enumerate(self.actions_) for column in columns}
        resolved: dict[int, object] = {}
        for key, value in costs.items():
            action = action_of[_column_index(key, names, self.n_features_in_, "costs")]
            if action in resolved:
                raise ValueError(
                    f"costs gives the action {self._describe(action)} two costs; key a group "
                    "by one of its columns only."
                )
            resolved[action] = value
        if self.target_index_ is not None:
            resolved.setdefault(action_of[self.target_index_], 1.0)  # never used
        missing = [self._describe(a) for a in range(len(self.actions_)) if a not in resolved]
        if missing:
            raise ValueError(f"costs has no entry for the actions {', '.join(missing)}.")
        return np.array([resolved[a] for a in range(len(self.actions_))], dtype=object)

    def _describe(self, action: int) -> str:
        """An action's columns, by name when the estimator knows them."""
        names = getattr(self, "feature_names_in_", None)
        columns = [str(names[c]) if names is not None else str(c) for c in self.actions_[action]]
        return "(" + ", ".join(columns) + ")"

    def _action_matrix(self) -> np.ndarray:
        """(A, d) bool: the columns each action reveals."""
        actions = np.zeros((len(self.actions_), self.n_features_in_), dtype=bool)
        sizes = [len(columns) for columns in self.actions_]
        columns = list(itertools.chain.from_iterable(self.actions_))
        actions[np.repeat(np.arange(len(sizes)), sizes), columns] = True
        return actions

    def _available(self, observed: np.ndarray) -> np.ndarray:
        """(n, A) bool: True where the action would reveal an unobserved column."""
        problem = self._problem()
        state = torch.as_tensor(observed, device=problem.actions.device)
        return problem.available(state).cpu().numpy()

    def _problem(self) -> AcquisitionProblem:
        device = resolve_device(self.imputer_.device)
        actions = torch.as_tensor(self._action_matrix())
        target = None
        if self.target_index_ is not None:
            target = torch.zeros(self.n_features_in_, dtype=torch.bool)
            target[self.target_index_] = True
            target = target.to(device)
        return AcquisitionProblem(actions.to(device), target)

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None) -> LookaheadAcquirer:
        """Fit the imputer if needed, then (for ``"lookahead"``) the lookahead network.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Training rows; NaN marks missing entries.
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        X_in = X
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        random_state = check_random_state(self.random_state)
        self._imputer_seed_, self._training_seed_, self._inference_seed_ = (
            int(s) for s in random_state.randint(0, 2**31 - 1, size=3)
        )
        self.imputer_ = self._resolve_imputer(X_in)
        self._check_imputer_columns()
        names = getattr(self, "feature_names_in_", None)
        self.target_index_ = (
            None if self.target is None else _column_index(self.target, names, X.shape[1], "target")
        )
        self.actions_ = _as_group_list(
            () if self.groups is None else self.groups, names, X.shape[1]
        )
        if self.target_index_ is not None:
            for group in self.actions_:
                if self.target_index_ in group and len(group) > 1:
                    raise ValueError("The target column must not be part of a group.")
        costs = self._resolve_costs(None)  # checked before any training
        self.lookahead_ = None
        self.lookahead_criterion_ = None
        self.history_: dict[str, list[float]] = {}
        self.n_iter_ = 0
        if self.strategy == "lookahead":
            self._fit_lookahead(X, costs)
        return self

    def _fit_lookahead(self, X: np.ndarray, costs: np.ndarray) -> None:
        imputer = self.imputer_
        observed = ~np.isnan(X)
        x, present = imputer._tensors(X, observed)
        base = imputer._model()
        problem = self._problem()
        sizes = (
            imputer.hyperparameters_["hidden_layer_sizes"]
            if isinstance(self.hidden_layer_sizes, str)
            else tuple(self.hidden_layer_sizes)
        )
        with seeded(self._training_seed_, torch.device("cpu")):
            network = LookaheadNetwork(
                X.shape[1], base.latent_dim, problem.n_actions, problem.n_scenarios, sizes
            )
        objective = LookaheadObjective(
            network.to(x.device),
            base,
            problem,
            self.n_samples if self.criterion == "variance" else self.lookahead_samples,
            self.actions_per_step,
            tuple(self.observed_fraction),
            self.criterion,
            torch.as_tensor(costs, dtype=torch.float32),
        )
        n_validation = (
            max(1, round(self.validation_fraction * X.shape[0])) if self.early_stopping else 0
        )
        order = torch.as_tensor(
            np.random.default_rng(self._training_seed_).permutation(X.shape[0]), device=x.device
        )
        if X.shape[0] <= n_validation:
            raise ValueError(
                f"Training the lookahead network needs at least {n_validation + 1} rows "
                f"(early_stopping holds out {n_validation}); got {X.shape[0]}."
            )
        validation, train = order[:n_validation], order[n_validation:]
        max_iter = self.max_iter
        if max_iter == "auto":
            max_iter = int(
                min(500, max(5, math.ceil(_TRAINING_STEPS * self.batch_size / len(train))))
            )
        settings = TrainingSettings(
            max_iter=max_iter,
            batch_size=self.batch_size,
            learning_rate_init=self.learning_rate_init,
            weight_decay=0.0,
            learning_rate_decay=0.1 ** (1.0 / max_iter),
            early_stopping=self.early_stopping,
            n_iter_no_change=self.n_iter_no_change,
            tol=self.tol,
            kl_schedule="constant",
            verbose=self.verbose,
            updates_per_batch=_UPDATES_PER_BATCH,
        )
        trainer = Trainer(objective, settings, self._training_seed_)
        trainer.fit((x[train], present[train]), (x[validation], present[validation]), max_iter)
        network.eval()
        self.lookahead_ = network
        self.lookahead_criterion_ = self.criterion
        self.history_ = trainer.history
        self.n_iter_ = trainer.epoch

    # ------------------------------------------------------------------ decisions
    def _validate_partial(self, X) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X = validate_data(
            self, X, reset=False, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan"
        )
        observed = ~np.isnan(X)
        if self.target_index_ is not None and observed[:, self.target_index_].any():
            rows = np.flatnonzero(observed[:, self.target_index_])
            raise ValueError(
                f"The target column is observed in rows {describe_rows(rows)}; acquisition "
                "towards a target needs it unknown (NaN)."
            )
        return X, observed

    def _strategy(self, strategy: str | None) -> str:
        strategy = self.strategy if strategy is None else strategy
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {strategy!r}.")
        if strategy == "lookahead" and self.lookahead_ is None:
            raise NotFittedError(
                "The lookahead network was not trained: fit with strategy='lookahead' to use it."
            )
        if strategy == "lookahead" and self.lookahead_criterion_ != self.criterion:
            raise NotFittedError(
                f"The lookahead network was trained for criterion="
                f"{self.lookahead_criterion_!r}, not {self.criterion!r}: refit to use it."
            )
        return strategy

    @torch.inference_mode()
    def _gains(self, X: np.ndarray, observed: np.ndarray, strategy: str) -> np.ndarray:
        """Expected gains (n, A), -inf where an action reveals nothing new."""
        x, state = self.imputer_._tensors(X, observed)
        problem = self._problem()
        if strategy == "lookahead":
            gains = self._lookahead_gains(x, state, problem)
        elif self.criterion == "variance":
            gains = self._sampled_shares(x, state, problem)
        else:
            gains = self._sampled_gains(x, state, problem)
        gains = torch.where(problem.available(state), gains.double(), -math.inf)
        return gains.cpu().numpy()

    def _lookahead_gains(
        self, x: torch.Tensor, state: torch.Tensor, problem: AcquisitionProblem
    ) -> torch.Tensor:
        network = self.lookahead_
        if next(network.parameters()).device != x.device:  # Module.to costs 0.7 ms per call
            network.to(x.device)
        chunks = []
        for rows in torch.arange(x.shape[0], device=x.device).split(_LOOKAHEAD_ROWS_PER_CHUNK):
            if self.criterion == "variance":
                n_columns = problem.error_columns(state[rows]).sum(-1, keepdim=True)
                shares = network.relative_gains(x[rows], state[rows]) / n_columns.clamp_min(1)
                chunks.append(shares.clamp(max=1.0))
            else:
                entropies = network.expected_entropies(x[rows], state[rows], self.head)
                chunks.append(information_gains(entropies))
        return torch.cat(chunks)

    def _sampled_shares(
        self, x: torch.Tensor, state: torch.Tensor, problem: AcquisitionProblem
    ) -> torch.Tensor:
        base = self.imputer_._model()
        noise = standard_normal(
            (self.n_samples, 1, base.partial_posterior.noise_dim), self._inference_seed_, x.device
        )
        group_size = int(problem.actions.sum(-1).max())
        n_features = x.shape[1]
        per_row = max(self.n_samples, problem.n_actions * group_size, n_features) * n_features
        rows_per_chunk = max(1, _SAMPLING_ELEMENTS_PER_CHUNK // per_row)
        chunks = []
        for rows in torch.arange(x.shape[0], device=x.device).split(rows_per_chunk):
            covariance = predictive_covariance(base, x[rows], state[rows], noise)
            columns = problem.error_columns(state[rows])
            chunks.append(variance_shares(covariance, problem.actions, columns))
        return torch.cat(chunks)

    def _sampled_gains(
        self, x: torch.Tensor, state: torch.Tensor, problem: AcquisitionProblem
    ) -> torch.Tensor:
        base = self.imputer_._model()
        actions = problem.with_nothing(problem.actions)
        noise_dim = base.partial_posterior.noise_dim
        completion_noise = standard_normal(
            (self.n_samples, 1, noise_dim), self._inference_seed_, x.device
        )
        grid = (self.n_samples, problem.n_scenarios, actions.shape[0])
        entropy_noise = standard_normal(grid + (1, noise_dim), self._inference_seed_ + 1, x.device)
        per_row = math.prod(grid) * x.shape[1]
        rows_per_chunk = max(1, _SAMPLING_ELEMENTS_PER_CHUNK // per_row)
        chunks = []
        for rows in torch.arange(x.shape[0], device=x.device).split(rows_per_chunk):
            entropies, _ = one_step_entropies(
                base, x[rows], state[rows], actions, problem, completion_noise, entropy_noise
            )
            chunks.append(information_gains(entropies.mean(0).permute(2, 0, 1)))
        return torch.cat(chunks)

    def _random_scores(self, rows: np.ndarray) -> np.ndarray:
        """Uniform scores (n, A) that depend only on each row's values and the seed."""
        uniforms = row_hash_uniforms(rows)
        permuted = uniforms[
            :, np.random.default_rng(self._inference_seed_).permutation(rows.shape[1])
        ]
        return permuted[:, [columns[0] for columns in self.actions_]]

    def _decide(
        self,
        X: np.ndarray,
        observed: np.ndarray,
        strategy: str,
        costs: np.ndarray,
        budget: np.ndarray,
        random_rows: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One action per row (-1 for none) and its expected gain (NaN for "random")."""
        if strategy == "random":
            available = self._available(observed)
            gains = np.where(available, np.nan, -np.inf)
            scores = self._random_scores(random_rows)
            allowed = available
        else:
            gains = self._gains(X, observed, strategy)
            # a negative estimate (possible for "entropy") is multiplied by the cost, not
            # divided, so that a higher cost never makes an action look better
            with np.errstate(invalid="ignore"):
                scores = np.where(gains > 0, gains / costs[None, :], gains * costs[None, :])
            allowed = np.isfinite(gains)
            if self.min_gain is not None:
                allowed &= gains >= self.min_gain
        allowed &= costs[None, :] <= budget[:, None] + 1e-12
        scores = np.where(allowed, scores, -np.inf)
        # among equally good actions, the cheapest
        best = allowed & (scores == scores.max(axis=1, keepdims=True))
        choice = np.where(best, costs[None, :], np.inf).argmin(axis=1)
        choice = np.where(allowed.any(axis=1), choice, -1)
        chosen_gain = np.where(choice >= 0, gains[np.arange(len(choice)), choice], np.nan)
        return choice, chosen_gain

    def _budget(self, budget, n_rows: int) -> np.ndarray:
        if budget is None:
            return np.full(n_rows, np.inf)
        budget = np.asarray(budget, dtype=np.float64)
        if budget.shape not in {(), (n_rows,)}:
            raise ValueError(
                f"budget must be a scalar or one value per row ({n_rows}); got shape "
                f"{budget.shape}."
            )
        budget = np.broadcast_to(budget, (n_rows,)).copy()
        if np.isnan(budget).any() or (budget < 0).any():
            raise ValueError("budget must be non-negative (a scalar or one value per row).")
        return budget

    def information_gain(self, X_partial, strategy: str | None = None) -> np.ndarray:
        """Expected gain of each action, per row: nats, or a share of the error removed.

        The unit follows ``criterion``: the expected reduction in the posterior entropy of
        ``z`` in nats for ``"entropy"``, the expected share of the imputation's squared error
        removed (in [0, 1]) for ``"variance"``.

        Parameters
        ----------
        X_partial : array-like of shape (n, d)
            NaN = not yet acquired.
        strategy : {"lookahead", "sampling"}, optional
            Defaults to the estimator's strategy.

        Returns
        -------
        ndarray of shape (n, n_actions)
            ``-inf`` where the action would reveal nothing new (already observed) or would
            reveal the target. Without groups, action ``j`` is column ``j``.
        """
        X, observed = self._validate_partial(X_partial)
        strategy = self._strategy(strategy)
        if strategy == "random":
            raise ValueError("strategy='random' has no information gain; use acquire_next.")
        return self._gains(X, observed, strategy)

    def acquire_next(
        self, X_partial, strategy: str | None = None, costs=None, budget=None
    ) -> np.ndarray:
        """The next action for each row: the best expected gain per unit cost.

        Parameters
        ----------
        X_partial : array-like of shape (n, d)
            NaN = not yet acquired.
        strategy : {"lookahead", "sampling", "random"}, optional
            Overrides the estimator's strategy for this call.
        costs : array-like of shape (n_actions,), dict or Series, optional
            Overrides the estimator's ``costs`` (same forms).
        budget : float or array-like of shape (n,), optional
            Remaining budget per row; actions costing more are not chosen.

        Returns
        -------
        ndarray of int, shape (n,)
            Index into ``actions_`` (the column when there are no groups); -1 where nothing
            is left to acquire, nothing is affordable, or (with ``min_gain``) nothing is
            worth it.
        """
        X, observed = self._validate_partial(X_partial)
        strategy = self._strategy(strategy)
        costs = self._resolve_costs(costs)
        budget = self._budget(budget, X.shape[0])
        return self._decide(X, observed, strategy, costs, budget, random_rows=X)[0]

    def acquire(
        self,
        X_full,
        n_steps: int | None = None,
        budget=None,
        costs=None,
        initial_mask=None,
        strategy: str | None = None,
    ) -> AcquisitionPath:
        """Simulate acquisition episodes on complete rows.

        Every row starts from ``initial_mask`` (default: nothing observed) and acquires one
        action per step, revealing its true values, until ``n_steps`` steps, the budget, the
        stopping rule or the features run out.

        Parameters
        ----------
        X_full : array-like of shape (n, d)
            Complete rows (NaN is an error).
        n_steps : int, optional
            Maximum steps; default as many as there are actions.
        budget : float or array-like of shape (n,), optional
            Total budget per row.
        costs : array-like of shape (n_actions,), dict or Series, optional
            Overrides the estimator's ``costs`` (same forms).
        initial_mask : bool array-like of shape (n, d), optional
            Entries observed at the start (True = observed).
        strategy : {"lookahead", "sampling", "random"}, optional

        Returns
        -------
        AcquisitionPath
        """
        check_is_fitted(self)
        X = validate_data(
            self, X_full, reset=False, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan"
        )
        if np.isnan(X).any():
            raise ValueError(
                "X_full must be complete: acquire reveals true values, and rows "
                f"{describe_rows(np.flatnonzero(np.isnan(X).any(axis=1)))} have NaN. Use "
                "acquire_next for partially observed rows."
            )
        strategy = self._strategy(strategy)
        costs = self._resolve_costs(costs)
        n_steps = len(self.actions_) if n_steps is None else n_steps
        if not isinstance(n_steps, numbers.Integral) or n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative integer; got {n_steps!r}.")
        mask = self._initial_mask(initial_mask, X.shape)
        budget = self._budget(budget, X.shape[0])
        reveals = self._action_matrix()
        masks, imputations, spent = [mask], [], [np.zeros(X.shape[0])]
        order, chosen_gains, seconds = [], [], []
        for _ in range(n_steps):
            imputations.append(self._impute(np.where(mask, X, np.nan)))
            start = time.perf_counter()
            choice, gain = self._decide(X, mask, strategy, costs, budget - spent[-1], X)
            seconds.append(time.perf_counter() - start)
            if (choice < 0).all():
                break
            acquired = choice >= 0
            mask = mask | (reveals[choice] & acquired[:, None])
            masks.append(mask)
            spent.append(spent[-1] + np.where(acquired, costs[choice], 0.0))
            order.append(choice)
            chosen_gains.append(gain)
        else:
            imputations.append(self._impute(np.where(mask, X, np.nan)))
        return _path(X, masks, imputations, spent, order, chosen_gains, seconds, self.target_index_)

    def _impute(self, values: np.ndarray) -> np.ndarray:
        """The imputer's ``transform`` of an array, named as the imputer was fitted."""
        names = getattr(self.imputer_, "feature_names_in_", None)
        if names is None:
            return self.imputer_.transform(values)
        return self.imputer_.transform(pd.DataFrame(values, columns=names)).to_numpy()

    def _initial_mask(self, initial_mask, shape: tuple[int, int]) -> np.ndarray:
        if initial_mask is None:
            return np.zeros(shape, dtype=bool)
        mask = as_observed_mask(initial_mask, shape, name="initial_mask")
        if self.target_index_ is not None and mask[:, self.target_index_].any():
            raise ValueError(
                "initial_mask observes the target column; the target must start unknown."
            )
        return mask

    # ------------------------------------------------------------------ imputation
    def transform(self, X):
        """Impute through the fitted imputer (``imputer_.transform``).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)

        Returns
        -------
        ndarray or DataFrame of the input's shape and dtype
        """
        check_is_fitted(self)
        validate_data(
            self, X, reset=False, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan"
        )
        return self.imputer_.transform(X)

    def __getstate__(self) -> dict:
        """Move the lookahead network to the CPU, so pickles load anywhere."""
        state = self.__dict__.copy()
        if state.get("lookahead_") is not None:
            state["lookahead_"] = copy.deepcopy(self.lookahead_).to("cpu")
        return state
