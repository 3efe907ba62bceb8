"""Samplers: plain functions over a denoiser and a trajectory; they never know the model family."""

from .ancestral import ancestral_distribution, ancestral_loop, ancestral_step, sample_ancestral
from .common import predict
from .ddim import ddim_loop, ddim_step, sample_ddim

__all__ = [
    "predict", "ancestral_distribution", "ancestral_step", "ancestral_loop", "sample_ancestral",
    "ddim_step", "ddim_loop", "sample_ddim",
]
