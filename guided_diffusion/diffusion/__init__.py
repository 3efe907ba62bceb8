"""Diffusion processes: discrete Gaussian diffusion (betas, respacing) and the trajectories samplers walk."""

from .gaussian_diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion
from .schedules import betas_for_alpha_bar, get_named_beta_schedule, space_timesteps
from ..trajectory import Trajectory, posterior_coefficients

__all__ = [
    "GaussianDiffusion", "SpacedDiffusion", "LossType", "ModelMeanType", "ModelVarType",
    "get_named_beta_schedule", "betas_for_alpha_bar", "space_timesteps", "Trajectory", "posterior_coefficients",
]
