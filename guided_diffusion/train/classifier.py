"""Training ADM's noisy classifier: cross-entropy on q_sample(x0, t), logged per quarter of the steps."""

from __future__ import annotations

from typing import Dict, Iterator, Optional

import torch
import torch.nn.functional as F

from .. import dist_util
from .diffusion import log_loss_dict
from .loop import Trainer
from .resample import UniformSampler


def accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-example 1.0/0.0: is the label among the top ``k`` logits."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).float()


class ClassifierTrainLoop(Trainer):
    """``noised=False`` trains a clean classifier (t = 0, inputs untouched)."""

    def __init__(self, *, model, diffusion, data, val_data: Optional[Iterator] = None, noised: bool = True,
                 eval_interval: int = 5, schedule_sampler=None, initial_lg_loss_scale: float = 16.0, **kwargs):
        self.diffusion, self.noised, self.eval_interval = diffusion, noised, eval_interval
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.val_data = val_data
        super().__init__(model=model, data=data, initial_lg_loss_scale=initial_lg_loss_scale, **kwargs)

    def _losses(self, batch, cond, model, prefix: str) -> torch.Tensor:
        labels = cond["y"]
        if self.noised:
            t, _ = self.schedule_sampler.sample(batch.shape[0], batch.device, generator=self.rng)
            batch = self.diffusion.q_sample(batch, t)
        else:
            t = torch.zeros(batch.shape[0], dtype=torch.long, device=batch.device)
        logits = model(batch, timesteps=t)
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        log_loss_dict(self.diffusion, t, {"loss": loss.detach(), "acc@1": accuracy(logits, labels, 1),
                                          "acc@5": accuracy(logits, labels, 5)}, prefix=prefix)
        return loss.mean()

    def compute_loss(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self._losses(batch, cond, self.ddp_model, "train_")

    def after_step(self) -> None:
        if self.val_data is None or self.total_steps % self.eval_interval:
            return
        batch, cond = next(self.val_data)
        self.model.eval()
        with torch.no_grad(), self.mp_trainer.autocast():
            for i in range(0, batch.shape[0], self.microbatch):
                sub = batch[i:i + self.microbatch].to(dist_util.dev())
                sub_cond = {k: v[i:i + self.microbatch].to(dist_util.dev()) for k, v in cond.items()}
                self._losses(sub, sub_cond, self.model, "val_")
        self.model.train()


__all__ = ["ClassifierTrainLoop", "accuracy"]
