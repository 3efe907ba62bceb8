"""DDIM sampling (Song et al., 2021) over any denoiser, and its deterministic reverse step.

x_s = alpha_s * x0 + sqrt(sigma_s^2 - c^2) * eps + c * z with c = eta * sqrt(posterior variance):
eta = 0 is the deterministic DDIM, eta = 1 has the variance of ancestral sampling.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional

import torch

from ..denoisers import Denoiser
from ..trajectory import Trajectory
from ..guidance.gradient import CondFn, shift_score
from .common import NoiseFn, last, predict, run_chain


def ddim_step(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, index: torch.Tensor, *,
              eta: float = 0.0, clip_denoised: bool = True, denoised_fn: Optional[Callable] = None,
              cond_fn: Optional[CondFn] = None, model_kwargs: Optional[dict] = None,
              noise_fn: Optional[NoiseFn] = None, reverse: bool = False) -> Dict[str, torch.Tensor]:
    """One DDIM step from level ``index`` towards index - 1 (or index + 1 when ``reverse``, inversion).

    ``cond_fn`` shifts eps by -sigma * cond_fn(x, t) after x0 is clipped (ADM's DDIM guidance). The reverse
    step is deterministic (eta must be 0). Noise is drawn at every forward step, as ADM does.
    """
    if reverse and eta != 0:
        raise ValueError("DDIM inversion is deterministic: eta must be 0")
    model_kwargs = model_kwargs or {}
    level = trajectory.level(index)
    pred = predict(denoiser, x, level, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                   model_kwargs=model_kwargs)
    if cond_fn is not None:
        pred = shift_score(pred, x, level, cond_fn(x, denoiser.model_time(level), **model_kwargs))
    t = trajectory
    if reverse:
        target_alpha, target_sigma = t.take(t.next_alphas, index), t.take(t.next_sigmas, index)
        noise_scale = torch.zeros_like(target_sigma)
    else:
        target_alpha, target_sigma = t.take(t.prev_alphas, index), t.take(t.prev_sigmas, index)
        noise_scale = eta * t.take(t.posterior_variance, index).sqrt()
    eps_scale = (target_sigma ** 2 - noise_scale ** 2).clamp(min=0).sqrt()
    sample = level.coefficient(target_alpha, x) * pred.x0 + level.coefficient(eps_scale, x) * pred.eps
    if not reverse:
        noise = (noise_fn or torch.randn_like)(x)
        sample = sample + level.coefficient(noise_scale, x) * noise
    return {"sample": sample, "pred_xstart": pred.x0, "eps": pred.eps}


def ddim_loop(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, *, progress: bool = False,
              **step_kwargs) -> Iterator[Dict[str, torch.Tensor]]:
    """DDIM from ``x`` at the noisiest level down to clean data; yields every step's output dict."""
    return run_chain(lambda xt, i: ddim_step(denoiser, trajectory, xt, i, **step_kwargs),
                     trajectory, x, progress=progress)


def sample_ddim(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """DDIM sampling from ``x``; returns the final sample. Takes ``ddim_step``'s keywords."""
    return last(ddim_loop(denoiser, trajectory, x, **kwargs))

