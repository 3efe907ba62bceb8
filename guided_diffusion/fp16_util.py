"""ADM import shim: ``from guided_diffusion.fp16_util import MixedPrecisionTrainer`` keeps working."""
from .train.mixed_precision import INITIAL_LOG_LOSS_SCALE, MixedPrecisionTrainer  # noqa: F401
