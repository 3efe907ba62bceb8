"""The ADM family (guided-diffusion, Dhariwal & Nichol 2021): its diffusion facade with ADM's method names and
the glue its scripts share. The networks are in :mod:`guided_diffusion.models.unet`, the flag dictionaries
and factories in :mod:`guided_diffusion.script_util` (ADM's module paths)."""

from .diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion

__all__ = ["GaussianDiffusion", "SpacedDiffusion", "LossType", "ModelMeanType", "ModelVarType"]
