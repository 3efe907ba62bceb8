"""Classifier-free guidance as a denoiser wrapper."""

from __future__ import annotations

from typing import Optional

import torch

from ..denoisers import DenoiserWrapper, Prediction
from ..timesteps import NoiseLevel, TimestepRange


class ClassifierFreeGuidance(DenoiserWrapper):
    """Combines a conditional and an unconditional prediction of the same denoiser.

    Two conventions name the same family of guided predictions; give exactly one:
    - ``scale`` s: uncond + s * (cond - uncond) (ADM lineage, DiT, diffusers' guidance_scale);
    - ``w``: (1 + w) * cond - w * uncond (Ho & Salimans' original form); s = 1 + w.
    s = 1 (w = 0) is the plain conditional model. Both x0 and eps are combined (the combination is affine, so
    they stay consistent); a learned variance is taken from the conditional prediction.

    :param uncond_kwargs: model_kwargs that replace the conditional ones for the unconditional pass
        (e.g. ``{"y": null_labels}``).
    :param active: guide only inside this timestep range (any unit); outside it the conditional prediction
        is returned with a single model call.
    """

    def __init__(self, inner, *, uncond_kwargs: dict, scale: Optional[float] = None, w: Optional[float] = None,
                 active: Optional[TimestepRange] = None):
        super().__init__(inner)
        if (scale is None) == (w is None):
            raise ValueError("give exactly one of scale (uncond + s*(cond-uncond)) or w ((1+w)*cond - w*uncond)")
        self.scale = float(scale) if scale is not None else 1.0 + float(w)
        self.uncond_kwargs = dict(uncond_kwargs)
        self.active = active

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        if self.active is not None and not bool(self.active.contains(level).all()):
            return self.inner(x, level, **model_kwargs)
        cond, uncond = self._cond_and_uncond(x, level, model_kwargs)
        s = self.scale
        x0 = uncond.x0 + s * (cond.x0 - uncond.x0)
        eps = uncond.eps + s * (cond.eps - uncond.eps)
        return Prediction(x0=x0, eps=eps, var_values=cond.var_values, var_kind=cond.var_kind)

    def _cond_and_uncond(self, x, level, model_kwargs):
        unknown = set(self.uncond_kwargs) - set(model_kwargs)
        if unknown:
            raise ValueError(f"uncond_kwargs name {sorted(unknown)}, which the conditional call does not pass")
        uncond_kwargs = {**model_kwargs, **self.uncond_kwargs}
        n = x.shape[0]
        batchable = all(isinstance(v, torch.Tensor) and v.shape[:1] == (n,)
                        for v in list(model_kwargs.values()) + list(uncond_kwargs.values()))
        if not batchable:
            return self.inner(x, level, **model_kwargs), self.inner(x, level, **uncond_kwargs)
        # One model call on a doubled batch: conditional first, unconditional second.
        both = self.inner(torch.cat([x, x]), level.repeat(2),
                          **{k: torch.cat([model_kwargs[k], uncond_kwargs[k]]) for k in model_kwargs})
        return both.map(lambda v: v[:n]), both.map(lambda v: v[n:])
