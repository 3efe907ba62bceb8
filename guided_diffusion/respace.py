"""ADM import shim: ``from guided_diffusion.respace import SpacedDiffusion, space_timesteps`` keeps working."""

from .adm.diffusion import SpacedDiffusion  # noqa: F401
from .diffusion.schedules import space_timesteps  # noqa: F401
