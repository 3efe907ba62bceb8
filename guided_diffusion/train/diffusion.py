"""Training the diffusion model: ADM's ``TrainLoop`` (same keyword arguments) on the shared Trainer."""

from __future__ import annotations

from typing import Optional

from .loop import Trainer, logger_dir
from .objective import DiffusionObjective, log_loss_dict
from .resample import ScheduleSampler, UniformSampler


class TrainLoop(Trainer):
    """Minimise ``diffusion.training_losses`` with timesteps from ``schedule_sampler`` (uniform default):
    a :class:`Trainer` with a :class:`DiffusionObjective`.

    :param save_dir: the checkpoint folder; None: the logger's folder when the loop is built (ADM configures
        the logger first).
    Further keyword arguments (``use_bf16``, ``max_steps``, ``seed``, ``lr_schedule``, ...) go to the Trainer.
    """

    def __init__(self, *, model, diffusion, data, batch_size, microbatch, lr, ema_rate, log_interval,
                 save_interval, resume_checkpoint, use_fp16=False, fp16_scale_growth=1e-3,
                 schedule_sampler: Optional[ScheduleSampler] = None, weight_decay=0.0, lr_anneal_steps=0,
                 save_dir: Optional[str] = None, **kwargs):
        self.diffusion = diffusion
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        objective = DiffusionObjective(diffusion, self.schedule_sampler)
        super().__init__(model=model, objective=objective, data=data, batch_size=batch_size,
                         microbatch=microbatch, lr=lr, ema_rate=ema_rate, log_interval=log_interval,
                         save_interval=save_interval,
                         resume_checkpoint=resume_checkpoint, use_fp16=use_fp16,
                         fp16_scale_growth=fp16_scale_growth, weight_decay=weight_decay,
                         lr_anneal_steps=lr_anneal_steps, save_dir=save_dir or logger_dir(), **kwargs)


__all__ = ["TrainLoop", "log_loss_dict"]
