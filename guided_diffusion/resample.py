"""ADM import shim: ``from guided_diffusion.resample import create_named_schedule_sampler`` keeps working."""
from .train.resample import (LossAwareSampler, LossSecondMomentResampler, ScheduleSampler,  # noqa: F401
                             UniformSampler, create_named_schedule_sampler)
