"""Gradient guidance inside the denoiser, so any sampler (DDIM, ancestral, Heun) is guided.

``GradientGuidedDenoiser`` applies a guide as a score shift, eps' = eps - sigma_t * g, x0 re-derived: the score
of p(x_t) p(y | x_t)^s. (The ancestral samplers' own ``guide=`` argument shifts the step mean instead, ADM's
rule for DDPM; see :mod:`guided_diffusion.samplers`.)
"""

from __future__ import annotations

from typing import Optional

import torch

from ..denoisers import DenoiserWrapper, Prediction, shift_score
from ..timesteps import NoiseLevel, TimestepRange
from .guides import as_guide


class GradientGuidedDenoiser(DenoiserWrapper):
    """Applies a guide as a score shift inside the denoiser.

    ``guide`` is a :class:`~guided_diffusion.guidance.guides.Guide`; a plain callable is taken as an ADM
    cond_fn reading train indices (an error on levels of another unit). ``active`` optionally restricts
    guidance to a timestep range (in any unit; the level is converted).
    """

    def __init__(self, inner, guide, active: Optional[TimestepRange] = None):
        super().__init__(inner)
        self.guide = as_guide(guide)
        self.active = active

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        pred = self.inner(x, level, **model_kwargs)
        if self.active is not None and not bool(self.active.contains(level).all()):
            return pred
        return shift_score(pred, x, level, self.guide(x, level, **model_kwargs))
