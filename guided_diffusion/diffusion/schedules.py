"""Discrete noise schedules and timestep respacing (ADM's conventions, exactly)."""

from __future__ import annotations

import math
import re
from typing import Callable, Iterable, List, Optional, Set, Union

import numpy as np

BETA_SCHEDULES = ("linear", "cosine", "scaled_linear")
# Stable Diffusion's (LDM's "linear" with its config's linear_start / linear_end).
SCALED_LINEAR_RANGE = (0.00085, 0.012)


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int,
                            linear_start: Optional[float] = None, linear_end: Optional[float] = None) -> np.ndarray:
    """float64 betas of a named schedule.

    linear: linspace(1e-4, 0.02) scaled by 1000/T so any T spans the same noise range.
    cosine: improved DDPM's alpha_bar(t) = cos^2(((t + 0.008) / 1.008) * pi / 2), betas capped at 0.999.
    scaled_linear: linspace(sqrt(start), sqrt(end), T)^2, start and end 0.00085 and 0.012 unless given
    (Stable Diffusion v1/v2; LDM's configs call it "linear", diffusers "scaled_linear"); not rescaled with T.
    """
    if schedule_name == "scaled_linear":
        start, end = SCALED_LINEAR_RANGE
        start = start if linear_start is None else linear_start
        end = end if linear_end is None else linear_end
        return np.linspace(start ** 0.5, end ** 0.5, num_diffusion_timesteps, dtype=np.float64) ** 2
    if linear_start is not None or linear_end is not None:
        raise ValueError("linear_start / linear_end apply to the scaled_linear schedule only")
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise ValueError(
        f"unknown noise schedule {schedule_name!r}: --noise_schedule takes one of {', '.join(BETA_SCHEDULES)}"
    )


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float],
                        max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous alpha_bar(t), t in [0, 1]: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1, t2 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: Union[str, Iterable[int]]) -> Set[int]:
    """The original timesteps kept by a respacing.

    - "ddimN": the range(0, T, stride) with exactly N elements for the smallest such integer stride
      (ddim25 of 1000 keeps 0, 40, ..., 960).
    - "N" or "a,b,c" (or a list of ints): split T into equal contiguous sections (the remainder goes to the
      first ones) and take the given count from each at an evenly rounded fractional stride, both ends
      included ("25" of 1000 keeps 0, 42, ..., 999).
    - "leadingN" or "leadingN+k": arange(N) * (T // N) + k, exactly N steps offset by k (diffusers' "leading"
      spacing with steps_offset k; "leading50+1" is Stable Diffusion's 1, 21, ..., 981).
    - "trailingN": round(arange(T, 0, -T / N)) - 1, ending at T - 1 (diffusers' "trailing").
    """
    if isinstance(section_counts, str):
        text = section_counts.strip()
        spaced = re.fullmatch(r"(leading|trailing)(\d+)(?:\+(\d+))?", text)
        if spaced:
            return _diffusers_spacing(num_timesteps, spaced.group(1), int(spaced.group(2)),
                                      int(spaced.group(3) or 0), text)
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim"):])
            except ValueError:
                raise ValueError(
                    f"unknown timestep respacing {section_counts!r}: write ddimN, e.g. ddim25") from None
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot take exactly {desired} DDIM steps with an integer stride from {num_timesteps} steps; "
                f"choose a count whose stride divides evenly, or use plain {desired!r} respacing"
            )
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(
                f"unknown timestep respacing {section_counts!r}: use 'N' (e.g. '250'), 'ddimN' (e.g. 'ddim25') "
                "or comma-separated section counts (e.g. '10,15,20')"
            ) from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 0 for c in counts):
        raise ValueError(f"respacing counts must be non-negative integers, got {section_counts!r}")

    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: List[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"respacing {section_counts!r}: section {i} has {size} steps and cannot yield {count}"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated, not multiplied, so rounding matches the reference tables
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)


def _diffusers_spacing(num_timesteps: int, kind: str, count: int, offset: int, text: str) -> Set[int]:
    if count < 1 or count > num_timesteps:
        raise ValueError(f"respacing {text!r}: the step count must lie in 1..{num_timesteps}")
    if kind == "trailing":
        if offset:
            raise ValueError(f"respacing {text!r}: trailing spacing takes no offset")
        steps = np.round(np.arange(num_timesteps, 0, -num_timesteps / count)).astype(np.int64) - 1
    else:
        steps = np.arange(count, dtype=np.int64) * (num_timesteps // count) + offset
    if steps.max() >= num_timesteps or len(set(steps.tolist())) != count:
        raise ValueError(f"respacing {text!r} of {num_timesteps} steps leaves the range [0, {num_timesteps}) "
                         "or repeats a step: lower the offset or the count")
    return set(int(s) for s in steps)
