"""Training the diffusion model: ADM's ``TrainLoop`` (same keyword arguments) on the shared Trainer."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .. import logger
from .loop import Trainer
from .resample import LossAwareSampler, UniformSampler


def log_loss_dict(diffusion, ts: torch.Tensor, losses: Dict[str, torch.Tensor], prefix: str = "") -> None:
    """Log each loss's mean, and its mean per quarter of the diffusion steps (``loss_q0`` ... ``loss_q3``)."""
    for key, values in losses.items():
        logger.logkv_mean(prefix + key, values.float().mean().item())
        for t, v in zip(ts.cpu().numpy(), values.detach().float().cpu().numpy()):
            quartile = int(4 * t / diffusion.num_timesteps)
            logger.logkv_mean(f"{prefix}{key}_q{quartile}", v)


class TrainLoop(Trainer):
    """Minimise ``diffusion.training_losses`` with timesteps from ``schedule_sampler`` (uniform default)."""

    def __init__(self, *, model, diffusion, data, batch_size, microbatch, lr, ema_rate, log_interval,
                 save_interval, resume_checkpoint, use_fp16=False, fp16_scale_growth=1e-3,
                 schedule_sampler=None, weight_decay=0.0, lr_anneal_steps=0, **kwargs):
        self.diffusion = diffusion
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        super().__init__(model=model, data=data, batch_size=batch_size, microbatch=microbatch, lr=lr,
                         ema_rate=ema_rate, log_interval=log_interval, save_interval=save_interval,
                         resume_checkpoint=resume_checkpoint, use_fp16=use_fp16,
                         fp16_scale_growth=fp16_scale_growth, weight_decay=weight_decay,
                         lr_anneal_steps=lr_anneal_steps, **kwargs)

    def compute_loss(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        t, weights = self.schedule_sampler.sample(batch.shape[0], batch.device, generator=self.rng)
        losses = self.diffusion.training_losses(self.ddp_model, batch, t, model_kwargs=cond)
        if isinstance(self.schedule_sampler, LossAwareSampler):
            self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
        log_loss_dict(self.diffusion, t, {k: v * weights for k, v in losses.items()})
        return (losses["loss"] * weights).mean()

    def extra_state(self) -> dict:
        return {"schedule_sampler": self.schedule_sampler.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        sampler_state: Optional[dict] = state.get("schedule_sampler")
        if sampler_state:
            self.schedule_sampler.load_state_dict(sampler_state)


__all__ = ["TrainLoop", "log_loss_dict"]
