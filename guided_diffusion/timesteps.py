"""Time with units: noise levels and timestep ranges that say which clock they read.

Every process here writes x_t = alpha_t * x0 + sigma_t * eps. Repositories in this field count time in
different units (ADM's original train index, a respaced or sampler step index, a fraction of the
trajectory, EDM's sigma, log-SNR) and mixing them fails silently. A :class:`NoiseLevel` carries one point
of a trajectory with everything needed to express it in any unit; a :class:`TimestepRange` carries its unit
and converts the level before testing membership; a :class:`DiscreteSchedule` maps any level to the
(fractional) train index of a discrete training schedule at the same noise level.

Two numbers are both called "sigma" in the field: the process' sigma_t (the noise coefficient of x_t) and
EDM's sigma = sigma_t / alpha_t (the noise level of x_t / alpha_t). Here the first is ``NoiseLevel.sigma``
and the second is ``NoiseLevel.edm_sigma`` / ``TimeUnit.EDM_SIGMA``; the bare word "sigma" is refused as a
unit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import List, Optional, Sequence, Union

import numpy as np
import torch


class TimeUnit(str, Enum):
    """The clocks of diffusion time.

    - TRAIN_INDEX: index into the T training steps (0 = least noise). ADM's ``t``; models and classifiers
      always receive it, never a respaced index.
    - TIME: continuous time in [0, 1], 0 = clean, 1 = pure noise. Train index i is t = (i + 1) / T, the point
      whose noise level it carries (alpha_bar_i = alpha_bar((i + 1) / T) for the cosine schedule).
    - SAMPLING_STEP: position in a sampler's schedule, 0 = the first (noisiest) step.
    - SAMPLING_FRACTION: SAMPLING_STEP / number of steps, in [0, 1).
    - EDM_SIGMA: EDM's noise level sigma_t / alpha_t (x / alpha = x0 + edm_sigma * eps); not the process'
      sigma_t, which is why the bare name "sigma" is not accepted.
    - LOGSNR: log(alpha^2 / sigma^2); decreases as noise grows.
    """

    TRAIN_INDEX = "train_index"
    TIME = "time"
    SAMPLING_STEP = "sampling_step"
    SAMPLING_FRACTION = "sampling_fraction"
    EDM_SIGMA = "edm_sigma"
    LOGSNR = "logsnr"

    @classmethod
    def _missing_(cls, value):
        if value == "sigma":
            raise ValueError("the time unit 'sigma' is ambiguous: use 'edm_sigma' for EDM's sigma_t / alpha_t "
                             "(the process' own sigma_t is not a clock)")
        return None


@dataclass(frozen=True)
class NoiseLevel:
    """One point x_t = alpha * x0 + sigma * eps of a trajectory, for a batch.

    ``alpha``, ``sigma`` are float64 tensors of shape (N,). ``t`` is the process's own time in ``unit``
    (for discrete diffusion, the original train index). ``step`` (long tensor (N,)) and ``num_steps`` locate
    the level in a sampler's schedule when there is one (step 0 is the noisiest); ``num_train_steps`` is T
    for discrete processes. All tensors stay on the batch's device, so no conversion waits for the GPU.

    Levels off any grid (a churned Heun level, a Karras grid, another family's sampler) are made with
    :meth:`at`; every denoiser maps them to its own network time.
    """

    alpha: torch.Tensor
    sigma: torch.Tensor
    t: torch.Tensor
    unit: TimeUnit = TimeUnit.TRAIN_INDEX
    step: Optional[torch.Tensor] = None
    num_steps: Optional[int] = None
    num_train_steps: Optional[int] = None

    @classmethod
    def at(cls, alpha, sigma, unit: Union[TimeUnit, str] = TimeUnit.EDM_SIGMA) -> "NoiseLevel":
        """The level x = alpha * x0 + sigma * eps for per-sample (or scalar, then shape (1,)) alpha, sigma.

        Its time is expressed in ``unit``, which must be one that (alpha, sigma) determine: EDM_SIGMA
        (default) or LOGSNR. The tensors keep the device of ``sigma`` (or of ``alpha``).
        """
        unit = TimeUnit(unit)
        if unit not in (TimeUnit.EDM_SIGMA, TimeUnit.LOGSNR):
            raise ValueError(f"a level made from (alpha, sigma) alone has no {unit.value}: use edm_sigma or "
                             "logsnr, or take the level from a trajectory")
        ref = sigma if isinstance(sigma, torch.Tensor) else alpha
        device = ref.device if isinstance(ref, torch.Tensor) else None
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=device).reshape(-1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=device).reshape(-1)
        alpha, sigma = torch.broadcast_tensors(alpha, sigma)
        if bool((alpha <= 0).any()) or bool((sigma < 0).any()):
            raise ValueError("a noise level needs alpha > 0 and sigma >= 0")
        level = cls(alpha=alpha, sigma=sigma, t=sigma / alpha, unit=TimeUnit.EDM_SIGMA)
        return level if unit == TimeUnit.EDM_SIGMA else replace(level, t=level.logsnr, unit=unit)

    @property
    def batch_size(self) -> int:
        return self.t.shape[0]

    @property
    def edm_sigma(self) -> torch.Tensor:
        """EDM's sigma = sigma / alpha (float64, shape (N,))."""
        return self.sigma / self.alpha

    @property
    def logsnr(self) -> torch.Tensor:
        """log(alpha^2 / sigma^2) (float64, shape (N,); +inf for clean data)."""
        return 2 * (torch.log(self.alpha) - torch.log(self.sigma))

    @staticmethod
    def coefficient(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Cast a per-sample float64 coefficient to ``like``'s dtype and shape it to broadcast over it."""
        return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def time_in(self, unit: Union[TimeUnit, str]) -> torch.Tensor:
        """This level's time expressed in ``unit`` (shape (N,)).

        EDM_SIGMA and LOGSNR always exist; sampling steps only for levels of a trajectory; a train index or
        continuous time only for levels of a process that has them (a guide trained on another schedule maps
        levels with :class:`DiscreteSchedule` instead).
        """
        unit = TimeUnit(unit)
        if unit == self.unit:
            return self.t
        if unit == TimeUnit.EDM_SIGMA:
            return self.edm_sigma
        if unit == TimeUnit.LOGSNR:
            return self.logsnr
        if unit in (TimeUnit.SAMPLING_STEP, TimeUnit.SAMPLING_FRACTION):
            if self.step is None:
                raise ValueError(f"this level is not part of a sampling schedule: no {unit.value}")
            step = self.step.double()
            return step if unit == TimeUnit.SAMPLING_STEP else step / self.num_steps
        if self.num_train_steps is None:
            raise ValueError(f"a {self.unit.value} level has no {unit.value}: its process has no train steps "
                             "(map it with the DiscreteSchedule of the model or guide that counts them)")
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


# Two levels closer than this in log(sigma / alpha) are the same level (float64 rounding is ~1e-15).
GRID_TOLERANCE = 1e-9


class DiscreteSchedule:
    """The T noise levels of a discrete training schedule, and the map from any level to its train index.

    A network or classifier trained on this schedule knows train indices 0..T-1 only. A level is mapped to
    the fractional index whose log(sigma / alpha) it has, interpolating linearly in log(sigma / alpha)
    between neighbouring indices (as k-diffusion's DiscreteSchedule does) and clamping to [0, T-1] outside
    the schedule's range. A level that lies exactly on the grid (a train-index level whose alpha and sigma
    are this schedule's at its index) keeps its integer index, so samplers on the model's own grid feed it
    exactly what ADM feeds.

    :param alphas, sigmas: float64 arrays of shape (T,), the noise increasing with the index.
    """

    def __init__(self, alphas: Sequence[float], sigmas: Sequence[float]):
        self.alphas = torch.as_tensor(np.asarray(alphas, dtype=np.float64))
        self.sigmas = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
        if self.alphas.ndim != 1 or self.alphas.shape != self.sigmas.shape or len(self.alphas) < 2:
            raise ValueError("a discrete schedule needs alphas and sigmas of one length T >= 2")
        self.log_ratio = torch.log(self.sigmas) - torch.log(self.alphas)
        if bool((torch.diff(self.log_ratio) <= 0).any()):
            raise ValueError("the schedule's noise (sigma / alpha) must increase with the train index")
        self._on_device: dict = {}

    def __len__(self) -> int:
        return len(self.alphas)

    def _tables(self, device):
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(t.to(device) for t in (self.alphas, self.sigmas, self.log_ratio))
        return self._on_device[key]

    def on_grid(self, level: NoiseLevel) -> bool:
        """Whether ``level`` is this schedule's own level at its (integer) train index.

        Respaced trajectories recompute alpha_bar from ratios, so the test allows 1e-9 in log(sigma / alpha)
        (rounding is ~1e-15; neighbouring train indices differ by more than 1e-4).
        """
        if level.unit != TimeUnit.TRAIN_INDEX or level.t.is_floating_point() or level.num_train_steps != len(self):
            return False
        index = level.t.long()
        if bool(((index < 0) | (index >= len(self))).any()):
            return False
        _, _, log_ratio = self._tables(level.alpha.device)
        return bool(((log_ratio[index] - self._log_ratio_of(level)).abs() <= GRID_TOLERANCE).all())

    @staticmethod
    def _log_ratio_of(level: NoiseLevel) -> torch.Tensor:
        return (torch.log(level.sigma) - torch.log(level.alpha)).to(torch.float64)

    def index_at(self, level: NoiseLevel) -> torch.Tensor:
        """The train index of each sample's noise level: ``level.t`` itself on the grid, else
        :meth:`interpolate`."""
        return level.t if self.on_grid(level) else self.interpolate(level)

    def interpolate(self, level: NoiseLevel) -> torch.Tensor:
        """The float64 fractional index at the level's log(sigma / alpha), clamped to [0, T - 1] and snapped
        to an integer within ``GRID_TOLERANCE`` of a grid level (so a boundary level is never 199.9999999)."""
        _, _, log_ratio = self._tables(level.alpha.device)
        query = self._log_ratio_of(level)
        upper = torch.searchsorted(log_ratio, query).clamp(1, len(self) - 1)
        lo, hi = log_ratio[upper - 1], log_ratio[upper]
        index = (upper - 1).double() + (query - lo) / (hi - lo)
        nearest = index.round().clamp(0, len(self) - 1)
        snapped = (log_ratio[nearest.long()] - query).abs() <= GRID_TOLERANCE
        return torch.where(snapped, nearest, index).clamp(0, len(self) - 1)

    def own_level(self, level: NoiseLevel) -> NoiseLevel:
        """This schedule's level at the same sigma / alpha as ``level``: ``level`` itself on the grid, else the
        interpolated train index with the variance-preserving alpha = 1 / sqrt(1 + (sigma / alpha)^2) that a
        network or classifier trained on the schedule expects its input scaled by (DDPM: alpha^2 + sigma^2 =
        1). A network fed ``x * own.alpha / level.alpha`` at time ``own.t`` sees what it was trained on."""
        if self.on_grid(level):
            return level
        alpha = torch.rsqrt(1 + level.edm_sigma ** 2)
        return NoiseLevel(alpha=alpha, sigma=level.edm_sigma * alpha, t=self.interpolate(level),
                          unit=TimeUnit.TRAIN_INDEX, num_train_steps=len(self))

    def level(self, index: torch.Tensor) -> NoiseLevel:
        """The schedule's levels at fractional indices (interpolated as in :meth:`index_at`, VP: alpha^2 +
        sigma^2 = 1) or, for integer indices, exactly its own levels."""
        index = torch.as_tensor(index)
        alphas, sigmas, log_ratio = self._tables(index.device)
        if not index.is_floating_point():
            i = index.long()
            return NoiseLevel(alpha=alphas[i], sigma=sigmas[i], t=index, num_train_steps=len(self))
        i = index.double().clamp(0, len(self) - 1)
        lo = i.floor().long().clamp(max=len(self) - 2)
        rho = torch.exp(log_ratio[lo] + (i - lo) * (log_ratio[lo + 1] - log_ratio[lo]))
        alpha = torch.rsqrt(1 + rho ** 2)
        return NoiseLevel(alpha=alpha, sigma=rho * alpha, t=i, num_train_steps=len(self))


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
