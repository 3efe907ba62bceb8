"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method with optional churn,
and its first-order (Euler) variant, as plain functions over any denoiser and any trajectory.

The probability-flow ODE is solved in u = x / alpha against rho = sigma / alpha (EDM's sigma):
du/drho = (u - D(u; rho)) / rho with D the denoised estimate. On a variance-exploding trajectory (alpha = 1)
this is EDM's algorithm as written; on a variance-preserving one it is EDM's scaled ODE with s(t) = alpha.
Each step optionally "churns" first: rho_hat = rho (1 + gamma) with gamma = min(S_churn / N, sqrt(2) - 1)
while S_min <= rho <= S_max, and u_hat = u + sqrt(rho_hat^2 - rho^2) S_noise z. The churned level is on no
grid: the denoiser is asked at NoiseLevel.at(1, rho_hat) and maps it to its own network time.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, Optional

import torch

from ..denoisers import Denoiser
from ..timesteps import NoiseLevel
from ..trajectory import Trajectory
from .common import NoiseFn, last, predict, run_chain

def _denoised(denoiser, u: torch.Tensor, level: NoiseLevel, clip_denoised, model_kwargs) -> torch.Tensor:
    """D(u; rho): the denoiser's x0 for u = x / alpha at ``level``."""
    x = u * level.coefficient(level.alpha, u)
    return predict(denoiser, x, level, clip_denoised=clip_denoised, model_kwargs=model_kwargs).x0

def heun_step(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, index: torch.Tensor, *,
              s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
              second_order: bool = True, clip_denoised: Optional[bool] = False,
              model_kwargs: Optional[dict] = None, noise_fn: Optional[NoiseFn] = None) -> Dict[str, torch.Tensor]:
    """One step from level ``index`` to ``index - 1`` (the final level after level 0).

    ``s_churn``, ``s_tmin``, ``s_tmax`` (EDM sigma units), ``s_noise``: EDM's S_churn, S_min, S_max, S_noise;
    gamma uses N = len(trajectory). Noise is drawn at every step, churned or not, as EDM does. The Heun
    correction is skipped where the next level is clean (EDM's last step is Euler). ``clip_denoised``: False
    by default (EDM does not clip); None asks the denoiser.
    """
    model_kwargs = model_kwargs or {}
    t, n = trajectory, x.shape[0]
    level = t.level(index)
    if bool((index == 0).all()):
        target = t.final_level(n, device=level.alpha.device)
    elif bool((index == 0).any()):
        raise ValueError("all samples of a batch must be at the same step")
    else:
        target = t.level(index - 1)
    rho, rho_next = level.edm_sigma, target.edm_sigma
    u = x * level.coefficient(1.0 / level.alpha, x)
    churning = s_churn > 0 and bool(((rho >= s_tmin) & (rho <= s_tmax)).all())
    gamma = min(s_churn / len(t), math.sqrt(2.0) - 1.0) if churning else 0.0
    z = (noise_fn or torch.randn_like)(x)
    if gamma > 0:
        rho_hat = rho * (1.0 + gamma)
        u = u + level.coefficient((rho_hat ** 2 - rho ** 2).sqrt() * s_noise, u) * z
        level = NoiseLevel.at(torch.ones_like(rho_hat), rho_hat)
    rho_hat = level.edm_sigma
    denoised = _denoised(denoiser, u, level, clip_denoised, model_kwargs)
    slope = (u - denoised) / level.coefficient(rho_hat, u)
    step = level.coefficient(rho_next - rho_hat, u)
    u_next = u + step * slope
    if second_order and bool((rho_next > 0).all()):
        denoised_next = _denoised(denoiser, u_next, target, clip_denoised, model_kwargs)
        slope_next = (u_next - denoised_next) / target.coefficient(rho_next, u)
        u_next = u + step * (0.5 * slope + 0.5 * slope_next)
    return {"sample": u_next * target.coefficient(target.alpha, u), "pred_xstart": denoised,
            "edm_sigma_hat": rho_hat}

def heun_loop(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, *, progress: bool = False,
              **step_kwargs) -> Iterator[Dict[str, torch.Tensor]]:
    """Heun (or Euler with ``second_order=False``) from ``x`` at the noisiest level; yields every step."""
    return run_chain(lambda xt, i: heun_step(denoiser, trajectory, xt, i, **step_kwargs),
                     trajectory, x, progress=progress)

def sample_heun(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """EDM's Heun sampler from ``x``; returns the final sample. Takes ``heun_step``'s keywords.

    Start from x = trajectory.prior_std * N(0, I) (sigma_max * N(0, I) on EDM's grid).
    """
    return last(heun_loop(denoiser, trajectory, x, **kwargs))

def sample_euler(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """The first-order (Euler) variant of :func:`sample_heun` (deterministic Euler = DDIM in u, rho)."""
    return sample_heun(denoiser, trajectory, x, second_order=False, **kwargs)
