"""A clinic deciding which measurement to take next, patient by patient.

The Wisconsin Diagnostic Breast Cancer table (569 patients, shipped with scikit-learn) has
ten cell-nucleus measurements (radius, texture, ...), each reported three ways: mean,
standard error and worst value. Here each measurement is one *test* that yields its three
values at once, with an illustrative cost. The diagnosis is the target: tests are ordered,
one at a time, by the expected share of the diagnosis's remaining variance each removes, per
unit cost, until the predicted probability of malignancy is confident or nothing is worth
its cost.

It prints one patient's sequence and the accuracy-versus-cost curves of the greedy order,
a random order and a single global order (the same for every patient), and saves a plot.

Run::

    python examples/clinic_acquisition.py [--output clinic_acquisition.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from afa import LookaheadAcquirer, PosteriorMatchingImputer

MEASUREMENTS = [
    "radius", "texture", "perimeter", "area", "smoothness",
    "compactness", "concavity", "concave points", "symmetry", "fractal dimension",
]  # fmt: skip
# Illustrative costs: size measurements come with the image; shape descriptors need more work.
COSTS = {
    "radius": 1.0, "texture": 1.0, "perimeter": 1.0, "area": 1.0, "smoothness": 2.0,
    "compactness": 2.0, "concavity": 3.0, "concave points": 3.0, "symmetry": 2.0,
    "fractal dimension": 3.0,
}  # fmt: skip
CONFIDENT = 0.1  # stop once P(malignant) is below 0.1 or above 0.9


def load_table() -> pd.DataFrame:
    """The 30 measurements and a ``malignant`` column (1 = malignant, 0 = benign)."""
    data = load_breast_cancer(as_frame=True)
    table = data.data.copy()
    table["malignant"] = (data.target == 0).astype(float)
    return table


def test_groups(columns: pd.Index) -> list[list[str]]:
    """One group per measurement: its mean, error and worst columns."""
    return [[f"mean {name}", f"{name} error", f"worst {name}"] for name in MEASUREMENTS]


def action_names(acquirer: LookaheadAcquirer) -> list[str]:
    """Readable name of each action (the measurement its columns belong to)."""
    names = acquirer.feature_names_in_
    return [names[columns[0]].replace("mean ", "") for columns in acquirer.actions_]


def probability_of_malignancy(acquirer: LookaheadAcquirer, partial: pd.DataFrame) -> np.ndarray:
    imputed = acquirer.transform(partial)
    return np.clip(imputed["malignant"].to_numpy(), 0.0, 1.0)


def one_patient(acquirer: LookaheadAcquirer, patient: pd.Series, costs: dict[str, float]) -> None:
    """Order tests for one patient until the prediction is confident."""
    names = action_names(acquirer)
    partial = pd.DataFrame(np.nan, index=[patient.name], columns=patient.index)
    spent = 0.0
    print(f"Patient {patient.name} (truly {'malignant' if patient['malignant'] else 'benign'}):")
    while True:
        probability = probability_of_malignancy(acquirer, partial)[0]
        if min(probability, 1 - probability) < CONFIDENT:
            print(f"  confident after spending {spent:g}: P(malignant) = {probability:.2f}")
            return
        gains = acquirer.information_gain(partial)[0]
        action = int(acquirer.acquire_next(partial, costs=costs)[0])
        if action < 0:
            print(f"  nothing worth its cost is left: P(malignant) = {probability:.2f}")
            return
        columns = list(acquirer.actions_[action])
        partial.iloc[0, columns] = patient.iloc[columns].to_numpy()
        spent += COSTS[names[action]]
        print(
            f"  P(malignant) = {probability:.2f} -> order {names[action]!r} "
            f"(cost {COSTS[names[action]]:g}, expected to remove {gains[action]:.0%} of the "
            "variance)"
        )


def global_order(acquirer: LookaheadAcquirer, costs: dict[str, float]) -> np.ndarray:
    """One fixed order for everyone: greedy gain per cost from an empty record, then onward."""
    partial = pd.DataFrame(np.nan, index=[0], columns=acquirer.feature_names_in_)
    order = []
    while (action := int(acquirer.acquire_next(partial, costs=costs)[0])) >= 0:
        order.append(action)
        partial.iloc[0, list(acquirer.actions_[action])] = 0.0  # any value: only the mask matters
    return np.array(order)


def fixed_order_curve(
    acquirer: LookaheadAcquirer, test: pd.DataFrame, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean cost and accuracy after each step of the same order for every patient."""
    observed = np.zeros(test.shape, dtype=bool)
    truth = test["malignant"].to_numpy() > 0.5
    names = action_names(acquirer)
    spent, accuracy = [0.0], []
    for step in range(len(order) + 1):
        partial = test.where(observed)
        accuracy.append(np.mean((probability_of_malignancy(acquirer, partial) > 0.5) == truth))
        if step < len(order):
            observed[:, list(acquirer.actions_[order[step]])] = True
            spent.append(spent[-1] + COSTS[names[order[step]]])
    return np.array(spent), np.array(accuracy)


def path_curve(
    acquirer: LookaheadAcquirer, test: pd.DataFrame, path
) -> tuple[np.ndarray, np.ndarray]:
    """Mean cost and accuracy after each step of a simulated episode."""
    target = acquirer.target_index_
    truth = test["malignant"].to_numpy() > 0.5
    accuracy = ((path.imputations[:, :, target] > 0.5) == truth).mean(axis=1)
    return path.spent.mean(axis=1), accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("clinic_acquisition.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    table = load_table()
    train, test = train_test_split(
        table, test_size=0.3, stratify=table["malignant"], random_state=0
    )
    # A small latent and the cheap Gaussian partial posterior suit 400 patients.
    imputer = PosteriorMatchingImputer(posterior="gaussian", latent_dim=4, random_state=0)
    # keyed by column: a test's cost under any one of its columns (the target needs none)
    costs = {f"mean {name}": cost for name, cost in COSTS.items()}
    # costs given at fit time also shape the network's training: half of its states lie on
    # its own greedy paths, which rank the tests by gain per unit cost
    acquirer = LookaheadAcquirer(
        imputer=imputer,
        target="malignant",
        groups=test_groups(table.columns),
        costs=costs,
        random_state=0,
    ).fit(train)

    one_patient(acquirer, test[test["malignant"] == 1].iloc[0], costs)

    curves = {
        "greedy (lookahead)": path_curve(acquirer, test, acquirer.acquire(test, costs=costs)),
        "random order": path_curve(
            acquirer, test, acquirer.acquire(test, costs=costs, strategy="random")
        ),
        "one global order": fixed_order_curve(acquirer, test, global_order(acquirer, costs)),
    }
    print("\nAccuracy against mean cost spent (test patients):")
    for name, (spent, accuracy) in curves.items():
        points = ", ".join(
            f"{c:.1f}: {a:.2f}" for c, a in list(zip(spent, accuracy, strict=True))[:6]
        )
        print(f"  {name:20s} {points}, ...")
    save_plot(curves, args.output)
    print(f"\nPlot saved to {args.output}")


def save_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for name, (spent, accuracy) in curves.items():
        axis.plot(spent, accuracy, marker="o", markersize=3, label=name)
    axis.set_xlabel("mean cost spent per patient")
    axis.set_ylabel("diagnostic accuracy")
    axis.set_title("Ordering tests for a breast-cancer diagnosis")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
