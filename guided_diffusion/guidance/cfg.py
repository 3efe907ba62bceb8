"""Classifier-free guidance: the sampling-time combination (a denoiser wrapper) and the training-time label dropout.

Two conventions are in use and both are named here:

- **on eps** (``ClassifierFreeGuidance.on_eps``): eps = uncond + s * (cond - uncond), applied to the raw
  predictions (x0 follows, the combination being affine); samplers clip the guided x0 afterwards. ADM lineage,
  DiT, diffusers' ``guidance_scale``. s = 1 is the conditional model.
- **on the posterior mean** (``ClassifierFreeGuidance.on_posterior_mean``): mean = (1 + w) * mean_cond -
  w * mean_uncond, where each branch's mean is built from its own *clipped* x0 (Ho & Salimans' form as the VDPM
  seed implements it). Both means share x_t and the step's coefficients, so this is x0 = (1 + w) * clip(x0_cond)
  - w * clip(x0_uncond), which is not clipped again. w = 0 is the conditional model.

Without clipping the two agree with s = 1 + w; with clipping they differ wherever a branch leaves [-1, 1].
"""

from __future__ import annotations

from typing import Optional

import torch

from ..denoisers import DenoiserWrapper, Prediction
from ..labels import drop_labels, null_label_fn, null_labels_like  # noqa: F401 (re-exported)
from ..timesteps import NoiseLevel, TimestepRange

GUIDANCE_TARGETS = ("eps", "posterior_mean")


class ClassifierFreeGuidance(DenoiserWrapper):
    """Combines a conditional and an unconditional prediction of the same denoiser.

    Give exactly one of ``scale`` (s: uncond + s * (cond - uncond)) or ``w`` ((1 + w) * cond - w * uncond);
    s = 1 + w. ``on`` says where the combination acts: "eps" (the raw predictions) or "posterior_mean" (each
    branch's x0 clipped to [-1, 1] first when the model's x0 is clipped (``inner.clip_denoised``), the result
    then marked ``x0_final`` so samplers do not clip it again; see the module docstring). A learned variance
    is taken from the conditional prediction.

    :param uncond_kwargs: model_kwargs that replace the conditional ones for the unconditional pass
        (e.g. ``{"y": null_labels}``); a callable value maps the conditional value to the unconditional one
        (``{"y": null_label_fn(0)}``), so one guided denoiser serves every batch.
    :param active: guide only inside this timestep range (any unit); outside it the conditional prediction
        is returned with a single model call.
    :param channels: guide only the first k channels of eps and keep the conditional prediction's others
        (DiT's sampler guides 3 of the 4 latent channels).

    Both branches run as one call on a doubled batch when every per-sample model input can be stacked;
    inputs that are not per-sample (None, a shared tensor, a number: e.g. an extra branch's switch) are
    passed once to both halves when they are the same object in both, otherwise the branches run as two calls.
    """

    def __init__(self, inner, *, uncond_kwargs: dict, scale: Optional[float] = None, w: Optional[float] = None,
                 active: Optional[TimestepRange] = None, on: str = "eps", channels: Optional[int] = None):
        super().__init__(inner)
        if (scale is None) == (w is None):
            raise ValueError("give exactly one of scale (uncond + s*(cond-uncond)) or w ((1+w)*cond - w*uncond)")
        if on not in GUIDANCE_TARGETS:
            raise ValueError(f"on must be one of {', '.join(GUIDANCE_TARGETS)}, got {on!r}")
        if channels is not None and (on != "eps" or channels < 1):
            raise ValueError("channels (guide only the first k channels) needs on='eps' and k >= 1")
        self.scale = float(scale) if scale is not None else 1.0 + float(w)
        self.uncond_kwargs = dict(uncond_kwargs)
        self.active = active
        self.on = on
        self.channels = channels

    @property
    def w(self) -> float:
        """The same strength in the (1 + w) * cond - w * uncond convention."""
        return self.scale - 1.0

    @classmethod
    def on_eps(cls, inner, scale: float, *, uncond_kwargs: dict, active: Optional[TimestepRange] = None,
               channels: Optional[int] = None) -> "ClassifierFreeGuidance":
        """uncond + scale * (cond - uncond) on the raw predictions (ADM/DiT convention; scale 1 = conditional)."""
        return cls(inner, uncond_kwargs=uncond_kwargs, scale=scale, active=active, on="eps", channels=channels)

    @classmethod
    def on_posterior_mean(cls, inner, w: float, *, uncond_kwargs: dict,
                          active: Optional[TimestepRange] = None) -> "ClassifierFreeGuidance":
        """(1 + w) * cond - w * uncond on the posterior mean built from clipped x0 (VDPM; w = 0 = conditional)."""
        return cls(inner, uncond_kwargs=uncond_kwargs, w=w, active=active, on="posterior_mean")

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        if self.active is not None and not bool(self.active.contains(level).all()):
            return self.inner(x, level, **model_kwargs)
        cond, uncond = self._cond_and_uncond(x, level, model_kwargs)
        s = self.scale
        if self.on == "posterior_mean":
            # Each branch's posterior mean is built from its own x0, clipped when the model's x0 is clipped.
            clip = self.inner.clip_denoised
            x0_cond = cond.x0.clamp(-1, 1) if clip else cond.x0
            x0_uncond = uncond.x0.clamp(-1, 1) if clip else uncond.x0
            return Prediction.from_x0(x, level, x0_uncond + s * (x0_cond - x0_uncond), var_values=cond.var_values,
                                      var_kind=cond.var_kind, x0_final=clip)
        if self.channels is not None:
            k = self.channels
            eps = torch.cat([uncond.eps[:, :k] + s * (cond.eps[:, :k] - uncond.eps[:, :k]), cond.eps[:, k:]], 1)
            return Prediction.from_eps(x, level, eps, var_values=cond.var_values, var_kind=cond.var_kind)
        x0 = uncond.x0 + s * (cond.x0 - uncond.x0)
        eps = uncond.eps + s * (cond.eps - uncond.eps)
        return Prediction(x0=x0, eps=eps, var_values=cond.var_values, var_kind=cond.var_kind)

    def _cond_and_uncond(self, x, level, model_kwargs):
        unknown = set(self.uncond_kwargs) - set(model_kwargs)
        if unknown:
            raise ValueError(f"uncond_kwargs name {sorted(unknown)}, which the conditional call does not pass")
        uncond_kwargs = dict(model_kwargs)
        for key, value in self.uncond_kwargs.items():
            uncond_kwargs[key] = value(model_kwargs[key]) if callable(value) else value
        n = x.shape[0]
        stacked = {}
        for key, c in model_kwargs.items():
            u = uncond_kwargs[key]
            tensors = isinstance(c, torch.Tensor), isinstance(u, torch.Tensor)
            if all(tensors) and c.shape[:1] == u.shape[:1] == (n,):
                stacked[key] = torch.cat([c, u])
            elif c is u or (not any(tensors) and c == u):
                stacked[key] = c  # not per-sample and the same in both branches: shared by the doubled batch
            else:
                return self.inner(x, level, **model_kwargs), self.inner(x, level, **uncond_kwargs)
        # One model call on a doubled batch: conditional first, unconditional second.
        both = self.inner(torch.cat([x, x]), level.repeat(2), **stacked)
        return both.map(lambda v: v[:n]), both.map(lambda v: v[n:])
