"""Gradient guidance: how a gradient of log p(y | x_t) changes a prediction or a sampling step.

A ``cond_fn(x, t, **model_kwargs)`` (ADM's contract) returns s * grad_x log p(y | x_t), already scaled,
where ``t`` is the model's own time input (ADM: the original train index). Two ways to apply it:

- score shift (ADM's DDIM path, and any sampler through :class:`GradientGuidedDenoiser`):
  eps' = eps - sigma_t * g, x0 re-derived from eps'. This is the score of p(x_t) p(y | x_t)^s.
- mean shift (ADM's ancestral path): mean' = mean + Sigma * g with Sigma the step's variance.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..denoisers import DenoiserWrapper, Prediction
from ..timesteps import NoiseLevel, TimestepRange

CondFn = Callable[..., torch.Tensor]


def shift_score(pred: Prediction, x: torch.Tensor, level: NoiseLevel, grad: torch.Tensor) -> Prediction:
    """eps' = eps - sigma * grad; x0' follows from eps' (not clipped again)."""
    return pred.with_eps(x, level, pred.eps - level.coefficient(level.sigma, x) * grad)


def shift_mean(mean: torch.Tensor, variance: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """mean' = mean + variance * grad (in float32, as the reference does)."""
    return mean.float() + variance * grad.float()


class GradientGuidedDenoiser(DenoiserWrapper):
    """Applies a cond_fn as a score shift inside the denoiser, so any sampler (DDIM, ancestral, Heun) is guided.

    ``active`` optionally restricts guidance to a timestep range (in any unit; the level is converted).
    """

    def __init__(self, inner, cond_fn: CondFn, active: Optional[TimestepRange] = None):
        super().__init__(inner)
        self.cond_fn = cond_fn
        self.active = active

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        pred = self.inner(x, level, **model_kwargs)
        if self.active is not None and not bool(self.active.contains(level).all()):
            return pred
        grad = self.cond_fn(x, self.inner.model_time(level), **model_kwargs)
        return shift_score(pred, x, level, grad)
