"""Timestep samplers for training: which t each example is noised to, with importance weights.

``sample`` returns (indices, weights) with weights = 1 / (T p_t), so the weighted loss is an unbiased
estimate of the uniform-t loss whatever p is. Randomness comes from the ``generator`` passed in, so a
resumed run draws the same timesteps as an uninterrupted one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist


def create_named_schedule_sampler(name: str, diffusion) -> "ScheduleSampler":
    """"uniform" or "loss-second-moment" (ADM's names)."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(f"unknown schedule sampler {name!r}; use uniform or loss-second-moment")


class ScheduleSampler(ABC):
    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalised, positive sampling weights, one per diffusion step."""

    def sample(self, batch_size: int, device, generator: Optional[np.random.Generator] = None):
        rng = generator if generator is not None else np.random.default_rng()
        w = self.weights()
        p = w / np.sum(w)
        indices = rng.choice(len(p), size=(batch_size,), p=p)
        weights = 1 / (len(p) * p[indices])
        return (torch.from_numpy(indices).long().to(device), torch.from_numpy(weights).float().to(device))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 (stateless samplers have nothing to load)
        pass


class UniformSampler(ScheduleSampler):
    def __init__(self, diffusion):
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Gather every rank's (t, loss) pairs so all ranks keep the same history, then record them."""
        ts, losses = local_ts.detach().cpu().long(), local_losses.detach().cpu().double()
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (ts.tolist(), losses.tolist()))
            ts = [t for g in gathered for t in g[0]]
            losses = [x for g in gathered for x in g[1]]
        else:
            ts, losses = ts.tolist(), losses.tolist()
        self.update_with_all_losses(ts, losses)

    @abstractmethod
    def update_with_all_losses(self, ts, losses) -> None:
        ...


class LossSecondMomentResampler(LossAwareSampler):
    """p_t ∝ sqrt(E[loss_t²]) once every t has ``history_per_term`` losses, mixed with a little uniform."""

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion, self.history_per_term, self.uniform_prob = diffusion, history_per_term, uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self) -> np.ndarray:
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        w = np.sqrt(np.mean(self._loss_history ** 2, axis=-1))
        w /= np.sum(w)
        w *= 1 - self.uniform_prob
        w += self.uniform_prob / len(w)
        return w

    def update_with_all_losses(self, ts, losses) -> None:
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]  # drop the oldest
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())

    def state_dict(self) -> dict:
        return {"loss_history": torch.from_numpy(self._loss_history.copy()),
                "loss_counts": torch.from_numpy(self._loss_counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        self._loss_history = state["loss_history"].numpy().astype(np.float64)
        self._loss_counts = state["loss_counts"].numpy().astype(np.int64)


__all__ = ["create_named_schedule_sampler", "ScheduleSampler", "UniformSampler", "LossAwareSampler",
           "LossSecondMomentResampler"]
