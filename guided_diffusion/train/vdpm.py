"""Training the v-objective model (VDPM) on the shared :class:`~guided_diffusion.train.loop.Trainer`.

What the seed does and how it maps here:

- AdamW(lr, (beta1, beta2), weight_decay); linear lr warm-up min((k + 1) / warmup, 1) at optimizer step k;
  global gradient-norm clipping (``grad_norm``, 0 = off) on the all-reduced, accumulated gradient.
- EMA with the seed's warm-up: update n (1 for the first) uses decay min(ema_decay, (1 + n) / (10 + n)).
- Gradient accumulation: the Trainer's micro-batches (``microbatch`` = batch / num_accum), each loss weighted by its
  share of the batch, DDP's all-reduce only on the last one (no_sync on the others; the seed synced every one).
- Randomness of a step (label dropout, times, noise) is drawn for the whole per-rank batch *before* it is split,
  from a generator seeded by (seed, step, rank), so k micro-batches give the update of one batch and a resumed
  run draws what an uninterrupted one would. Classifier-free label dropout happens before the forward pass.
- Steps, not epochs: the Trainer counts optimizer steps; the script converts the seed's epoch intervals with
  ``steps_per_epoch`` and calls ``on_epoch(epoch)`` after the last step of each epoch.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from .. import logger
from ..data import load_data
from ..guidance.cfg import drop_labels
from ..vdpm import NULL_LABEL, model_labels
from .loop import Trainer

_TIMES, _NOISE = "_vdpm_t", "_vdpm_noise"


class VDPMTrainLoop(Trainer):
    """The VDPM objective (``diffusion.training_loss``) on the shared loop; see the module docstring.

    :param diffusion: a :class:`~guided_diffusion.diffusion.continuous.ContinuousDiffusion`.
    :param p_uncond: probability of replacing a label by the null label (0 for class k + 1, all-zero tags).
    :param betas: AdamW's (beta1, beta2).
    :param warmup: optimizer steps of linear lr warm-up (0: none).
    :param grad_norm: clip the global gradient norm to this (0: no clipping).
    :param ema_warmup: use the seed's EMA warm-up min(rate, (1 + n) / (10 + n)); False: the plain rate.
    :param steps_per_epoch, on_epoch: ``on_epoch(epoch)`` runs after step epoch * steps_per_epoch.
    """

    def __init__(self, *, diffusion, p_uncond: float = 0.0, betas: Tuple[float, float] = (0.9, 0.999),
                 warmup: int = 0, grad_norm: float = 0.0, ema_warmup: bool = True, steps_per_epoch: int = 0,
                 on_epoch: Optional[Callable[[int], None]] = None, **kwargs):
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"--p-uncond must lie in [0, 1], got {p_uncond}")
        if warmup < 0 or grad_norm < 0:
            raise ValueError("--warmup and --grad-norm must be >= 0")
        self.diffusion, self.p_uncond = diffusion, float(p_uncond)
        self.warmup, self.grad_norm, self.ema_warmup = int(warmup), float(grad_norm), bool(ema_warmup)
        self.steps_per_epoch, self.on_epoch = int(steps_per_epoch), on_epoch
        super().__init__(**kwargs)
        for group in self.opt.param_groups:
            group["betas"] = (float(betas[0]), float(betas[1]))

    @property
    def epoch(self) -> float:
        """Completed epochs (fractional)."""
        return self.total_steps / self.steps_per_epoch if self.steps_per_epoch else 0.0

    def _set_lr(self) -> None:
        lr = self.lr * min((self.total_steps + 1) / self.warmup, 1.0) if self.warmup else self.lr
        for group in self.opt.param_groups:
            group["lr"] = lr

    def ema_decay(self, rate: float) -> float:
        if not self.ema_warmup:
            return rate
        n = self.total_steps + 1  # this update's number, counting from 1
        return min(rate, (1.0 + n) / (10.0 + n))

    def forward_backward(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor]) -> None:
        # One generator for the whole per-rank batch (seeded from the step's seed through self.rng), drawn on
        # the CPU: the draws do not depend on the micro-batch split or on the device.
        gen = torch.Generator().manual_seed(int(self.rng.integers(0, 2 ** 63 - 1)))
        cond = dict(cond)
        if "y" in cond:
            cond["y"] = drop_labels(cond["y"], self.p_uncond, NULL_LABEL, gen)
        elif self.p_uncond > 0:
            raise ValueError("--p-uncond > 0 needs a conditional model (--use-cfg)")
        cond[_TIMES] = self.diffusion.sample_train_times(batch.shape[0], generator=gen)
        cond[_NOISE] = torch.randn(batch.shape, generator=gen, dtype=batch.dtype)
        super().forward_backward(batch, cond)
        if self.grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.mp_trainer.model_params, self.grad_norm)
            logger.logkv_mean("grad_norm_unclipped", float(norm))

    def compute_loss(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        times, noise = cond.pop(_TIMES), cond.pop(_NOISE)
        out = self.diffusion.training_loss(self.ddp_model, batch, cond.get("y"), t=times, noise=noise)
        logger.logkv_mean("loss", out["loss"].item())
        return out["loss"]

    def after_step(self) -> None:
        logger.logkv("epoch", round(self.epoch, 4))
        if self.on_epoch is not None and self.steps_per_epoch and self.total_steps % self.steps_per_epoch == 0:
            self.on_epoch(self.total_steps // self.steps_per_epoch)


def vdpm_batches(dataset, *, batch_size: int, seed: int, conditional: bool, num_workers: int = 0
                 ) -> Callable[[int], Iterator]:
    """``start_step -> iterator of (images, {"y": model labels} or {})`` over the resumable batch stream."""
    multitags = bool(getattr(dataset, "multilabel", False))

    def start(step: int):
        stream = load_data(data_dir="", batch_size=batch_size, image_size=dataset.image_size,
                           class_cond=conditional, seed=seed, start_step=step, num_workers=num_workers,
                           dataset=dataset)
        for images, cond in stream:
            yield images, ({"y": model_labels(cond["y"], multitags)} if conditional else {})

    return start


__all__ = ["VDPMTrainLoop", "vdpm_batches"]
