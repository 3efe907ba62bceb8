"""ADM import shim: ``from guided_diffusion.train_util import TrainLoop`` keeps working."""
from .train.checkpointing import parse_resume_step_from_filename  # noqa: F401
from .train.diffusion import TrainLoop, log_loss_dict  # noqa: F401
