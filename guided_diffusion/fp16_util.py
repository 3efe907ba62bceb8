"""ADM import path: ``from guided_diffusion.fp16_util import MixedPrecisionTrainer``."""
from .train.mixed_precision import INITIAL_LOG_LOSS_SCALE, MixedPrecisionTrainer  # noqa: F401
