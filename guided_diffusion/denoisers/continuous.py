"""Denoiser for networks trained in continuous time on a log-SNR process (VDPM, the v-objective).

The network is called as ``model(x_t, t, **model_kwargs)`` with t in [0, 1] the continuous time (0 clean,
1 noise), not the log-SNR: that is what VDPM's UNet embeds (as 1000 * t). Its output is read according to
``out_type``:

- ``x0``: the clean image; ``eps``: the noise; ``v``: the velocity alpha * eps - sigma * x0 (x0 = alpha x -
  sigma v, eps = sigma x + alpha v);
- ``both``: 2C channels (x0_raw, eps_raw), mixed as x0 = sigma^2 * x0_raw + alpha^2 * x0(eps_raw): the x0 head
  is trusted at high noise and the eps route at low noise (VDPM since 2024; eps is re-derived from that x0).
"""

from __future__ import annotations

import torch

from ..timesteps import NoiseLevel, TimeUnit
from . import Denoiser, Prediction

OUT_TYPES = ("x0", "eps", "both", "v")
OUT_TYPE_ALIASES = {"x_0": "x0", "epsilon": "eps"}


def canonical_out_type(name: str) -> str:
    """The out type's canonical name; ``x_0`` (VDPM's CLI spelling, which its code rejected) means ``x0``."""
    name = OUT_TYPE_ALIASES.get(name, name)
    if name not in OUT_TYPES:
        raise ValueError(f"unknown model output type {name!r}; choose one of {', '.join(OUT_TYPES)} (or x_0)")
    return name


def out_channels(in_channels: int, out_type: str) -> int:
    """How many channels a network must output for this type (``both`` needs x0 and eps heads)."""
    return 2 * in_channels if canonical_out_type(out_type) == "both" else in_channels


def prediction_from_output(out: torch.Tensor, x: torch.Tensor, level: NoiseLevel, out_type: str) -> Prediction:
    """Read a network output of ``out_type`` at ``level`` as consistent x0 and eps predictions."""
    out_type = canonical_out_type(out_type)
    expected = out_channels(x.shape[1], out_type)
    if out.shape[1] != expected:
        raise ValueError(f"model output type {out_type!r} needs {expected} channels for {x.shape[1]}-channel data, "
                         f"the model gave {out.shape[1]}: check --model-out-type")
    if out_type == "x0":
        return Prediction.from_x0(x, level, out)
    if out_type == "eps":
        return Prediction.from_eps(x, level, out)
    if out_type == "v":
        return Prediction.from_v(x, level, out)
    x0_raw, eps_raw = out.chunk(2, dim=1)
    x0_from_eps = Prediction.from_eps(x, level, eps_raw).x0
    alpha2 = level.coefficient(level.alpha ** 2, x)
    sigma2 = level.coefficient(level.sigma ** 2, x)
    return Prediction.from_x0(x, level, sigma2 * x0_raw + alpha2 * x0_from_eps)


class ContinuousDenoiser(Denoiser):
    """Wraps ``model(x, t, **kwargs)`` whose ``t`` is continuous time in [0, 1] (TimeUnit.TIME).

    Levels must carry continuous time (those of :class:`~guided_diffusion.diffusion.continuous.ContinuousDiffusion`
    and its trajectories do). The network receives t as float32, enough for its 1000 * t embedding.
    """

    time_unit = TimeUnit.TIME

    def __init__(self, model, out_type: str = "v"):
        self.model = model
        self.out_type = canonical_out_type(out_type)
        self.prediction_type = self.out_type

    def model_time(self, level: NoiseLevel) -> torch.Tensor:
        if level.unit != TimeUnit.TIME:
            raise ValueError(f"a continuous-time model needs levels in continuous time, got {level.unit.value}")
        return level.t.to(torch.float32)

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        out = self.model(x, self.model_time(level), **model_kwargs)
        return prediction_from_output(out, x, level, self.out_type)
