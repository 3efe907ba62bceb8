"""Diffusion processes: discrete noise schedules and respacing, the continuous log-SNR process (VDPM), their
losses. (ADM's ``GaussianDiffusion`` facade, which also samples, is :mod:`guided_diffusion.adm.diffusion`.)"""

from ..denoisers.continuous import OUT_TYPES, ContinuousDenoiser, canonical_out_type
from ..trajectory import Trajectory, posterior_coefficients
from .continuous import (
    SCHEDULES,
    VAR_TYPES,
    ContinuousDiffusion,
    LogSNRSchedule,
    alpha_sigma,
    ddim_from_logsnr,
    log1mexp,
    posterior_from_logsnr,
    v_from,
)
from .continuous_losses import REWEIGHT_TYPES, canonical_reweight_type, loss_weight
from .schedules import betas_for_alpha_bar, get_named_beta_schedule, space_timesteps

__all__ = [
    "get_named_beta_schedule", "betas_for_alpha_bar", "space_timesteps", "Trajectory", "posterior_coefficients",
    "ContinuousDiffusion", "LogSNRSchedule", "ContinuousDenoiser", "SCHEDULES", "VAR_TYPES", "OUT_TYPES",
    "REWEIGHT_TYPES", "alpha_sigma", "posterior_from_logsnr", "ddim_from_logsnr", "log1mexp", "v_from",
    "canonical_out_type", "canonical_reweight_type", "loss_weight",
]
