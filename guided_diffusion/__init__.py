"""guided-diffusion-zoo: train, sample, guide and evaluate diffusion models.

Layout: ``models`` (architectures), ``diffusion`` (processes), ``denoisers`` (the one interface samplers see),
``samplers`` (DDPM, DDIM), ``guidance`` (classifier guidance, CFG, composition), ``timesteps`` (time with
units), ``script_util`` (ADM-compatible flags and factories). ADM's module paths (``guided_diffusion.unet``,
``gaussian_diffusion``, ``respace``, ``losses``, ``nn``) keep working.
"""

__version__ = "0.1.0"
