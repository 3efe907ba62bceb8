"""Training objectives: what an optimizer step draws at random, and how a micro-batch becomes a loss.

The :class:`~guided_diffusion.train.loop.Trainer` calls :meth:`Objective.draw` once per optimizer step with
the whole per-rank batch, then :meth:`Objective.loss` once per micro-batch with the batch, the conditioning
and the draws sliced to that micro-batch (and moved to the device). Because every random number of a step is
drawn before the batch is split, k micro-batches make the update of one batch, and a resumed run draws what
an uninterrupted one would.

Seeds: the Trainer seeds the global torch RNG and a numpy Generator from ``step_seed(seed, step, rank)``
before each step; the numpy Generator (and a CPU torch Generator derived from it) reach the objective as a
:class:`StepRandom`. So (seed, step, rank) determines every timestep, weight, noise tensor and dropped label.
"""

from __future__ import annotations

import abc
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import dist_util, logger
from .resample import LossAwareSampler, ScheduleSampler, UniformSampler

Draws = Dict[str, torch.Tensor]


class StepRandom:
    """The random streams of one optimizer step on one rank.

    ``numpy``: the step's ``np.random.Generator``. ``torch``: a CPU ``torch.Generator`` seeded from one
    draw of ``numpy`` the first time it is read, so an objective that never reads it leaves the numpy
    stream exactly as it was (the ADM objectives draw from ``numpy`` only).
    """

    def __init__(self, numpy_rng: np.random.Generator):
        self.numpy = numpy_rng
        self._torch: Optional[torch.Generator] = None

    @classmethod
    def from_seed(cls, seed: int) -> "StepRandom":
        """The streams of ``np.random.default_rng(seed)`` (the Trainer passes step_seed(seed, step, rank))."""
        return cls(np.random.default_rng(seed))

    @property
    def torch(self) -> torch.Generator:
        if self._torch is None:
            self._torch = torch.Generator().manual_seed(int(self.numpy.integers(0, 2 ** 63 - 1)))
        return self._torch


class Objective(abc.ABC):
    """How a batch becomes a loss. Subclasses implement ``loss`` and, if the loss is random, ``draw``."""

    def draw(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor], rng: StepRandom) -> Draws:
        """The randomness of one step for the whole per-rank ``batch`` (on the CPU, as the data gave it):
        tensors whose first dimension is the batch size. Default: nothing random."""
        return {}

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: torch.Tensor, cond: Dict[str, torch.Tensor],
             draws: Draws) -> torch.Tensor:
        """The mean loss of one micro-batch (on the device, inside the autocast context), given its slice of
        the step's draws. ``model`` is the (DDP-wrapped) network being trained."""

    def state_dict(self) -> dict:
        """State to store in ``train_stateNNNNNN.pt`` for an exact resume (e.g. a loss-aware sampler's
        history). Its keys sit beside the Trainer's own (step, seed, ...) and must not reuse them."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 (stateless objectives have nothing to load)
        """Restore what ``state_dict`` returned (``state`` lacks keys an older checkpoint did not store)."""


def log_loss_dict(diffusion, ts: torch.Tensor, losses: Dict[str, torch.Tensor], prefix: str = "") -> None:
    """Log each loss's mean, and its mean per quarter of the diffusion steps (``loss_q0`` ... ``loss_q3``)."""
    for key, values in losses.items():
        logger.logkv_mean(prefix + key, values.float().mean().item())
        for t, v in zip(ts.cpu().numpy(), values.detach().float().cpu().numpy()):
            quartile = int(4 * t / diffusion.num_timesteps)
            logger.logkv_mean(f"{prefix}{key}_q{quartile}", v)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-example 1.0/0.0: is the label among the top ``k`` logits."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).float()


def _timesteps_and_noise(sampler: ScheduleSampler, batch: torch.Tensor, rng: StepRandom) -> Draws:
    """t and importance weights from ``sampler`` with ``rng.numpy``, then the q_sample noise from the global
    torch RNG on the device (the order, streams and device ADM's loop used)."""
    t, weights = sampler.sample(batch.shape[0], dist_util.dev(), generator=rng.numpy)
    noise = torch.randn_like(batch, device=dist_util.dev())
    return {"t": t, "weights": weights, "noise": noise}


class DiffusionObjective(Objective):
    """ADM's loss: mean of ``diffusion.training_losses(...)["loss"] * weights`` at timesteps from
    ``schedule_sampler`` (uniform when None), with importance weights making it the uniform-t loss."""

    def __init__(self, diffusion, schedule_sampler: Optional[ScheduleSampler] = None):
        self.diffusion = diffusion
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)

    def draw(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor], rng: StepRandom) -> Draws:
        return _timesteps_and_noise(self.schedule_sampler, batch, rng)

    def loss(self, model: nn.Module, batch: torch.Tensor, cond: Dict[str, torch.Tensor],
             draws: Draws) -> torch.Tensor:
        t, weights = draws["t"], draws["weights"]
        losses = self.diffusion.training_losses(model, batch, t, model_kwargs=cond, noise=draws["noise"])
        if isinstance(self.schedule_sampler, LossAwareSampler):
            self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
        log_loss_dict(self.diffusion, t, {k: v * weights for k, v in losses.items()})
        return (losses["loss"] * weights).mean()

    def state_dict(self) -> dict:
        return {"schedule_sampler": self.schedule_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("schedule_sampler"):
            self.schedule_sampler.load_state_dict(state["schedule_sampler"])


class ClassifierObjective(Objective):
    """ADM's noisy classifier: cross-entropy of ``model(q_sample(x0, t), timesteps=t)`` against ``cond["y"]``
    with t from ``schedule_sampler`` (its weights unused), logged per quarter of the steps with acc@1/acc@5.
    ``noised=False`` trains a clean classifier (t = 0, inputs untouched, nothing drawn)."""

    def __init__(self, diffusion, schedule_sampler: Optional[ScheduleSampler] = None, noised: bool = True):
        self.diffusion, self.noised = diffusion, noised
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)

    def draw(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor], rng: StepRandom) -> Draws:
        if not self.noised:
            return {}
        draws = _timesteps_and_noise(self.schedule_sampler, batch, rng)
        del draws["weights"]
        return draws

    def loss(self, model: nn.Module, batch: torch.Tensor, cond: Dict[str, torch.Tensor], draws: Draws,
             prefix: str = "train_") -> torch.Tensor:
        """``prefix`` names the logged values (``train_loss``, ``val_acc@1``, ...)."""
        labels = cond["y"]
        if self.noised:
            t = draws["t"]
            batch = self.diffusion.q_sample(batch, t, noise=draws["noise"])
        else:
            t = torch.zeros(batch.shape[0], dtype=torch.long, device=batch.device)
        logits = model(batch, timesteps=t)
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        log_loss_dict(self.diffusion, t, {"loss": loss.detach(), "acc@1": accuracy(logits, labels, 1),
                                          "acc@5": accuracy(logits, labels, 5)}, prefix=prefix)
        return loss.mean()

    def state_dict(self) -> dict:
        return {"schedule_sampler": self.schedule_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("schedule_sampler"):
            self.schedule_sampler.load_state_dict(state["schedule_sampler"])


__all__ = ["Objective", "StepRandom", "Draws", "DiffusionObjective", "ClassifierObjective", "log_loss_dict",
           "accuracy"]
