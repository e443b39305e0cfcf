"""ConditionalPriorImputer: per-query conditional prior networks in a frozen VAE."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from afa._torch import call_seed, to_tensor
from afa.conditional import (
    FAMILIES,
    MAX_FCN_LATENT,
    AffineFamily,
    Evidence,
    MLPFamily,
    conditional_elbo,
    fit_conditional_prior,
    hmc_sample,
    pseudo_gibbs_sample,
    quasi_random_noise,
    rejection_sample,
    whitened_noise,
)
from afa.impute._posterior_matching import (
    NOISE_ELEMENTS_PER_CHUNK,
    ImputerTagsMixin,
    PosteriorMatchingImputer,
    check_n_samples,
    check_positive_int_or_auto,
    check_score_inputs,
    is_positive_int,
    is_real,
)
from afa.masks import row_keyed_normals

__all__ = ["ConditionalPriorImputer", "QueryPosteriors"]

_VARIATIONAL = ("gvi", "planar", "fcn")
_SAMPLERS = ("hmc", "rejection", "pseudo_gibbs")


@dataclass(frozen=True)
class QueryPosteriors:
    """Every row's answer to ``p(z | x_o)``, from :meth:`ConditionalPriorImputer.condition`.

    Fitting the conditional priors once and drawing from them many times avoids refitting
    in every call of the estimator.

    Attributes
    ----------
    converged : ndarray of bool, shape (n,)
        Whether each row's fit met the tolerance (or stopped on held-out draws) before
        ``max_iter``. Always True for the samplers, which have nothing to fit.
    n_iter : ndarray of int, shape (n,)
        Optimiser iterations per row, over both fitting stages (0 for the samplers).
    finite : ndarray of bool, shape (n,)
        Whether each row's fitted parameters and C-ELBO on the fitting batch are finite.
    """

    imputer: ConditionalPriorImputer
    evidence: Evidence
    family: AffineFamily | None
    params: torch.Tensor | None
    converged: np.ndarray
    n_iter: np.ndarray
    finite: np.ndarray

    def __len__(self) -> int:
        return len(self.evidence)

    def latents(
        self, n_samples: int, random_state: int | np.random.RandomState | None = None
    ) -> np.ndarray:
        """``n_samples`` draws of ``z`` per row: shape ``(n_samples, n, latent_dim)``.

        Parameters
        ----------
        n_samples : int
        random_state : int, RandomState or None, default=None
            Seed of the draws; ``None`` uses the imputer's seed (repeatable draws).
        """
        seed = call_seed(random_state)
        return self.imputer._draw_latents(self, n_samples, seed, per_row=True).cpu().numpy()


def _keyed_rows(evidence: Evidence) -> np.ndarray:
    """The rows as the noise of :func:`~afa.masks.row_keyed_normals` is keyed: evidence
    values, NaN elsewhere."""
    return np.where(evidence.mask.cpu().numpy(), evidence.x.double().cpu().numpy(), np.nan)


class ConditionalPriorImputer(
    ImputerTagsMixin, OneToOneFeatureMixin, TransformerMixin, BaseEstimator
):
    """Answer each query ``p(x_u | x_o)`` by per-query inference in a frozen VAE.

    For every row, the latent posterior ``p(z | x_o)`` of a trained VAE is approximated by a
    conditional prior network ``z = f(ε)`` fitted to maximise the conditional ELBO against the
    frozen decoder (Wu, Domke & Sanner, 2018), or sampled by a reference sampler. Latents are
    then decoded to impute, sample and score the unobserved entries. All rows of a call are
    fitted as one batched problem with independent losses and per-row convergence, so with
    ``"gvi"``, ``"planar"`` and ``"fcn"`` a row's answer does not depend on the other rows (up
    to the optimiser's tolerance). The reference samplers draw one random stream per call:
    a row's Monte Carlo answer then varies with its batch, within its Monte Carlo error.

    Parameters
    ----------
    base : PosteriorMatchingImputer, ConditionalPriorImputer, FrozenEstimator or None, \
default=None
        The VAE to condition. ``None`` fits one in ``fit`` with the plain ELBO (the VAE
        parameters below). A fitted afa imputer is used frozen, with no retraining; an
        unfitted one is cloned and fitted on ``fit``'s data. ``clone`` (as in a Pipeline,
        cross-validation or a search) makes an unfitted copy of ``base``: wrap a fitted
        base in ``sklearn.frozen.FrozenEstimator`` to keep it frozen there too.
    inference : {"planar", "gvi", "fcn", "hmc", "rejection", "pseudo_gibbs"}, default="planar"
        ``"gvi"``: a full-covariance Gaussian (an affine map with a Cholesky factor), started
        per row at the best of 1,024 prior draws for its evidence, scale 0.5.
        ``"planar"``: that affine map followed by ``n_layers`` planar layers. ``"fcn"``: the
        affine map plus a 64-unit tanh MLP with an exact Jacobian (latents of at most 16
        dimensions). Reference samplers of the same target: ``"hmc"`` (step size adapted in
        burn-in), ``"rejection"`` (exact, latents of at most 2 dimensions) and
        ``"pseudo_gibbs"`` (alternating the VAE's encoder and decoder, approximate).
    n_layers : int, default=16
        Planar layers of ``"planar"``.
    n_noise : int, default=256
        Size of the fixed noise batch the C-ELBO is fitted on, whitened to zero mean and
        identity covariance.
    optimizer : {"lbfgs", "adam"}, default="lbfgs"
        L-BFGS with a strong-Wolfe line search, or Adam with ``learning_rate``.
    max_iter : int, default=500
        Iterations per query and fitting stage (families richer than ``"gvi"`` first fit
        their affine part, then everything).
    tol : float, default=1e-5
        A query stops when an iteration improves its loss by less than ``tol`` relative to
        ``max(1, |loss|)``.
    learning_rate : float, default=1e-2
        Adam's step size (``optimizer="adam"`` only).
    n_burnin : int, default=500
        Burn-in iterations of ``"hmc"`` and ``"pseudo_gibbs"`` (HMC: 10 leapfrog steps each).
    n_chains : int, default=32
        Parallel chains per row for ``"hmc"`` and ``"pseudo_gibbs"``.
    n_samples : int, default=128
        Latent draws for ``transform``, ``conditional_elbo`` and ``score_conditional``. For
        ``"gvi"``, ``"planar"`` and ``"fcn"`` they come from one scrambled-Sobol noise batch
        shared by the rows (randomised quasi-Monte Carlo): unbiased like independent draws,
        but far more accurate averages (on MNIST, 100 draws impute 6x closer to the
        many-draw answer, and 500 score with a tenth of the spread). Prefer a power of 2,
        where the batch is balanced: 128 draws imputed 2.5x closer than 100, and 100 no
        closer than 64. ``sample`` draws independently.
    latent_dim, hidden_layer_sizes, likelihood, decoder_scale, dropout, batch_size, \
learning_rate_init, early_stopping : see :class:`PosteriorMatchingImputer`
        The VAE fitted when ``base`` is None.
    max_epochs : int or "auto", default="auto"
        Training epochs of that VAE (``PosteriorMatchingImputer``'s ``max_iter``).
    missing_values : float, default=np.nan
    device : {"auto", "cpu", "cuda"}, default="auto"
        Device of the VAE fitted when ``base`` is None; a given base keeps its own.
    random_state : int, RandomState or None, default=None
        Seeds the VAE, the noise batch and the samplers.
    verbose : bool, default=False

    Attributes
    ----------
    base_ : PosteriorMatchingImputer
        The fitted VAE (fitted with ``pm_weight=0`` when ``base`` is None; its own partial
        posterior is then untrained and unused).
    n_iter_ : int
        Epochs the VAE trained for (that of the given base when there is one); the
        per-query iterations run at inference time.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.

    Notes
    -----
    ``fit`` trains (or adopts) the VAE only; the per-query inference runs in every call of
    ``transform``, ``sample``, ``conditional_elbo`` and ``score_conditional``, with noise and
    seeds fixed at fit time so that repeated calls agree.

    Examples
    --------
    >>> import numpy as np
    >>> from afa import ConditionalPriorImputer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)) @ [[1, 0.5, 0], [0, 1, 0.5], [0, 0, 1]]
    >>> imp = ConditionalPriorImputer(inference="gvi", max_epochs=5, random_state=0).fit(X)
    >>> X_nan = X[:4].copy(); X_nan[0, 1] = np.nan
    >>> imp.transform(X_nan).shape
    (4, 3)
    """

    def __init__(
        self,
        *,
        base: PosteriorMatchingImputer | ConditionalPriorImputer | None = None,
        inference: str = "planar",
        n_layers: int = 16,
        n_noise: int = 256,
        optimizer: str = "lbfgs",
        max_iter: int = 500,
        tol: float = 1e-5,
        learning_rate: float = 1e-2,
        n_burnin: int = 500,
        n_chains: int = 32,
        n_samples: int = 128,
        latent_dim: int | str = "auto",
        hidden_layer_sizes: tuple[int, ...] | str = "auto",
        likelihood: str = "gaussian",
        decoder_scale: str = "auto",
        dropout: float | str = "auto",
        max_epochs: int | str = "auto",
        batch_size: int | str = "auto",
        learning_rate_init: float = 3e-3,
        early_stopping: bool = True,
        missing_values: float = np.nan,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
    ) -> None:
        self.base = base
        self.inference = inference
        self.n_layers = n_layers
        self.n_noise = n_noise
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.tol = tol
        self.learning_rate = learning_rate
        self.n_burnin = n_burnin
        self.n_chains = n_chains
        self.n_samples = n_samples
        self.latent_dim = latent_dim
        self.hidden_layer_sizes = hidden_layer_sizes
        self.likelihood = likelihood
        self.decoder_scale = decoder_scale
        self.dropout = dropout
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.early_stopping = early_stopping
        self.missing_values = missing_values
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        options = {"inference": _VARIATIONAL + _SAMPLERS, "optimizer": ("lbfgs", "adam")}
        for name, allowed in options.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}; got {getattr(self, name)!r}."
                )
        for name in ("n_layers", "n_noise", "max_iter", "n_burnin", "n_chains", "n_samples"):
            if not is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}.")
        for name in ("tol", "learning_rate"):
            if not (is_real(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number; got {getattr(self, name)!r}.")
        for name in ("max_epochs", "batch_size", "latent_dim"):  # passed on to the own VAE
            check_positive_int_or_auto(name, getattr(self, name))
        base = self.base.estimator if isinstance(self.base, FrozenEstimator) else self.base
        if base is not None and not isinstance(
            base, (PosteriorMatchingImputer, ConditionalPriorImputer)
        ):
            raise TypeError(
                "base must be None or a PosteriorMatchingImputer or ConditionalPriorImputer "
                f"(optionally in a FrozenEstimator); got {type(base).__name__}."
            )

    def _own_base(self) -> PosteriorMatchingImputer:
        return PosteriorMatchingImputer(
            latent_dim=self.latent_dim,
            posterior="gaussian",
            likelihood=self.likelihood,
            decoder_scale=self.decoder_scale,
            hidden_layer_sizes=self.hidden_layer_sizes,
            dropout=self.dropout,
            pm_weight=0.0,
            max_iter=self.max_epochs,
            batch_size=self.batch_size,
            learning_rate_init=self.learning_rate_init,
            early_stopping=self.early_stopping,
            missing_values=self.missing_values,
            device=self.device,
            random_state=self.random_state,
            verbose=self.verbose,
        )

    def _fitted_base(self, X) -> PosteriorMatchingImputer:
        base = self.base
        if isinstance(base, FrozenEstimator):
            base = base.estimator
            check_is_fitted(base)
        if base is None:
            return self._own_base().fit(X)
        if isinstance(base, ConditionalPriorImputer):
            if hasattr(base, "base_"):
                return base.base_
            base = base._own_base() if base.base is None else base.base
        if hasattr(base, "model_"):
            return base
        return clone(base).fit(X)

    def fit(self, X, y=None) -> ConditionalPriorImputer:
        """Fit (or adopt) the VAE whose posterior the queries condition.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Training rows, NaN marking missing entries. With a fitted ``base`` it only
            checks that the columns match the base's.
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        self.base_ = self._fitted_base(X)
        self.base_._validate(X, reset=False)
        self.n_features_in_ = self.base_.n_features_in_
        self.n_iter_ = self.base_.n_iter_
        if hasattr(self.base_, "feature_names_in_"):
            self.feature_names_in_ = self.base_.feature_names_in_
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self._seed_ = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        latent_dim = self.base_.model_.latent_dim
        if self.inference == "fcn" and latent_dim > MAX_FCN_LATENT:
            MLPFamily(latent_dim)  # raises the family's own error
        if self.inference == "rejection" and latent_dim > 2:
            raise ValueError(
                f"inference='rejection' needs a latent of at most 2 dimensions; the VAE has "
                f"{latent_dim}. Use 'hmc'."
            )
        if self.inference in _VARIATIONAL and self.n_noise <= latent_dim:
            raise ValueError(
                f"n_noise must exceed the VAE's latent dimension ({latent_dim}) to whiten the "
                f"noise batch; got {self.n_noise}."
            )
        return self

    def _validate(self, X, *, reset: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The base's validated array and observed mask; column errors name this estimator.

        Parameters changed by ``set_params`` since ``fit`` are checked again.
        """
        check_is_fitted(self)
        self._check_params()
        if len(getattr(X, "shape", ())) == 2:  # the full check below handles everything else
            validate_data(self, X, reset=False, skip_check_array=True)
        with warnings.catch_warnings():  # the names were just checked (and warned about)
            warnings.filterwarnings("ignore", message=".*feature names", category=UserWarning)
            return self.base_._validate(X, reset=False)

    # ------------------------------------------------------------------ inference
    def _evidence(self, X) -> tuple[np.ndarray, np.ndarray, Evidence]:
        X, observed = self._validate(X)
        x, mask = self.base_._tensors(X, observed)
        model = self.base_._model()
        return X, observed, Evidence(model.decoder, model.likelihood, x, mask)

    def _generator(self, offset: int, seed: int | None = None) -> torch.Generator:
        return torch.Generator().manual_seed((self._seed_ if seed is None else seed) + offset)

    def _condition(self, evidence: Evidence) -> QueryPosteriors:
        """Fit each row's conditional prior (nothing to fit for the samplers)."""
        n = len(evidence)
        if self.inference not in _VARIATIONAL:
            ones = np.ones(n, dtype=bool)
            return QueryPosteriors(self, evidence, None, None, ones, np.zeros(n, int), ones)
        family = FAMILIES[self.inference](evidence.latent_dim, self.n_layers)
        noise = whitened_noise(self.n_noise, evidence.latent_dim, self._generator(0))
        held_out = whitened_noise(self.n_noise, evidence.latent_dim, self._generator(5))
        result = fit_conditional_prior(
            family,
            evidence,
            noise,
            self._generator(1),
            validation_noise=held_out,
            optimizer=self.optimizer,
            max_iter=self.max_iter,
            tol=self.tol,
            learning_rate=self.learning_rate,
        )
        finite = torch.isfinite(result.loss) & torch.isfinite(result.params).all(-1)
        return QueryPosteriors(
            self,
            evidence,
            family,
            result.params,
            result.converged.cpu().numpy(),
            result.n_iter.cpu().numpy(),
            finite.cpu().numpy(),
        )

    def condition(self, X) -> QueryPosteriors:
        """Fit every row's conditional prior once, for repeated draws and diagnostics.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)
            NaN marks the unobserved entries; the others are the evidence.

        Returns
        -------
        QueryPosteriors
        """
        return self._condition(self._evidence(X)[2])

    def _draw_latents(
        self, posteriors: QueryPosteriors, n_samples: int, seed: int | None, per_row: bool = False
    ) -> torch.Tensor:
        """``(n_samples, n, L)`` draws of ``z`` given each row's evidence.

        The conditional priors share one scrambled-Sobol noise batch across rows (common
        random numbers with quasi-Monte Carlo accuracy, for the averages of ``transform`` and
        the scores), or with ``per_row`` draw each row's own noise from its evidence
        (independent draws, for ``sample``).
        """
        check_n_samples(n_samples)
        evidence, generator = posteriors.evidence, self._generator(2, seed)
        if posteriors.family is not None:
            if per_row:
                values = row_keyed_normals(
                    _keyed_rows(evidence), n_samples, evidence.latent_dim, self._stream(seed, 1)
                )
                noise = to_tensor(values, evidence.x.device)
            else:
                noise = self._shared_noise(n_samples, evidence.latent_dim, 2, seed)
            with torch.no_grad():
                z, _ = posteriors.family.transform(posteriors.params, noise.to(evidence.x.device))
            return z
        if self.inference == "hmc":
            return hmc_sample(
                evidence, n_samples, generator, n_chains=self.n_chains, n_burnin=self.n_burnin
            )
        if self.inference == "rejection":
            return rejection_sample(evidence, n_samples, generator)
        encoder = self.base_._model().encoder
        with torch.no_grad():
            return pseudo_gibbs_sample(
                evidence, encoder, n_samples, generator, self.n_chains, self.n_burnin
            )

    def _shared_noise(
        self, n_draws: int, latent_dim: int, offset: int, seed: int | None = None
    ) -> torch.Tensor:
        """The rows' common noise batch: quasi-random, keyed like :meth:`_generator`."""
        return quasi_random_noise(
            n_draws, latent_dim, (self._seed_ if seed is None else seed) + offset
        )

    def _stream(self, seed: int | None, stream: int) -> int:
        """A seed for one of a call's noise streams, distinct across calls' seeds."""
        return 2 * (self._seed_ if seed is None else seed) + stream

    def _latents(self, evidence: Evidence, n_samples: int, seed: int | None) -> torch.Tensor:
        return self._draw_latents(self._condition(evidence), n_samples, seed)

    def _decode(
        self, evidence: Evidence, z: torch.Tensor, draw: bool, seed: int | None
    ) -> torch.Tensor:
        """Draws of ``x`` given ``x_o``, one per latent, ``(S, n, d)``; or, with ``draw``
        False, the mean over the latents of ``E[x | x_o, z]``, ``(1, n, d)``."""
        likelihood, out = evidence.likelihood, []
        per_chunk = max(1, NOISE_ELEMENTS_PER_CHUNK // (z.shape[0] * evidence.x.shape[1]))
        keyed = _keyed_rows(evidence) if draw else None
        with torch.no_grad():
            for rows in torch.arange(len(evidence)).split(per_chunk):
                x, mask, output = (
                    evidence.x[rows],
                    evidence.mask[rows],
                    evidence.decoder(z[:, rows]),
                )
                if draw:  # each row's own value noise, as its latents
                    values = row_keyed_normals(
                        keyed[rows.numpy()], z.shape[0], x.shape[1], self._stream(seed, 2)
                    )
                    value_noise = to_tensor(values, x.device)
                    out.append(likelihood.conditional_sample(x, output, mask, value_noise))
                else:
                    out.append(likelihood.conditional_mean(x, output, mask).mean(0, keepdim=True))
        return torch.cat(out, dim=1)

    def _to_data_units(self, values: torch.Tensor) -> np.ndarray:
        return values.double().cpu().numpy() * self.base_.scale_ + self.base_.mean_

    def transform(self, X):
        """Replace missing entries by ``E[x_u | x_o]``; observed entries are returned unchanged.

        The estimate averages the decoder's conditional means at ``n_samples`` latents drawn
        from each row's fitted conditional prior (or sampler).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)

        Returns
        -------
        ndarray or DataFrame of the input's shape and dtype
        """
        X_in = X
        X, observed, evidence = self._evidence(X)
        means = self._decode(evidence, self._latents(evidence, self.n_samples, None), False, None)
        result = np.where(observed, X, self._to_data_units(means[0]).astype(X.dtype))
        return self.base_._wrap_like(result, X_in)

    def sample(
        self, X, n_samples: int = 10, random_state: int | np.random.RandomState | None = None
    ) -> np.ndarray:
        """Multiple imputations: ``z`` from each row's conditional prior, then ``x ~ p(x | z)``.

        With the conditional priors the draws are independent across rows, and a row's
        draws depend only on its evidence and the seed; the samplers' chains follow one
        random stream per call.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)
        n_samples : int, default=10
        random_state : int, RandomState or None, default=None
            Seed of the draws; ``None`` uses a seed fixed at fit time (repeatable draws).

        Returns
        -------
        ndarray of shape (n_samples, n, d), in the input's dtype; observed entries kept
        """
        check_n_samples(n_samples)
        random_state = call_seed(random_state)
        X, observed, evidence = self._evidence(X)
        posteriors = self._condition(evidence)
        z = self._draw_latents(posteriors, n_samples, random_state, per_row=True)
        draws = self._to_data_units(self._decode(evidence, z, True, random_state))
        return np.where(observed, X, draws.astype(X.dtype))

    def conditional_elbo(self, X, n_samples: int | None = None) -> np.ndarray:
        """Per row, the conditional ELBO, a lower bound on ``log p(x_o)`` in nats.

        It is estimated on fresh noise draws (not the fitting batch, whose value is
        optimistic), in the data's units. The reference samplers have no ELBO: their rows
        are NaN. For ``"fcn"`` the value assumes the MLP map is invertible, which nothing
        enforces, so it can exceed ``log p(x_o)``.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)
        n_samples : int, optional
            Fresh draws; defaults to ``max(n_samples, n_noise)`` of the estimator.

        Returns
        -------
        ndarray of shape (n,)
        """
        X, observed, evidence = self._evidence(X)
        draws = check_n_samples(
            max(self.n_samples, self.n_noise) if n_samples is None else n_samples
        )
        if self.inference not in _VARIATIONAL:
            return np.full(X.shape[0], np.nan)
        posteriors = self._condition(evidence)
        family, params = posteriors.family, posteriors.params
        noise = self._shared_noise(draws, evidence.latent_dim, 4)
        per_chunk = max(1, NOISE_ELEMENTS_PER_CHUNK // (X.shape[0] * X.shape[1]))
        with torch.no_grad():
            parts = [
                conditional_elbo(family, params, part.to(evidence.x.device), evidence) * len(part)
                for part in noise.split(per_chunk)
            ]
        elbo = torch.stack(parts).sum(0) / draws
        jacobian = (observed * np.log(self.base_.scale_)).sum(axis=1)
        return elbo.double().cpu().numpy() - jacobian

    def score_conditional(self, X, observed_mask, n_samples: int | None = None) -> np.ndarray:
        """The query marginal likelihood ``log (1/K) Σ_k p(x_u | x_o, z_k)`` per row, in nats.

        ``z_k`` are ``K = n_samples`` latents from the row's conditional prior (or sampler)
        given ``x_o``, as in Wu et al. (2018). By Jensen's inequality its expectation is a
        lower bound on ``log p(x_u | x_o)`` when the ``z_k`` follow ``p(z | x_o)``; it
        tightens as ``K`` grows.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n, d)
            Complete rows.
        observed_mask : array-like of bool, shape (n, d)
            True where the entry is evidence; the others are scored.
        n_samples : int, optional
            Defaults to the estimator's ``n_samples``.

        Returns
        -------
        ndarray of shape (n,)
            Rows with nothing unobserved score exactly 0.
        """
        check_is_fitted(self)
        X, present, mask, n_samples = check_score_inputs(
            self._validate, X, observed_mask, n_samples, self.n_samples
        )
        x, full = self.base_._tensors(X, present)
        mask_t = torch.as_tensor(mask, device=x.device)
        model = self.base_._model()
        evidence = Evidence(model.decoder, model.likelihood, x, mask_t)
        z = self._latents(evidence, n_samples, None)
        scores = []
        with torch.no_grad():
            per_chunk = max(1, NOISE_ELEMENTS_PER_CHUNK // (n_samples * X.shape[1]))
            for rows in torch.arange(X.shape[0]).split(per_chunk):
                output = model.decoder(z[:, rows])
                joint = model.likelihood.log_prob(x[rows], output, full[rows])
                given = model.likelihood.log_prob(x[rows], output, mask_t[rows])
                scores.append(torch.logsumexp(joint - given, 0) - math.log(n_samples))
        jacobian = (~mask * np.log(self.base_.scale_)).sum(axis=1)
        values = torch.cat(scores).double().cpu().numpy() - jacobian
        return np.where(mask.all(axis=1), 0.0, values)
