"""Time with units: noise levels and timestep ranges that say which clock they read.

Every process here writes x_t = alpha_t * x0 + sigma_t * eps. Repositories in this field count time in
different units (ADM's original train index, a respaced or sampler step index, a fraction of the
trajectory, EDM's sigma, log-SNR) and mixing them fails silently. A :class:`NoiseLevel` carries one point
of a trajectory with everything needed to express it in any unit; a :class:`TimestepRange` carries its unit
and converts the level before testing membership.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import List, Optional, Sequence, Union

import torch


class TimeUnit(str, Enum):
    """The clocks of diffusion time.

    - TRAIN_INDEX: index into the T training steps (0 = least noise). ADM's ``t``; models and classifiers
      always receive it, never a respaced index.
    - TIME: continuous time in [0, 1], 0 = clean, 1 = pure noise. Train index i is t = (i + 1) / T, the point
      whose noise level it carries (alpha_bar_i = alpha_bar((i + 1) / T) for the cosine schedule).
    - SAMPLING_STEP: position in a sampler's schedule, 0 = the first (noisiest) step.
    - SAMPLING_FRACTION: SAMPLING_STEP / number of steps, in [0, 1).
    - SIGMA: the EDM noise level sigma / alpha (x / alpha = x0 + sigma * eps).
    - LOGSNR: log(alpha^2 / sigma^2); decreases as noise grows.
    """

    TRAIN_INDEX = "train_index"
    TIME = "time"
    SAMPLING_STEP = "sampling_step"
    SAMPLING_FRACTION = "sampling_fraction"
    SIGMA = "sigma"
    LOGSNR = "logsnr"


@dataclass(frozen=True)
class NoiseLevel:
    """One point x_t = alpha * x0 + sigma * eps of a trajectory, for a batch.

    ``alpha``, ``sigma`` are float64 tensors of shape (N,). ``t`` is the process's own time in ``unit``
    (for discrete diffusion, the original train index). ``step`` (long tensor (N,)) and ``num_steps`` locate
    the level in a sampler's schedule when there is one (step 0 is the noisiest); ``num_train_steps`` is T
    for discrete processes. All tensors stay on the batch's device, so no conversion waits for the GPU.
    """

    alpha: torch.Tensor
    sigma: torch.Tensor
    t: torch.Tensor
    unit: TimeUnit = TimeUnit.TRAIN_INDEX
    step: Optional[torch.Tensor] = None
    num_steps: Optional[int] = None
    num_train_steps: Optional[int] = None

    @property
    def batch_size(self) -> int:
        return self.t.shape[0]

    @staticmethod
    def coefficient(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Cast a per-sample float64 coefficient to ``like``'s dtype and shape it to broadcast over it."""
        return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def time_in(self, unit: Union[TimeUnit, str]) -> torch.Tensor:
        """This level's time expressed in ``unit`` (shape (N,))."""
        unit = TimeUnit(unit)
        if unit == self.unit:
            return self.t
        if unit == TimeUnit.SIGMA:
            return self.sigma / self.alpha
        if unit == TimeUnit.LOGSNR:
            return 2 * (torch.log(self.alpha) - torch.log(self.sigma))
        if unit in (TimeUnit.SAMPLING_STEP, TimeUnit.SAMPLING_FRACTION):
            if self.step is None:
                raise ValueError(f"this level is not part of a sampling schedule: no {unit.value}")
            step = self.step.double()
            return step if unit == TimeUnit.SAMPLING_STEP else step / self.num_steps
        if self.num_train_steps is None:
            raise ValueError(f"cannot express a {self.unit.value} level in {unit.value}: no train steps")
        if self.unit == TimeUnit.TRAIN_INDEX and unit == TimeUnit.TIME:
            return (self.t.double() + 1) / self.num_train_steps
        if self.unit == TimeUnit.TIME and unit == TimeUnit.TRAIN_INDEX:
            return self.t.double() * self.num_train_steps - 1
        raise ValueError(f"no conversion from {self.unit.value} to {unit.value}")

    def repeat(self, n: int) -> "NoiseLevel":
        """The same levels for a batch repeated n times (e.g. conditional and unconditional halves)."""
        step = None if self.step is None else self.step.repeat(n)
        return replace(self, alpha=self.alpha.repeat(n), sigma=self.sigma.repeat(n), t=self.t.repeat(n),
                       step=step)


@dataclass(frozen=True)
class TimestepRange:
    """A half-open (by default) interval of diffusion time in an explicit unit.

    ``lo <= t < hi`` with ``closed="left"``; "right", "both" and "neither" are the other choices. Ranges in
    units that shrink with noise (log-SNR, sampling steps) are ordinary intervals of those numbers.
    """

    lo: float
    hi: float
    unit: TimeUnit = TimeUnit.TRAIN_INDEX
    closed: str = "left"

    def __post_init__(self):
        object.__setattr__(self, "unit", TimeUnit(self.unit))
        if self.closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"closed must be left, right, both or neither, got {self.closed!r}")
        if self.hi < self.lo:
            raise ValueError(f"empty range: hi ({self.hi}) < lo ({self.lo})")

    def contains(self, t: Union[NoiseLevel, torch.Tensor, float]) -> torch.Tensor:
        """Membership of a level (converted to this range's unit) or of raw values already in this unit."""
        value = t.time_in(self.unit) if isinstance(t, NoiseLevel) else torch.as_tensor(t)
        lo_ok = value >= self.lo if self.closed in ("left", "both") else value > self.lo
        hi_ok = value <= self.hi if self.closed in ("right", "both") else value < self.hi
        return lo_ok & hi_ok

    @staticmethod
    def split(n: int, total: int, unit: Union[TimeUnit, str] = TimeUnit.TRAIN_INDEX) -> List["TimestepRange"]:
        """n contiguous half-open ranges [int(i*total/n), int((i+1)*total/n)) covering [0, total)."""
        if n < 1 or n > total:
            raise ValueError(f"cannot split {total} steps into {n} ranges")
        edges = [int(i * total / n) for i in range(n + 1)]
        return [TimestepRange(edges[i], edges[i + 1], unit) for i in range(n)]

    def __str__(self) -> str:
        left = "[" if self.closed in ("left", "both") else "("
        right = "]" if self.closed in ("right", "both") else ")"
        return f"{left}{self.lo:g}, {self.hi:g}{right} {self.unit.value}"


def route(level: NoiseLevel, ranges: Sequence[TimestepRange]) -> int:
    """Index of the range that holds this level (every sample of the batch must fall in the same one)."""
    for i, r in enumerate(ranges):
        inside = r.contains(level)
        if bool(inside.all()):
            return i
        if bool(inside.any()):
            raise ValueError(f"the batch straddles the range {r}: route samples separately")
    unit = ranges[0].unit if ranges else TimeUnit.TRAIN_INDEX
    raise ValueError(f"no range holds t={level.time_in(unit).tolist()} ({unit.value})")
