"""DDIM sampling (Song et al., 2021) over any denoiser, its deterministic reverse step, and DDIM inversion.

x_s = alpha_s * x0 + sqrt(sigma_s^2 - c^2) * eps + c * z with c = eta * sqrt(posterior variance):
eta = 0 is the deterministic DDIM, eta = 1 has the variance of ancestral sampling. In u = x / alpha and
rho = sigma / alpha, deterministic DDIM is exactly Euler's method for the probability-flow ODE
du/drho = eps(u, rho), on any trajectory.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional

import torch
from tqdm.auto import tqdm

from ..denoisers import Denoiser, shift_score
from ..trajectory import Trajectory
from .common import Guide, NoiseFn, last, predict, run_chain

EPS_AT = ("next", "current")


def ddim_step(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, index: torch.Tensor, *,
              eta: float = 0.0, clip_denoised: Optional[bool] = None, denoised_fn: Optional[Callable] = None,
              guide: Optional[Guide] = None, model_kwargs: Optional[dict] = None,
              noise_fn: Optional[NoiseFn] = None, reverse: bool = False) -> Dict[str, torch.Tensor]:
    """One DDIM step from level ``index`` towards index - 1 (or index + 1 when ``reverse``: ADM's
    ``ddim_reverse_sample``, with the model evaluated at the current level).

    ``guide`` shifts eps by -sigma * guide(x, level) after x0 is clipped (ADM's DDIM guidance). The reverse
    step is deterministic (eta must be 0). Noise is drawn at every forward step, as ADM does.
    ``clip_denoised`` None: the denoiser's own choice.
    """
    if reverse and eta != 0:
        raise ValueError("DDIM inversion is deterministic: eta must be 0")
    model_kwargs = model_kwargs or {}
    level = trajectory.level(index)
    pred = predict(denoiser, x, level, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                   model_kwargs=model_kwargs)
    if guide is not None:
        pred = shift_score(pred, x, level, guide(x, level, **model_kwargs))
    t = trajectory
    if reverse:
        if t.beyond is None and bool((index == len(t) - 1).any()):
            raise ValueError("this trajectory has no level beyond its noisiest one (it is not "
                             "variance-preserving): invert up to level K-1 with ddim_invert")
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
    """DDIM from ``x`` at the noisiest level down to the final level; yields every step's output dict."""
    return run_chain(lambda xt, i: ddim_step(denoiser, trajectory, xt, i, **step_kwargs),
                     trajectory, x, progress=progress)


def sample_ddim(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """DDIM sampling from ``x``; returns the final sample. Takes ``ddim_step``'s keywords."""
    return last(ddim_loop(denoiser, trajectory, x, **kwargs))


def ddim_invert_loop(denoiser: Denoiser, trajectory: Trajectory, x0: torch.Tensor, *, eps_at: str = "next",
                     refine: int = 0, model_kwargs: Optional[dict] = None, progress: bool = False
                     ) -> Iterator[Dict[str, torch.Tensor]]:
    """Deterministic DDIM run backwards: from ``x0`` at the trajectory's final level up to level K-1.

    Step i goes from level i-1 (the final level for i = 0) to level i with one eps, the rest of the DDIM
    update being exact: x_i = alpha_i (x - sigma_{i-1} eps) / alpha_{i-1} + sigma_i eps. Where that eps is
    evaluated is the one approximation, and both conventions in use are offered:

    - ``eps_at="next"`` (default): eps(x_{i-1}, level i), at the level being stepped to (diffusers'
      DDIMInverseScheduler, pnp-diffusers). It mirrors the sampling step i -> i-1, which uses eps at level
      i, so inversion then DDIM sampling on the same trajectory returns x0 up to O(step^2) per step.
    - ``eps_at="current"``: eps(x_{i-1}, level i-1) (ADM's ddim_reverse_sample, the original PnP code); the
      final level must then be noisy (e.g. Stable Diffusion's alpha_bar_0), the denoiser being undefined on
      clean data.

    Either way one inversion step is the exact inverse of a sampling step only up to O(step^2), so the round
    trip errs by O(step) in all. ``refine`` > 0 re-evaluates eps at the new point (x_i, level i) that many
    times (fixed-point iteration, one more denoiser call each): the step then inverts DDIM's own step to
    O(step^3) per refinement, and the round trip becomes nearly exact at a fraction of the steps.

    The raw eps is used (no clipping). Yields {"sample": x_i, "index": i, "eps": eps} for i = 0..K-1.
    """
    if eps_at not in EPS_AT:
        raise ValueError(f"eps_at must be one of {', '.join(EPS_AT)}, got {eps_at!r}")
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    if eps_at == "current" and trajectory.final[1] == 0:
        raise ValueError("eps_at='current' evaluates the denoiser at the final level, which is clean data here: "
                         "use eps_at='next', or a trajectory whose final level is noisy")
    model_kwargs = model_kwargs or {}
    t, x, n = trajectory, x0, x0.shape[0]
    for i in tqdm(range(len(t)), disable=not progress, leave=False):
        index = torch.full((n,), i, device=x.device, dtype=torch.long)
        here = t.level(index)
        if i == 0:
            before = t.final_level(n, device=here.alpha.device)
        else:
            before = t.level(index - 1)
        at = here if eps_at == "next" else before
        x_prev = x
        with torch.no_grad():
            eps = denoiser(x_prev, at, **model_kwargs).eps
            for k in range(refine + 1):
                if k:
                    eps = denoiser(x, here, **model_kwargs).eps
                x0_hat = (x_prev - before.coefficient(before.sigma, x) * eps) / before.coefficient(before.alpha, x)
                x = here.coefficient(here.alpha, x) * x0_hat + here.coefficient(here.sigma, x) * eps
        yield {"sample": x, "index": i, "eps": eps}


def ddim_invert(denoiser: Denoiser, trajectory: Trajectory, x0: torch.Tensor, **kwargs) -> torch.Tensor:
    """DDIM inversion of ``x0`` to the noisiest level of ``trajectory``; takes ``ddim_invert_loop``'s keywords."""
    return last(ddim_invert_loop(denoiser, trajectory, x0, **kwargs))
