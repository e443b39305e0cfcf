"""scikit-learn's estimator checks, all expected to pass.

Note: most checks feed complete data, where imputation is the identity; the behaviour on
missing values is covered by test_impute.py and test_properties.py.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from afa import ConditionalPriorImputer, LookaheadAcquirer, PosteriorMatchingImputer


def _tiny_imputer() -> PosteriorMatchingImputer:
    return PosteriorMatchingImputer(
        latent_dim=2, hidden_layer_sizes=(8,), max_iter=2, n_samples=4, random_state=0
    )


@parametrize_with_checks(
    [
        _tiny_imputer(),
        LookaheadAcquirer(
            imputer=_tiny_imputer(),
            n_samples=2,
            lookahead_samples=2,
            actions_per_step=2,
            max_iter=2,
            random_state=0,
        ),
        ConditionalPriorImputer(
            inference="gvi",
            latent_dim=2,
            hidden_layer_sizes=(8,),
            max_epochs=2,
            n_noise=16,
            max_iter=5,
            n_samples=4,
            random_state=0,
        ),
    ]
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
