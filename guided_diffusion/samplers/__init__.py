"""Samplers: plain functions over a denoiser and a trajectory; they never know the model family.

Each takes ``(denoiser, trajectory, x, **knobs)`` with x at the noisiest level (start noise scaled by
``trajectory.prior_std``) and returns the sample at the trajectory's final level.
"""

from .ancestral import ancestral_distribution, ancestral_loop, ancestral_step, sample_ancestral
from .common import predict, shift_mean
from .ddim import ddim_invert, ddim_invert_loop, ddim_loop, ddim_step, sample_ddim
from .heun import heun_loop, heun_step, sample_euler, sample_heun

__all__ = [
    "predict", "shift_mean", "ancestral_distribution", "ancestral_step", "ancestral_loop", "sample_ancestral",
    "ddim_step", "ddim_loop", "sample_ddim", "ddim_invert", "ddim_invert_loop", "heun_step", "heun_loop",
    "sample_heun", "sample_euler",
]
