"""ADM import shim: ``from guided_diffusion.gaussian_diffusion import GaussianDiffusion`` keeps working."""

from .adm.diffusion import (  # noqa: F401
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
)
from .diffusion.schedules import betas_for_alpha_bar, get_named_beta_schedule  # noqa: F401
