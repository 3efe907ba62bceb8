"""Denoiser for networks trained on a discrete Gaussian process (ADM, improved DDPM, DiT, SD-style UNets)."""

from __future__ import annotations

import enum

import torch

from ..trajectory import Trajectory
from ..timesteps import NoiseLevel, TimeUnit
from . import Denoiser, Prediction


class ModelMeanType(enum.Enum):
    """What the network's mean channels predict."""

    PREVIOUS_X = "previous_x"  # the posterior mean of x_{t-1}
    START_X = "start_x"  # x0
    EPSILON = "epsilon"  # the noise


class ModelVarType(enum.Enum):
    """How the step variance is chosen; the learned kinds read extra output channels."""

    LEARNED = "learned"  # channels are the log-variance
    FIXED_SMALL = "fixed_small"  # the posterior variance
    FIXED_LARGE = "fixed_large"  # beta_t
    LEARNED_RANGE = "learned_range"  # channels v in [-1, 1] interpolate the two log-variances above


LEARNED_VARIANCES = (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)


class DiscreteDenoiser(Denoiser):
    """Wraps ``model(x, t, **kwargs)`` whose ``t`` is the original train index (0..T-1).

    :param train_trajectory: the model's training process (index = train index); previous-x predictions
        are inverted with its posterior coefficients.
    :param rescale_timesteps: feed t * 1000 / T instead of t (DeepFloyd IF and some improved-DDPM models).
    """

    time_unit = TimeUnit.TRAIN_INDEX

    def __init__(self, model, mean_type: ModelMeanType = ModelMeanType.EPSILON,
                 var_type: ModelVarType = ModelVarType.FIXED_LARGE, *, train_trajectory: Trajectory,
                 rescale_timesteps: bool = False):
        self.model = model
        self.mean_type = ModelMeanType(mean_type)
        self.var_type = ModelVarType(var_type)
        self.train_trajectory = train_trajectory
        self.rescale_timesteps = rescale_timesteps
        self.prediction_type = {ModelMeanType.EPSILON: "eps", ModelMeanType.START_X: "x0",
                                ModelMeanType.PREVIOUS_X: "prev_x"}[self.mean_type]

    def model_time(self, level: NoiseLevel) -> torch.Tensor:
        if level.unit != TimeUnit.TRAIN_INDEX:
            raise ValueError(f"a discrete-time model needs train-index levels, got {level.unit.value}")
        if self.rescale_timesteps:
            return level.t.float() * (1000.0 / len(self.train_trajectory))
        return level.t

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        out = self.model(x, self.model_time(level), **model_kwargs)
        channels = x.shape[1]
        extra = {}
        if self.var_type in LEARNED_VARIANCES:
            if out.shape[1] != 2 * channels:
                raise ValueError(
                    f"a learned variance needs {2 * channels} output channels, the model gave {out.shape[1]}: "
                    "build it with learn_sigma=True, or sample with learn_sigma=False"
                )
            out, var_values = torch.split(out, channels, dim=1)
            extra = {"var_values": var_values, "var_kind": self.var_type.value}
        elif out.shape[1] != channels:
            raise ValueError(
                f"the model gave {out.shape[1]} channels for {channels}-channel data: "
                "if it was trained with a learned variance, pass learn_sigma=True"
            )
        if self.mean_type == ModelMeanType.EPSILON:
            return Prediction.from_eps(x, level, out, **extra)
        if self.mean_type == ModelMeanType.START_X:
            return Prediction.from_x0(x, level, out, **extra)
        # previous-x: out = coef_x0 * x0 + coef_xt * x_t on the training chain, so invert for x0.
        index = level.t.long()
        chain = self.train_trajectory
        x0 = (out - chain.extract(chain.posterior_mean_coef_xt, index, x) * x) / chain.extract(
            chain.posterior_mean_coef_x0, index, x)
        return Prediction.from_x0(x, level, x0, **extra)
