"""Training ADM's noisy classifier: cross-entropy on q_sample(x0, t), logged per quarter of the steps."""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from .loop import Trainer, logger_dir
from .objective import ClassifierObjective, accuracy
from .resample import ScheduleSampler, UniformSampler


class ClassifierTrainLoop(Trainer):
    """A :class:`Trainer` with a :class:`ClassifierObjective`; ``noised=False`` trains a clean classifier
    (t = 0, inputs untouched).

    Every ``eval_interval`` steps one batch of ``val_data`` is scored (``val_loss``, ``val_acc@1``, ...); its
    timesteps and noise continue the step's random streams, after the training draws.

    :param save_dir: the checkpoint folder; None: the logger's folder when the loop is built.
    """

    def __init__(self, *, model, diffusion, data, val_data: Optional[Iterator] = None, noised: bool = True,
                 eval_interval: int = 5, schedule_sampler: Optional[ScheduleSampler] = None,
                 initial_lg_loss_scale: float = 16.0, save_dir: Optional[str] = None, **kwargs):
        self.diffusion, self.noised, self.eval_interval = diffusion, noised, eval_interval
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.val_data = val_data
        super().__init__(model=model, objective=ClassifierObjective(diffusion, self.schedule_sampler, noised),
                         data=data, initial_lg_loss_scale=initial_lg_loss_scale,
                         save_dir=save_dir or logger_dir(), **kwargs)

    def after_step(self) -> None:
        if self.val_data is None or self.total_steps % self.eval_interval:
            return
        batch, cond = next(self.val_data)
        draws = self.objective.draw(batch, cond, self.rng)
        self.model.eval()
        with torch.no_grad(), self.mp_trainer.autocast():
            for sub, sub_cond, sub_draws, _ in self.micro_batches(batch, cond, draws):
                self.objective.loss(self.model, sub, sub_cond, sub_draws, prefix="val_")
        self.model.train()


__all__ = ["ClassifierTrainLoop", "accuracy"]
