"""The one training loop every afa model goes through.

A model only has to offer ``loss(x, mask, generator, kl_weight) -> (loss, terms)`` (and
``replay() -> loss``, the last batch's loss again, to take several steps per batch); this
module owns batching, the optimiser, the learning-rate and KL schedules, validation, early
stopping, the history and the progress bar. Every random draw (batches, masks, latent
noise, dropout) depends only on the trainer's seed and the epoch number.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from afa._torch import seeded
from afa.exceptions import TrainingDivergedError

__all__ = ["TrainingSettings", "Trainer", "kl_weight_schedule"]

logger = logging.getLogger(__name__)

_VALIDATION_SEED_OFFSET = 7_919
_MIN_VALIDATION_ROWS = 256


@dataclass(frozen=True)
class TrainingSettings:
    """Everything the loop needs to know; built by an estimator from its parameters.

    ``learning_rate_decay`` is the per-epoch factor; ``tol`` is relative to the best
    validation loss so far; ``max_grad_norm`` (None: no cap) caps each step's total gradient
    norm. ``updates_per_batch`` optimiser steps are taken on each batch, the later ones on
    the model's ``replay()``: worth it where a batch's targets cost far more than a step.
    """

    max_iter: int
    batch_size: int
    learning_rate_init: float
    weight_decay: float
    learning_rate_decay: float
    early_stopping: bool
    n_iter_no_change: int
    tol: float
    kl_schedule: str
    verbose: bool
    max_grad_norm: float | None = None
    updates_per_batch: int = 1


def kl_weight_schedule(kind: str, max_iter: int) -> Callable[[int], float]:
    """Return ``epoch -> β``.

    ``"constant"`` keeps β = 1. ``"cyclical"`` runs four cycles over ``max_iter`` epochs; each
    ramps β linearly from 0 to 1 over its first half and holds 1 over its second half.
    """
    if kind == "constant":
        return lambda epoch: 1.0
    if kind == "cyclical":
        period = max(2, math.ceil(max_iter / 4))
        return lambda epoch: min(1.0, 2.0 * (epoch % period) / period)
    raise ValueError(f"Unknown kl_schedule {kind!r}; choose 'constant' or 'cyclical'.")


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices of layers; spare biases and the parameters a module names
    in its ``no_weight_decay`` attribute (model quantities such as a correlation factor)."""
    exempt = {
        id(getattr(module, name))
        for module in model.modules()
        for name in getattr(module, "no_weight_decay", ())
    }
    matrices = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in exempt]
    others = [p for p in model.parameters() if p.ndim < 2 or id(p) in exempt]
    return [
        {"params": matrices, "weight_decay": weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]


class Trainer:
    """Trains one model, epoch by epoch, and records its history.

    The learning-rate and KL schedules count the epochs this trainer has run; the history
    (and the seeds, which follow the history's length) continue across trainers.

    Parameters
    ----------
    model : nn.Module
        Has ``loss(x, mask, generator, kl_weight)``, and ``replay()`` when
        ``settings.updates_per_batch > 1``.
    settings : TrainingSettings
    seed : int
        Base seed; epoch ``e`` of the history draws everything from ``seed + e``.
    history : dict of list, optional
        History to continue (``warm_start``).
    """

    def __init__(
        self,
        model: nn.Module,
        settings: TrainingSettings,
        seed: int,
        history: dict[str, list[float]] | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.seed = seed
        self.history: dict[str, list[float]] = copy.deepcopy(history) if history else {}
        self.epochs_run = 0
        fused = all(p.device.type in {"cpu", "cuda"} for p in model.parameters())
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(model, settings.weight_decay),
            lr=settings.learning_rate_init,
            fused=fused,
        )
        self.kl_weight = kl_weight_schedule(settings.kl_schedule, settings.max_iter)

    @property
    def epoch(self) -> int:
        """Number of epochs in the history (across ``fit`` and ``partial_fit`` calls)."""
        return len(self.history.get("loss", []))

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _diverged(self, what: str, step: int | None = None) -> TrainingDivergedError:
        where = f"epoch {self.epoch + 1}" + ("" if step is None else f", step {step + 1}")
        return TrainingDivergedError(
            f"{what} in {where}. Try a smaller learning_rate_init, a larger batch_size or a "
            "larger weight_decay, and check the data for extreme outliers."
        )

    def _step(self, x: torch.Tensor, mask: torch.Tensor, generator, kl_weight: float, step: int):
        try:
            loss, terms = self.model.loss(x, mask, generator, kl_weight)
        except torch.linalg.LinAlgError as error:  # e.g. a factorisation of diverged weights
            raise self._diverged(f"A factorisation failed ({error})", step) from error
        self._update(loss, step)
        for _ in range(self.settings.updates_per_batch - 1):
            self._update(self.model.replay(), step)
        return {"loss": float(loss.detach()), **terms}

    def _update(self, loss: torch.Tensor, step: int) -> None:
        """One optimiser step on ``loss``, its gradient norm capped."""
        if not torch.isfinite(loss):
            raise self._diverged(f"The training loss became {float(loss.detach())}", step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        cap = self.settings.max_grad_norm
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), math.inf if cap is None else cap)
        if not torch.isfinite(norm):
            raise self._diverged("The gradient became non-finite", step)
        self.optimizer.step()

    @torch.enable_grad()  # training works even when the caller is inside torch.no_grad()
    def run_epoch(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """One pass over ``(x, mask)`` in shuffled mini-batches; returns the epoch's means."""
        device = self._device()
        # the decay stops at max_iter, so partial_fit beyond it keeps the final rate
        decayed_epochs = min(self.epochs_run, self.settings.max_iter)
        learning_rate = (
            self.settings.learning_rate_init * self.settings.learning_rate_decay**decayed_epochs
        )
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        kl_weight = self.kl_weight(self.epochs_run)
        self.model.train()
        totals: dict[str, float] = {}
        with seeded(self.seed + self.epoch, device):
            generator = torch.Generator(device=device).manual_seed(self.seed + self.epoch)
            order = torch.randperm(x.shape[0], generator=generator, device=device)
            for step, batch in enumerate(order.split(self.settings.batch_size)):
                terms = self._step(x[batch], mask[batch], generator, kl_weight, step)
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value * len(batch)
        self.epochs_run += 1
        means = {name: total / x.shape[0] for name, total in totals.items()}
        return {**means, "kl_weight": kl_weight, "learning_rate": learning_rate}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        """Loss on held-out rows with β = 1 and the same masks at every call.

        Small validation sets are repeated up to ``_MIN_VALIDATION_ROWS`` rows, each copy with
        its own mask and latent draw, so the loss that early stopping watches is less noisy.
        """
        repeats = math.ceil(_MIN_VALIDATION_ROWS / x.shape[0])
        x, mask = x.repeat(repeats, 1), mask.repeat(repeats, 1)
        device = self._device()
        generator = torch.Generator(device=device).manual_seed(self.seed + _VALIDATION_SEED_OFFSET)
        self.model.eval()
        total = 0.0
        for start in range(0, x.shape[0], self.settings.batch_size):
            rows = slice(start, start + self.settings.batch_size)
            try:
                loss, _ = self.model.loss(x[rows], mask[rows], generator, 1.0)
            except torch.linalg.LinAlgError as error:
                failure = f"A factorisation failed on validation rows ({error})"
                raise self._diverged(failure) from error
            total += float(loss) * x[rows].shape[0]
        if not math.isfinite(total):
            raise self._diverged(f"The validation loss became {total}")
        return total / x.shape[0]

    def record(self, values: dict[str, float]) -> None:
        """Append one epoch's values to the history, NaN for a quantity it lacks.

        Every list keeps one entry per epoch, so the history stays a table even when a
        later ``fit`` measures other things (say, no validation loss).
        """
        n_epochs = max((len(column) for column in self.history.values()), default=0)
        for name in [*self.history, *(name for name in values if name not in self.history)]:
            self.history.setdefault(name, [math.nan] * n_epochs).append(values.get(name, math.nan))

    def fit(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        validation: tuple[torch.Tensor, torch.Tensor] | None,
        n_epochs: int,
    ) -> None:
        """Run up to ``n_epochs`` epochs, stopping early on the validation loss if asked.

        Training stops once ``n_iter_no_change`` epochs have passed without a relative
        improvement of ``tol`` in the validation loss; the best epoch's weights are then
        restored.
        """
        use_validation = validation is not None and validation[0].shape[0] > 0
        best_loss, best_state, best_epoch = math.inf, None, 0
        progress = tqdm(total=n_epochs, disable=not self.settings.verbose, desc="afa", unit="epoch")
        for local_epoch in range(1, n_epochs + 1):
            values = self.run_epoch(*train)
            if use_validation:
                values["val_loss"] = self.validation_loss(*validation)
            self.record(values)
            progress.set_postfix({k: f"{v:.4g}" for k, v in values.items() if "loss" in k})
            progress.update()
            if not (use_validation and self.settings.early_stopping):
                continue
            threshold = best_loss - self.settings.tol * abs(best_loss) if best_state else math.inf
            if values["val_loss"] < threshold:
                best_loss, best_epoch = values["val_loss"], local_epoch
                best_state = copy.deepcopy(self.model.state_dict())
            elif local_epoch - best_epoch >= self.settings.n_iter_no_change:
                logger.info("Early stopping after %d epochs.", self.epoch)
                break
        progress.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
