"""Training: the shared loop, its objectives, mixed precision, timestep samplers and atomic checkpoints."""

from .checkpointing import (atomic_save, companion_paths, latest_checkpoint, parse_resume_step_from_filename,
                            read_flags_beside, resolve_resume_checkpoint, write_json)
from .classifier import ClassifierTrainLoop
from .diffusion import TrainLoop, log_loss_dict
from .loop import (Trainer, linear_anneal_schedule, linear_warmup_schedule, param_digest, parse_ema_rates,
                   step_seed)
from .mixed_precision import MixedPrecisionTrainer
from .objective import ClassifierObjective, DiffusionObjective, Objective, StepRandom
from .resample import (LossAwareSampler, LossSecondMomentResampler, ScheduleSampler, UniformSampler,
                       create_named_schedule_sampler)

__all__ = ["Trainer", "TrainLoop", "ClassifierTrainLoop", "MixedPrecisionTrainer",
           "create_named_schedule_sampler", "ScheduleSampler", "UniformSampler", "LossAwareSampler",
           "LossSecondMomentResampler", "atomic_save", "write_json", "read_flags_beside", "companion_paths",
           "latest_checkpoint", "parse_resume_step_from_filename", "resolve_resume_checkpoint",
           "log_loss_dict", "parse_ema_rates", "step_seed", "param_digest", "Objective", "StepRandom",
           "DiffusionObjective", "ClassifierObjective", "linear_warmup_schedule", "linear_anneal_schedule"]
