"""Denoiser for networks trained on a discrete Gaussian process (ADM, improved DDPM, DiT, SD-style UNets).

The network takes the original train index t of its T-step training schedule. Any level is mapped onto
that schedule by :class:`~guided_diffusion.timesteps.DiscreteSchedule` (the fractional index at the same
log(sigma / alpha), the input rescaled to the schedule's own alpha there), so DDIM on a respaced grid, Heun
on a Karras sigma grid or a churned level all reach the network correctly; on the model's own grid nothing
is interpolated or rescaled and the network receives exactly ADM's integer t.
"""

from __future__ import annotations

import enum
from typing import Optional

import torch
import torch.nn as nn

from ..timesteps import NoiseLevel, TimeUnit
from ..trajectory import Trajectory
from . import Denoiser, Prediction, match_level
from .outputs import ModelOutput, model_output, prediction_from_output

# ADM's name for what the network's mean channels predict.
ModelMeanType = ModelOutput


class ModelVarType(enum.Enum):
    """How the step variance is chosen; the learned kinds read extra output channels."""

    LEARNED = "learned"  # channels are the log-variance
    FIXED_SMALL = "fixed_small"  # the posterior variance
    FIXED_LARGE = "fixed_large"  # beta_t
    LEARNED_RANGE = "learned_range"  # channels v in [-1, 1] interpolate the two log-variances above


LEARNED_VARIANCES = (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)


class DiscreteDenoiser(Denoiser):
    """Wraps ``model(x, t, **kwargs)`` whose ``t`` is the original train index (0..T-1).

    :param output: what the network predicts (eps, x0, v or prev_x; ADM's ModelMeanType members work too).
    :param var_type: fixed variances, or learned ones read from C extra output channels.
    :param train_trajectory: the model's training process (index = train index): its levels define the train
        index of any noise level, and previous-x outputs are inverted with its posterior coefficients.
    :param rescale_timesteps: feed t * 1000 / T instead of t (DeepFloyd IF and some improved-DDPM models).
    :param clip_denoised: whether samplers clip x0 to [-1, 1] by default (pixel models; not latents).
    """

    time_unit = TimeUnit.TRAIN_INDEX

    def __init__(self, model, output=ModelOutput.EPS, var_type: ModelVarType = ModelVarType.FIXED_LARGE, *,
                 train_trajectory: Trajectory, rescale_timesteps: bool = False, clip_denoised: bool = False):
        self.model = model
        self.output = model_output(output)
        if self.output in (ModelOutput.BOTH, ModelOutput.EDM):
            raise ValueError(f"a discrete-time model does not output {self.output.value!r}")
        self.var_type = ModelVarType(var_type)
        self.train_trajectory = train_trajectory
        self.schedule = train_trajectory.schedule
        self.rescale_timesteps = rescale_timesteps
        self.clip_denoised = clip_denoised

    @property
    def mean_type(self) -> ModelOutput:
        """ADM's name for ``output``."""
        return self.output

    @property
    def network(self) -> Optional[nn.Module]:
        return self.model if isinstance(self.model, nn.Module) else None

    def _network_time(self, index: torch.Tensor) -> torch.Tensor:
        if self.rescale_timesteps:
            return index.float() * (1000.0 / len(self.schedule))
        return index

    def model_time(self, level: NoiseLevel) -> torch.Tensor:
        """The train index of the level (fractional off the grid), rescaled when ``rescale_timesteps``."""
        return self._network_time(self.schedule.index_at(level))

    def own_level(self, level: NoiseLevel) -> NoiseLevel:
        """The training process' level at the same sigma / alpha (the level itself when on the grid)."""
        return self.schedule.own_level(level)

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        own = self.own_level(level)
        x_in = x if own is level else match_level(x, level, own.alpha)
        out = self.model(x_in, self._network_time(own.t), **model_kwargs)
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
        coefficients = None
        if self.output is ModelOutput.PREV_X:
            if own is not level:
                raise ValueError("a previous-x model predicts its own training chain's posterior mean: it only "
                                 "runs on levels of its training grid (a respacing of it), not on other levels")
            chain, index = self.train_trajectory, level.t.long()
            coefficients = (chain.extract(chain.posterior_mean_coef_x0, index, x),
                            chain.extract(chain.posterior_mean_coef_xt, index, x))
        # x0 and eps do not depend on the scale of x: read off the network's level, they hold for the caller's.
        return prediction_from_output(out, x_in, own, self.output, prev_x_coefficients=coefficients, **extra)
