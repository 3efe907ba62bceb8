"""ADM import path: ``from guided_diffusion.respace import SpacedDiffusion, space_timesteps``."""

from .diffusion.gaussian_diffusion import SpacedDiffusion  # noqa: F401
from .diffusion.schedules import space_timesteps  # noqa: F401
