"""Ancestral (DDPM) sampling over any denoiser: x_{s} ~ N(mean(x0, x_t), Sigma) step by step.

The variance of each step is fixed (the posterior variance "fixed_small", "fixed_large" = beta, or
"fixed_medium", the geometric interpolation small^(1-f) * large^f of VDPM) or learned: the prediction then
carries the model's variance channels and says how to read them.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from ..denoisers import Denoiser, Prediction
from ..trajectory import Trajectory
from .common import Guide, NoiseFn, last, predict, run_chain, shift_mean

VARIANCES = ("fixed_small", "fixed_large", "fixed_medium", "learned", "learned_range")


def ancestral_distribution(pred: Prediction, x: torch.Tensor, trajectory: Trajectory, index: torch.Tensor,
                           variance: str = "fixed_large", intp_frac: float = 0.0
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and log-variance of p(x_{index-1} | x_index) given a prediction.

    "fixed_medium" interpolates the log-variances: (1 - intp_frac) * log(fixed_small) + intp_frac * log(beta).

    A learned variance in the prediction overrides ``variance``:
    "learned" reads the channels as a log-variance; "learned_range" reads v in [-1, 1] and interpolates
    log-variances between the clipped posterior variance (v = -1) and beta (v = 1).
    """
    kind = pred.var_kind or variance
    if kind not in VARIANCES:
        raise ValueError(f"unknown variance {kind!r}; choose one of {', '.join(VARIANCES)}")
    if kind.startswith("learned") and pred.var_values is None:
        raise ValueError(f"variance {kind!r} needs a model that outputs variance channels (learn_sigma)")
    t = trajectory
    mean = (t.extract(t.posterior_mean_coef_x0, index, x) * pred.x0
            + t.extract(t.posterior_mean_coef_xt, index, x) * x)
    if kind == "learned":
        log_variance = pred.var_values
        var = torch.exp(log_variance)
    elif kind == "learned_range":
        min_log = t.extract(t.posterior_log_variance_clipped, index, x)
        max_log = t.extract(t.log_betas, index, x)
        frac = (pred.var_values + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        var = torch.exp(log_variance)
    elif kind == "fixed_medium":
        if not 0.0 <= intp_frac <= 1.0:
            raise ValueError(f"intp_frac must lie in [0, 1], got {intp_frac}")
        log_variance = ((1 - intp_frac) * t.extract(t.posterior_log_variance_clipped, index, x)
                        + intp_frac * t.extract(t.log_large_variance, index, x)).expand_as(x)
        var = torch.exp(log_variance)
    elif kind == "fixed_large":
        var = t.extract(t.large_variance, index, x).expand_as(x)
        log_variance = t.extract(t.log_large_variance, index, x).expand_as(x)
    else:
        var = t.extract(t.posterior_variance, index, x).expand_as(x)
        log_variance = t.extract(t.posterior_log_variance_clipped, index, x).expand_as(x)
    return mean, var, log_variance


def ancestral_step(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, index: torch.Tensor, *,
                   variance: str = "fixed_large", intp_frac: float = 0.0, clip_denoised: Optional[bool] = None,
                   denoised_fn: Optional[Callable] = None, guide: Optional[Guide] = None,
                   model_kwargs: Optional[dict] = None, noise_fn: Optional[NoiseFn] = None
                   ) -> Dict[str, torch.Tensor]:
    """One ancestral step from trajectory level ``index`` to ``index - 1`` (the final level after level 0).

    With ``guide`` the mean moves by variance * guide(x, level) (ADM's classifier guidance). Noise is drawn
    at every step, the last included (where it is multiplied by zero), so random streams match ADM's.
    ``clip_denoised`` None: the denoiser's own choice.
    """
    model_kwargs = model_kwargs or {}
    level = trajectory.level(index)
    pred = predict(denoiser, x, level, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                   model_kwargs=model_kwargs)
    mean, var, log_variance = ancestral_distribution(pred, x, trajectory, index, variance, intp_frac)
    noise = (noise_fn or torch.randn_like)(x)
    if guide is not None:
        mean = shift_mean(mean, var, guide(x, level, **model_kwargs))
    # The step to a clean final level draws no noise; a noisy final level (alpha_bar_0) keeps its variance.
    nonzero = ((index != 0) | bool(trajectory.posterior_variance[0] > 0)).to(x.dtype)
    sample = mean + nonzero.reshape(-1, *([1] * (x.ndim - 1))) * torch.exp(0.5 * log_variance) * noise
    return {"sample": sample, "pred_xstart": pred.x0, "mean": mean, "variance": var,
            "log_variance": log_variance}


def ancestral_loop(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, *, progress: bool = False,
                   **step_kwargs) -> Iterator[Dict[str, torch.Tensor]]:
    """Ancestral sampling from ``x`` at the noisiest level; yields every step's output dict."""
    return run_chain(lambda xt, i: ancestral_step(denoiser, trajectory, xt, i, **step_kwargs),
                     trajectory, x, progress=progress)


def sample_ancestral(denoiser: Denoiser, trajectory: Trajectory, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """Ancestral sampling from ``x``; returns the final sample. Takes ``ancestral_step``'s keywords."""
    return last(ancestral_loop(denoiser, trajectory, x, **kwargs))
