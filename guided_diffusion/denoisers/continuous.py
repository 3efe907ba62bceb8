"""Denoiser for networks trained in continuous time on a log-SNR process (VDPM, the v-objective).

The network is called as ``model(x_t, t, **model_kwargs)`` with t in [0, 1] the continuous time (0 clean,
1 noise), not the log-SNR: that is what VDPM's UNet embeds (as 1000 * t). Its output is read according to
``out_type`` (x0, eps, both or v: see :mod:`guided_diffusion.denoisers.outputs`).

Any level reaches the network: its log-SNR is mapped back to the time of the model's schedule (the
schedule's inverse) and x is rescaled to that variance-preserving level; levels of the model's own process
pass through untouched.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..timesteps import NoiseLevel, TimeUnit
from . import Denoiser, Prediction, match_level
from .outputs import ModelOutput, model_output
from .outputs import prediction_from_output as _read_output

# The output types of the v-objective model (--model-out-type), and the original's spellings of them.
OUT_TYPES = ("x0", "eps", "both", "v")
OUT_TYPE_ALIASES = {"x_0": "x0", "epsilon": "eps"}
# Levels whose log-SNR agrees with the schedule at their time to this much are the schedule's own.
LOGSNR_TOLERANCE = 1e-9


def canonical_out_type(name: str) -> str:
    """The out type's canonical name; ``x_0`` (VDPM's CLI spelling, which its code rejected) means ``x0``."""
    name = OUT_TYPE_ALIASES.get(name, name)
    if name not in OUT_TYPES:
        raise ValueError(f"unknown model output type {name!r}; choose one of {', '.join(OUT_TYPES)} (or x_0)")
    return name


def out_channels(in_channels: int, out_type: str) -> int:
    """How many channels a network must output for this type (``both`` needs x0 and eps heads)."""
    return model_output(canonical_out_type(out_type)).channels(in_channels)


def prediction_from_output(out: torch.Tensor, x: torch.Tensor, level: NoiseLevel, out_type: str) -> Prediction:
    """Read a network output of ``out_type`` at ``level`` as consistent x0 and eps predictions."""
    return _read_output(out, x, level, canonical_out_type(out_type))


class ContinuousDenoiser(Denoiser):
    """Wraps ``model(x, t, **kwargs)`` whose ``t`` is continuous time in [0, 1] (TimeUnit.TIME).

    :param schedule: the model's log-SNR schedule (a callable t -> lambda with an ``inverse``, such as
        :class:`~guided_diffusion.diffusion.continuous.LogSNRSchedule`); with it any level is accepted,
        without it only continuous-time levels of the model's own process.
    :param clip_denoised: whether samplers clip x0 to [-1, 1] by default (pixel models).

    The network receives t in float64 (as the original feeds it; a network that embeds in float32 casts it).
    """

    time_unit = TimeUnit.TIME

    def __init__(self, model, out_type: str = "v", schedule=None, *, clip_denoised: bool = False):
        self.model = model
        self.out_type = canonical_out_type(out_type)
        self.output = ModelOutput(self.out_type)
        self.schedule = schedule
        self.clip_denoised = clip_denoised

    @property
    def network(self) -> Optional[nn.Module]:
        return self.model if isinstance(self.model, nn.Module) else None

    def own_level(self, level: NoiseLevel) -> NoiseLevel:
        """The model's own level at the same log-SNR (the level itself when it is one)."""
        if self.schedule is None:
            if level.unit != TimeUnit.TIME:
                raise ValueError(f"a continuous-time model without its schedule needs levels in continuous "
                                 f"time, got {level.unit.value}; build it with schedule= to accept any level")
            return level
        logsnr = level.logsnr
        if level.unit == TimeUnit.TIME:
            gap = (self.schedule(level.t).to(logsnr.device) - logsnr).abs()
            if bool((gap <= LOGSNR_TOLERANCE * logsnr.abs().clamp(min=1)).all()):
                return level
        t = self.schedule.inverse(logsnr).to(logsnr.device)
        alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
        return NoiseLevel(alpha=alpha, sigma=sigma, t=t, unit=TimeUnit.TIME)

    def model_time(self, level: NoiseLevel) -> torch.Tensor:
        return self.own_level(level).t

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        own = self.own_level(level)
        x_in = x if own is level else match_level(x, level, own.alpha)
        out = self.model(x_in, own.t, **model_kwargs)
        return _read_output(out, x_in, own, self.output)
