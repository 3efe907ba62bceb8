"""What a network outputs, named once, and the one function that reads any output as x0 and eps.

Every family's network predicts one of these at a level x = alpha * x0 + sigma * eps:

- ``eps``: the noise; ``x0``: the clean data; ``v``: the velocity alpha * eps - sigma * x0 (alpha^2 + sigma^2 =
  1; x0 = alpha x - sigma v, eps = sigma x + alpha v);
- ``both``: 2C channels (x0_raw, eps_raw) mixed as x0 = sigma^2 x0_raw + alpha^2 x0(eps_raw), trusting the
  x0 head at high noise and the eps route at low noise (the v-objective code since 2024);
- ``prev_x``: the posterior mean of the previous training step (ADM's PREVIOUS_X), inverted for x0 with
  that step's posterior coefficients;
- ``edm``: EDM's raw network F of D(x; s) = c_skip(s) u + c_out(s) F, with u = x / alpha, s = sigma / alpha
  (EDM's sigma), c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2) and sd = sigma_data.

ADM's names (``EPSILON``, ``START_X``, ``PREVIOUS_X``) are aliases of the same members, so
``ModelMeanType.EPSILON`` keeps working where ADM's enum is imported.
"""

from __future__ import annotations

import enum
from typing import Optional, Tuple

import torch

from ..timesteps import NoiseLevel
from . import Prediction


class ModelOutput(str, enum.Enum):
    """What a network's (mean) channels predict."""

    EPS = "eps"
    X0 = "x0"
    V = "v"
    BOTH = "both"
    PREV_X = "prev_x"
    EDM = "edm"
    # ADM's names for the same outputs.
    EPSILON = "eps"
    START_X = "x0"
    PREVIOUS_X = "prev_x"

    @classmethod
    def _missing_(cls, value):
        # The spellings of ADM's enum values and of the v-objective CLI.
        return {"epsilon": cls.EPS, "start_x": cls.X0, "x_0": cls.X0, "previous_x": cls.PREV_X,
                "v_prediction": cls.V}.get(value)

    def channels(self, data_channels: int) -> int:
        """Output channels the network must produce for this type (``both`` has two heads)."""
        return 2 * data_channels if self is ModelOutput.BOTH else data_channels


def model_output(name) -> ModelOutput:
    """``name`` (a member, a value or a known alias) as a :class:`ModelOutput`, or a ValueError listing them."""
    try:
        return ModelOutput(name)
    except ValueError:
        names = ", ".join(m.value for m in ModelOutput)  # iteration skips the ADM aliases
        raise ValueError(f"unknown model output type {name!r}; choose one of {names}") from None


def prediction_from_output(out: torch.Tensor, x: torch.Tensor, level: NoiseLevel, kind, *,
                           prev_x_coefficients: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                           sigma_data: Optional[float] = None, **extra) -> Prediction:
    """Read a network output of type ``kind`` at ``level`` as consistent x0 and eps predictions.

    ``prev_x_coefficients`` = (coef_x0, coef_xt) of the training posterior at this level (``prev_x`` only);
    ``sigma_data`` is EDM's (``edm`` only). ``extra`` goes to the Prediction (learned-variance channels).
    """
    kind = model_output(kind)
    expected = kind.channels(x.shape[1])
    if out.shape[1] != expected:
        raise ValueError(f"model output type {kind.value!r} needs {expected} channels for {x.shape[1]}-channel "
                         f"data, the model gave {out.shape[1]}: check the model's output type flag")
    if kind is ModelOutput.EPS:
        return Prediction.from_eps(x, level, out, **extra)
    if kind is ModelOutput.X0:
        return Prediction.from_x0(x, level, out, **extra)
    if kind is ModelOutput.V:
        return Prediction.from_v(x, level, out, **extra)
    if kind is ModelOutput.BOTH:
        x0_raw, eps_raw = out.chunk(2, dim=1)
        x0_from_eps = Prediction.from_eps(x, level, eps_raw).x0
        alpha2 = level.coefficient(level.alpha ** 2, x)
        sigma2 = level.coefficient(level.sigma ** 2, x)
        return Prediction.from_x0(x, level, sigma2 * x0_raw + alpha2 * x0_from_eps, **extra)
    if kind is ModelOutput.PREV_X:
        if prev_x_coefficients is None:
            raise ValueError("a previous-x output needs the training posterior's coefficients at the level")
        coef_x0, coef_xt = prev_x_coefficients
        return Prediction.from_x0(x, level, (out - coef_xt * x) / coef_x0, **extra)
    if sigma_data is None:
        raise ValueError("an EDM output needs sigma_data")
    s = level.edm_sigma
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s * sigma_data / torch.sqrt(s ** 2 + sigma_data ** 2)
    u = x * level.coefficient(1.0 / level.alpha, x)
    return Prediction.from_x0(x, level, level.coefficient(c_skip, x) * u + level.coefficient(c_out, x) * out,
                              **extra)


__all__ = ["ModelOutput", "model_output", "prediction_from_output"]
