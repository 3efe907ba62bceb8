"""Training the v-objective model (VDPM) on the shared :class:`~guided_diffusion.train.loop.Trainer`.

What the seed does and how it maps here:

- AdamW(lr, (beta1, beta2), weight_decay); linear lr warm-up min((k + 1) / warmup, 1) at optimizer step k
  (``linear_warmup_schedule``); global gradient-norm clipping (``grad_norm``, 0 = off) on the all-reduced,
  accumulated gradient.
- EMA with the seed's warm-up: update n (1 for the first) uses decay min(ema_decay, (1 + n) / (10 + n)).
- Gradient accumulation: the Trainer's micro-batches (``microbatch`` = batch / num_accum), each loss weighted
  by its share of the batch, DDP's all-reduce only on the last one (no_sync on the others; the seed synced
  every one).
- Randomness of a step is drawn for the whole per-rank batch *before* it is split, from the step's CPU
  generator (``StepRandom.torch``, seeded by (seed, step, rank)) in this order: label dropout (the Trainer's
  ``p_uncond``), times, noise (:class:`VObjective`). So k micro-batches give the update of one batch and a
  resumed run draws what an uninterrupted one would. Classifier-free label dropout happens before the forward
  pass.
- Steps, not epochs: the Trainer counts optimizer steps; the script converts the seed's epoch intervals with
  ``steps_per_epoch`` and calls ``on_epoch(epoch)`` after the last step of each epoch.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn

from .. import logger
from ..data import load_data
from ..train.loop import Trainer, linear_warmup_schedule, logger_dir
from ..train.objective import Draws, Objective, StepRandom
from . import NULL_LABEL, model_labels


class VObjective(Objective):
    """``diffusion.training_loss`` of a :class:`~guided_diffusion.diffusion.continuous.ContinuousDiffusion`,
    with times then noise drawn on the CPU from ``rng.torch`` (so they do not depend on the device);
    labels are ``cond[label_key]`` (absent: an unconditional model)."""

    def __init__(self, diffusion, label_key: str = "y"):
        self.diffusion, self.label_key = diffusion, label_key

    def draw(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor], rng: StepRandom) -> Draws:
        times = self.diffusion.sample_train_times(batch.shape[0], generator=rng.torch)
        noise = torch.randn(batch.shape, generator=rng.torch, dtype=batch.dtype)
        return {"t": times, "noise": noise}

    def loss(self, model: nn.Module, batch: torch.Tensor, cond: Dict[str, torch.Tensor],
             draws: Draws) -> torch.Tensor:
        out = self.diffusion.training_loss(model, batch, cond.get(self.label_key), t=draws["t"],
                                           noise=draws["noise"], label_key=self.label_key)
        logger.logkv_mean("loss", out["loss"].item())
        return out["loss"]


class VDPMTrainLoop(Trainer):
    """The VDPM objective on the shared loop (a :class:`Trainer` with a :class:`VObjective`); see the module
    docstring.

    :param diffusion: a :class:`~guided_diffusion.diffusion.continuous.ContinuousDiffusion`.
    :param p_uncond: probability of replacing a label by the null label (0 for class k + 1, all-zero tags).
    :param betas: AdamW's (beta1, beta2).
    :param warmup: optimizer steps of linear lr warm-up (0: none).
    :param grad_norm: clip the global gradient norm to this (0: no clipping).
    :param ema_warmup: use the seed's EMA warm-up min(rate, (1 + n) / (10 + n)); False: the plain rate.
    :param steps_per_epoch, on_epoch: ``on_epoch(epoch)`` runs after step epoch * steps_per_epoch.
    :param save_dir: the checkpoint folder; None: the logger's folder when the loop is built.
    """

    def __init__(self, *, diffusion, p_uncond: float = 0.0, betas: Tuple[float, float] = (0.9, 0.999),
                 warmup: int = 0, grad_norm: float = 0.0, ema_warmup: bool = True, steps_per_epoch: int = 0,
                 on_epoch: Optional[Callable[[int], None]] = None, lr: float = 1e-4,
                 save_dir: Optional[str] = None, **kwargs):
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"--p-uncond must lie in [0, 1], got {p_uncond}")
        if warmup < 0 or grad_norm < 0:
            raise ValueError("--warmup and --grad-norm must be >= 0")
        self.diffusion, self.warmup = diffusion, int(warmup)
        self.steps_per_epoch, self.on_epoch = int(steps_per_epoch), on_epoch
        super().__init__(objective=VObjective(diffusion), p_uncond=p_uncond, null_label=NULL_LABEL,
                         betas=betas, lr=lr, lr_schedule=linear_warmup_schedule(lr, self.warmup),
                         max_grad_norm=grad_norm, ema_warmup=ema_warmup, save_dir=save_dir or logger_dir(),
                         **kwargs)

    @property
    def epoch(self) -> float:
        """Completed epochs (fractional)."""
        return self.total_steps / self.steps_per_epoch if self.steps_per_epoch else 0.0

    def after_step(self) -> None:
        logger.logkv("epoch", round(self.epoch, 4))
        per_epoch = self.steps_per_epoch
        if self.on_epoch is not None and per_epoch and self.total_steps % per_epoch == 0:
            self.on_epoch(self.total_steps // per_epoch)


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


__all__ = ["VDPMTrainLoop", "VObjective", "vdpm_batches"]
