"""Unit tests for afa._training: schedules, divergence, early stopping and history."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from afa._training import Trainer, TrainingSettings, kl_weight_schedule
from afa.exceptions import TrainingDivergedError


def _settings(**overrides) -> TrainingSettings:
    values = dict(
        max_iter=5,
        batch_size=8,
        learning_rate_init=1e-2,
        weight_decay=0.0,
        learning_rate_decay=1.0,
        early_stopping=True,
        n_iter_no_change=2,
        tol=0.0,
        kl_schedule="constant",
        verbose=False,
    )
    values.update(overrides)
    return TrainingSettings(**values)


class QuadraticModel(nn.Module):
    """loss = mean((x - w)^2); w starts at 0, data at 3: training reduces the loss."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.calls: list[tuple[int, float]] = []

    def loss(self, x, mask, generator, kl_weight=1.0):
        self.calls.append((x.shape[0], kl_weight))
        value = (x - self.w).square().mean()
        return value, {"elbo": -float(value.detach()), "kl": 0.0, "pm": 1.0}


class NaNModel(QuadraticModel):
    def loss(self, x, mask, generator, kl_weight=1.0):
        value = (x - self.w).square().mean() * float("nan")
        return value, {"elbo": 0.0, "kl": 0.0, "pm": 0.0}


class ScriptedValidationModel(QuadraticModel):
    """Training moves w; each validation pass returns the next value of a script.

    A validation pass may call ``loss`` any number of times (mini-batches); it starts at the
    first call in eval mode after a call in train mode.
    """

    def __init__(self, script):
        super().__init__()
        self.script = list(script)
        self.n_validations = 0
        self.in_validation = False
        self.snapshots: list[torch.Tensor] = []

    def loss(self, x, mask, generator, kl_weight=1.0):
        if not self.training:  # validation pass
            if not self.in_validation:
                self.in_validation = True
                self.n_validations += 1
                self.snapshots.append(self.w.detach().clone())
            return torch.tensor(self.script[self.n_validations - 1]), {}
        self.in_validation = False
        return super().loss(x, mask, generator, kl_weight)


def _data(n=32):
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    x = torch.full((n, 2), 3.0) + 0.1 * noise
    return x, torch.ones(n, 2, dtype=torch.bool)


# ---------------------------------------------------------------- schedules


def test_constant_kl_schedule():
    schedule = kl_weight_schedule("constant", 10)
    assert [schedule(e) for e in range(12)] == [1.0] * 12


def test_cyclical_kl_schedule_values():
    schedule = kl_weight_schedule("cyclical", 40)  # period 10
    values = [schedule(e) for e in range(40)]
    assert values[0] == 0.0
    assert values[:10] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert values[10:20] == values[:10] == values[30:40]
    assert max(values) == 1.0 and min(values) == 0.0
    # four cycles over max_iter
    assert sum(v == 0.0 for v in values) == 4


def test_cyclical_kl_schedule_short_runs():
    schedule = kl_weight_schedule("cyclical", 3)  # period at least 2
    assert [schedule(e) for e in range(4)] == [0.0, 1.0, 0.0, 1.0]
    for max_iter in (1, 7, 100):
        values = [kl_weight_schedule("cyclical", max_iter)(e) for e in range(max_iter)]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values[0] == 0.0


def test_unknown_kl_schedule():
    with pytest.raises(ValueError, match="kl_schedule 'linear'"):
        kl_weight_schedule("linear", 10)


# ---------------------------------------------------------------- training loop


def test_history_keys_and_lengths_without_validation():
    model = QuadraticModel()
    trainer = Trainer(model, _settings(early_stopping=False), seed=0)
    trainer.fit(_data(), None, n_epochs=4)
    assert trainer.epoch == 4
    assert set(trainer.history) == {"loss", "elbo", "kl", "pm", "kl_weight", "learning_rate"}
    assert all(len(v) == 4 for v in trainer.history.values())
    # the loss decreases on this convex problem
    assert trainer.history["loss"][-1] < trainer.history["loss"][0]
    # mini-batches of 8 over 32 rows
    assert [n for n, _ in model.calls[:4]] == [8, 8, 8, 8]
    assert len(model.calls) == 16


def test_history_with_validation_and_epoch_means():
    trainer = Trainer(QuadraticModel(), _settings(early_stopping=False), seed=0)
    x, mask = _data(40)
    trainer.fit((x[:30], mask[:30]), (x[30:], mask[30:]), n_epochs=3)
    assert len(trainer.history["val_loss"]) == 3
    assert all(math.isfinite(v) for v in trainer.history["val_loss"])
    assert trainer.history["pm"] == [1.0, 1.0, 1.0]  # row-weighted means of a constant


def test_history_stays_a_table_when_a_later_fit_measures_other_things():
    trainer = Trainer(QuadraticModel(), _settings(early_stopping=False), seed=0)
    x, mask = _data(40)
    trainer.fit((x, mask), None, n_epochs=2)
    trainer.fit((x[:30], mask[:30]), (x[30:], mask[30:]), n_epochs=2)
    trainer.fit((x, mask), None, n_epochs=1)
    assert {len(v) for v in trainer.history.values()} == {5}
    validation = trainer.history["val_loss"]
    assert math.isnan(validation[0]) and math.isnan(validation[1]) and math.isnan(validation[4])
    assert all(math.isfinite(v) for v in validation[2:4])


def test_empty_validation_set_is_ignored():
    trainer = Trainer(QuadraticModel(), _settings(), seed=0)
    x, mask = _data()
    trainer.fit((x, mask), (x[:0], mask[:0]), n_epochs=2)
    assert "val_loss" not in trainer.history
    assert trainer.epoch == 2


def test_kl_weights_and_learning_rate_decay_follow_the_settings():
    model = QuadraticModel()
    settings = _settings(
        kl_schedule="cyclical", max_iter=8, learning_rate_decay=0.5, early_stopping=False
    )
    trainer = Trainer(model, settings, seed=0)
    trainer.fit(_data(), None, n_epochs=4)
    assert trainer.history["kl_weight"] == [0.0, 1.0, 0.0, 1.0]
    assert trainer.history["learning_rate"] == pytest.approx([1e-2, 5e-3, 2.5e-3, 1.25e-3])
    assert [w for _, w in model.calls[::4]] == [0.0, 1.0, 0.0, 1.0]


def test_learning_rate_decay_stops_at_max_iter():
    trainer = Trainer(QuadraticModel(), _settings(max_iter=3, learning_rate_decay=0.5), seed=0)
    for _ in range(6):  # as partial_fit calls beyond max_iter do
        trainer.record(trainer.run_epoch(*_data()))
    assert trainer.history["learning_rate"] == pytest.approx(
        [1e-2, 5e-3, 2.5e-3, 1.25e-3, 1.25e-3, 1.25e-3]
    )


def test_nan_loss_raises_training_diverged():
    trainer = Trainer(NaNModel(), _settings(), seed=0)
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        trainer.fit(_data(), None, n_epochs=3)
    assert issubclass(TrainingDivergedError, RuntimeError)


class NaNGradientModel(QuadraticModel):
    """A finite loss whose gradient is NaN (sqrt at 0)."""

    def loss(self, x, mask, generator, kl_weight=1.0):
        value = (x - self.w).square().mean() + 0.0 * torch.sqrt(self.w - self.w).sum()
        return value, {"elbo": 0.0, "kl": 0.0, "pm": 0.0}


class FailingFactorisationModel(QuadraticModel):
    def loss(self, x, mask, generator, kl_weight=1.0):
        torch.linalg.cholesky(-torch.eye(2))
        raise AssertionError("unreachable")


class NaNValidationModel(QuadraticModel):
    def loss(self, x, mask, generator, kl_weight=1.0):
        value, terms = super().loss(x, mask, generator, kl_weight)
        return (value if self.training else value * math.nan), terms


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_a_non_finite_gradient_raises_training_diverged(max_grad_norm):
    trainer = Trainer(NaNGradientModel(), _settings(max_grad_norm=max_grad_norm), seed=0)
    with pytest.raises(TrainingDivergedError, match="non-finite in epoch 1, step 1"):
        trainer.fit(_data(), None, n_epochs=2)


def test_a_failed_factorisation_raises_training_diverged():
    trainer = Trainer(FailingFactorisationModel(), _settings(), seed=0)
    with pytest.raises(TrainingDivergedError, match="factorisation failed"):
        trainer.fit(_data(), None, n_epochs=1)


def test_a_non_finite_validation_loss_raises_training_diverged():
    trainer = Trainer(NaNValidationModel(), _settings(), seed=0)
    x, mask = _data(40)
    with pytest.raises(TrainingDivergedError, match="validation loss became nan"):
        trainer.fit((x[:30], mask[:30]), (x[30:], mask[30:]), n_epochs=2)


def test_early_stopping_stops_and_restores_best_weights():
    # validation improves at epoch 2, then stalls: stop after n_iter_no_change=2 stale epochs
    model = ScriptedValidationModel([5.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    trainer = Trainer(model, _settings(n_iter_no_change=2), seed=0)
    x, mask = _data(40)
    trainer.fit((x[:32], mask[:32]), (x[32:], mask[32:]), n_epochs=7)
    assert trainer.epoch == 4
    assert trainer.history["val_loss"] == [5.0, 1.0, 2.0, 3.0]
    best = model.snapshots[1]
    assert not torch.equal(best, model.snapshots[-1])  # training did move the weights
    torch.testing.assert_close(model.w.detach(), best)


def test_without_early_stopping_runs_all_epochs_and_keeps_last_weights():
    model = ScriptedValidationModel([5.0, 1.0, 2.0, 3.0, 4.0])
    trainer = Trainer(model, _settings(early_stopping=False, n_iter_no_change=1), seed=0)
    x, mask = _data(40)
    trainer.fit((x[:32], mask[:32]), (x[32:], mask[32:]), n_epochs=5)
    assert trainer.epoch == 5
    torch.testing.assert_close(model.w.detach(), model.snapshots[-1])


def test_tol_defines_improvement():
    # every epoch improves by 0.0625 < tol: the first epoch is best, stop after 2 stale epochs
    model = ScriptedValidationModel([1.0, 0.9375, 0.875, 0.8125, 0.75])
    trainer = Trainer(model, _settings(tol=0.2, n_iter_no_change=2), seed=0)
    x, mask = _data(40)
    trainer.fit((x[:32], mask[:32]), (x[32:], mask[32:]), n_epochs=5)
    assert trainer.epoch == 3
    torch.testing.assert_close(model.w.detach(), model.snapshots[0])


def test_history_continues_and_seeds_follow_epochs():
    first = Trainer(QuadraticModel(), _settings(early_stopping=False), seed=3)
    first.fit(_data(), None, n_epochs=2)
    continued = Trainer(
        QuadraticModel(), _settings(early_stopping=False), seed=3, history=first.history
    )
    assert continued.epoch == 2
    continued.fit(_data(), None, n_epochs=1)
    assert continued.epoch == 3
    assert len(first.history["loss"]) == 2  # the given history is copied, not mutated


def test_training_is_deterministic_given_the_seed():
    def run(seed):
        torch.manual_seed(seed + 100)  # global state must not matter
        model = QuadraticModel()
        Trainer(model, _settings(early_stopping=False), seed=seed).fit(_data(20), None, 3)
        return model.w.detach().clone()

    assert torch.equal(run(0), run(0))


def test_training_with_dropout_is_independent_of_global_rng():
    import copy

    from afa.models import PosteriorMatchingVAE

    torch.manual_seed(0)
    base = PosteriorMatchingVAE(4, 2, (8, 8), posterior="gaussian", dropout=0.5)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(32, 4, dtype=torch.bool)
    weights = []
    for global_seed in (1, 2):
        model = copy.deepcopy(base)
        torch.manual_seed(global_seed)
        Trainer(model, _settings(early_stopping=False), seed=0).fit((x, mask), None, 1)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_training_without_dropout_is_independent_of_global_rng():
    import copy

    from afa.models import PosteriorMatchingVAE

    torch.manual_seed(0)
    base = PosteriorMatchingVAE(4, 2, (8, 8), posterior="autoregressive", dropout=0.0)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(32, 4, generator=torch.Generator().manual_seed(2)) < 0.8
    weights = []
    for global_seed in (1, 2):
        model = copy.deepcopy(base)
        torch.manual_seed(global_seed)
        Trainer(model, _settings(early_stopping=False), seed=0).fit((x, mask), None, 2)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_weight_decay_spares_biases_and_model_quantities():
    from afa._training import _parameter_groups
    from afa.models import PosteriorMatchingVAE

    vae = PosteriorMatchingVAE(4, 2, (8,), posterior="gaussian", decoder_scale="correlated")
    decayed, spared = _parameter_groups(vae, 0.1)
    assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    decayed_ids = {id(p) for p in decayed["params"]}
    assert id(vae.likelihood.raw_factor) not in decayed_ids
    assert id(vae.decoder.stem.weight) in decayed_ids
    assert all(p.ndim >= 2 for p in decayed["params"])
    assert len(decayed["params"]) + len(spared["params"]) == len(list(vae.parameters()))


class SpikeModel(QuadraticModel):
    """The quadratic loss, but the second training step's loss is 10^4 times larger."""

    def loss(self, x, mask, generator, kl_weight=1.0):
        value, terms = super().loss(x, mask, generator, kl_weight)
        return (value * 1e4 if len(self.calls) == 2 else value), terms


def test_gradient_norm_is_capped_before_each_step():
    model = QuadraticModel()
    trainer = Trainer(model, _settings(early_stopping=False, max_grad_norm=0.5), seed=0)
    norms: list[float] = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: norms.append(float(torch.linalg.vector_norm(model.w.grad)))
    )
    trainer.fit(_data(), None, n_epochs=2)
    assert len(norms) == 8
    assert max(norms) == pytest.approx(0.5, rel=1e-5)  # uncapped, every norm is above 4


@pytest.mark.parametrize("max_grad_norm, converges", [(None, False), (1.0, True)])
def test_a_gradient_spike_stalls_adam_unless_the_norm_is_capped(max_grad_norm, converges):
    # One huge gradient inflates Adam's second moment, so the 198 steps after it are too
    # small to reach the optimum; capped, it is one ordinary step.
    model = SpikeModel()
    settings = _settings(early_stopping=False, learning_rate_init=0.05, max_grad_norm=max_grad_norm)
    Trainer(model, settings, seed=0).fit(_data(), None, n_epochs=50)
    assert (float((model.w.detach() - 3.0).abs().max()) < 0.1) is converges


class ReplayModel(QuadraticModel):
    """The quadratic loss; ``replay`` recomputes the last batch's loss and counts itself."""

    def __init__(self):
        super().__init__()
        self.replayed_batches: list[torch.Tensor] = []

    def loss(self, x, mask, generator, kl_weight=1.0):
        self.last_batch = x
        return super().loss(x, mask, generator, kl_weight)

    def replay(self):
        self.replayed_batches.append(self.last_batch)
        return (self.last_batch - self.w).square().mean()


def test_updates_per_batch_steps_again_on_each_batch_through_replay():
    model = ReplayModel()
    trainer = Trainer(model, _settings(early_stopping=False, updates_per_batch=3), seed=0)
    steps: list[torch.Tensor] = []
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(model.w.detach().clone()))
    trainer.fit(_data(), None, n_epochs=2)
    assert len(model.calls) == 8  # 4 batches an epoch
    assert len(steps) == 3 * 8  # three optimiser steps per training batch
    assert len(model.replayed_batches) == 2 * 8
    assert all(  # each replay is of the batch just drawn, and every step moves w
        model.replayed_batches[2 * i] is model.replayed_batches[2 * i + 1] for i in range(8)
    )
    assert all(not torch.equal(a, b) for a, b in zip(steps, steps[1:], strict=False))
