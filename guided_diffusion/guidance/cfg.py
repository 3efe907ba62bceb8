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

from typing import Optional, Union

import torch

from ..denoisers import DenoiserWrapper, Prediction
from ..timesteps import NoiseLevel, TimestepRange

GUIDANCE_TARGETS = ("eps", "posterior_mean")


class ClassifierFreeGuidance(DenoiserWrapper):
    """Combines a conditional and an unconditional prediction of the same denoiser.

    Give exactly one of ``scale`` (s: uncond + s * (cond - uncond)) or ``w`` ((1 + w) * cond - w * uncond);
    s = 1 + w. ``on`` says where the combination acts: "eps" (the raw predictions) or "posterior_mean" (each
    branch's x0 clipped to [-1, 1] first, the result marked ``x0_final`` so samplers do not clip it again;
    see the module docstring). A learned variance is taken from the conditional prediction.

    :param uncond_kwargs: model_kwargs that replace the conditional ones for the unconditional pass
        (e.g. ``{"y": null_labels}``).
    :param active: guide only inside this timestep range (any unit); outside it the conditional prediction
        is returned with a single model call.
    """

    def __init__(self, inner, *, uncond_kwargs: dict, scale: Optional[float] = None, w: Optional[float] = None,
                 active: Optional[TimestepRange] = None, on: str = "eps"):
        super().__init__(inner)
        if (scale is None) == (w is None):
            raise ValueError("give exactly one of scale (uncond + s*(cond-uncond)) or w ((1+w)*cond - w*uncond)")
        if on not in GUIDANCE_TARGETS:
            raise ValueError(f"on must be one of {', '.join(GUIDANCE_TARGETS)}, got {on!r}")
        self.scale = float(scale) if scale is not None else 1.0 + float(w)
        self.uncond_kwargs = dict(uncond_kwargs)
        self.active = active
        self.on = on

    @property
    def w(self) -> float:
        """The same strength in the (1 + w) * cond - w * uncond convention."""
        return self.scale - 1.0

    @classmethod
    def on_eps(cls, inner, scale: float, *, uncond_kwargs: dict,
               active: Optional[TimestepRange] = None) -> "ClassifierFreeGuidance":
        """uncond + scale * (cond - uncond) on the raw predictions (ADM/DiT convention; scale 1 = conditional)."""
        return cls(inner, uncond_kwargs=uncond_kwargs, scale=scale, active=active, on="eps")

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
            x0_cond, x0_uncond = cond.x0.clamp(-1, 1), uncond.x0.clamp(-1, 1)
            return Prediction.from_x0(x, level, x0_uncond + s * (x0_cond - x0_uncond), var_values=cond.var_values,
                                      var_kind=cond.var_kind, x0_final=True)
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


def null_labels_like(labels: torch.Tensor, null_label: Union[int, float] = 0) -> torch.Tensor:
    """The null ("no condition") labels for a batch: ``null_label`` in every entry.

    For multi-tag labels (N, K) with null_label 0 this is the all-zero tag vector (VDPM's CelebA convention).
    """
    return torch.full_like(labels, null_label)


def drop_labels(labels: torch.Tensor, p_uncond: float, null_label: Union[int, float] = 0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Classifier-free training: replace each sample's label by ``null_label`` with probability ``p_uncond``.

    Call it *before* the forward pass so the unconditional branch is trained (VDPM's HEAD masked the labels
    after the forward, which trained nothing). Multi-tag rows (labels of shape (N, K)) are nulled as a whole.
    Which rows drop is decided by N uniform draws from ``generator`` (the global RNG when None); with
    p_uncond = 0 nothing is drawn and the labels are returned unchanged.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    if p_uncond == 0.0:
        return labels
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape[0], generator=generator, device=device).to(labels.device) < p_uncond
    drop = drop.reshape(-1, *([1] * (labels.ndim - 1)))
    return torch.where(drop, null_labels_like(labels, null_label), labels)
